"""Cluster and Serve YAML: it parses, runs real sub-commands, and pins the Ray we test against.

A launcher or KubeRay file that names a removed sub-command, or a Ray image one minor version
away from the range ``pyproject.toml`` allows, only fails on the cluster; these checks fail here.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from recsys_dist.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
YAML_DIRS = ("cluster", "serve")

# Ray version as a pip pin ("ray==X", "ray[serve]==X"), an image tag, or KubeRay's rayVersion.
RAY_PIN = re.compile(r"(?<![\w.-])ray(?:\[[^\]]*\])?==(\d[\w.]*)")
RAY_IMAGE = re.compile(r"rayproject/ray(?:-ml|-llm)?:(\d+\.\d+\.\d+)")
# This package pinned in a pip list, or as a wheel file name.
PACKAGE_PIN = re.compile(r"(?<![\w.-])recsys[-_]dist==([\w.]+)")
PACKAGE_WHEEL = re.compile(r"recsys_dist-([\w.]+?)-py3")
SECRET_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def yaml_files() -> list[Path]:
    return sorted(
        path
        for folder in YAML_DIRS
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".yaml", ".yml")
    )


def documents(path: Path, strict: bool = True) -> list[Any]:
    """The non-empty documents of ``path``; a YAML error fails (``strict``) or gives none."""
    try:
        return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    except yaml.YAMLError as error:
        if strict:
            pytest.fail(f"{path.relative_to(ROOT)}: {error}")
        return []  # at collection time: test_yaml_parses_to_mappings reports the file


def walk(node: Any) -> Iterator[Any]:
    """Every mapping, list and scalar inside a parsed document, depth first."""
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


def ray_versions(node: Any) -> set[str]:
    found = set()
    for item in walk(node):
        if isinstance(item, dict) and "rayVersion" in item:
            found.add(str(item["rayVersion"]))
        if isinstance(item, str):
            found |= set(RAY_PIN.findall(item)) | set(RAY_IMAGE.findall(item))
    return found


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def ray_requirement() -> Requirement:
    dependencies = map(Requirement, pyproject()["project"]["dependencies"])
    (ray,) = (r for r in dependencies if r.name == "ray")
    return ray


ALL = [pytest.param(path, id=str(path.relative_to(ROOT))) for path in yaml_files()]
DOCS = [(path, doc) for path in yaml_files() for doc in documents(path, strict=False)]
RAY_JOBS = [doc for _, doc in DOCS if isinstance(doc, dict) and doc.get("kind") == "RayJob"]
CRON_JOBS = [doc for _, doc in DOCS if isinstance(doc, dict) and doc.get("kind") == "CronJob"]


def test_cluster_folder_has_configs():
    names = {path.name for path in yaml_files()}
    assert {"ray-cluster.yaml", "kuberay-rayjob.yaml", "kuberay-raycluster.yaml"} <= names
    assert RAY_JOBS, "no RayJob under cluster/"
    assert CRON_JOBS, "no scheduled retraining under cluster/"


@pytest.mark.parametrize("path", ALL)
def test_yaml_parses_to_mappings(path: Path):
    docs = documents(path)
    assert docs, f"{path}: empty"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: a document is not a mapping"


@pytest.mark.parametrize("job", RAY_JOBS, ids=lambda job: job["metadata"]["name"])
def test_rayjob_entrypoint_is_a_real_command(job: dict):
    argv = shlex.split(job["spec"]["entrypoint"])
    parser = build_parser()
    if argv[0] == "recsys-dist":
        assert argv[1] in subcommands(parser), f"unknown sub-command {argv[1]!r}"
        args = parser.parse_args(argv[1:])  # exits (fails the test) on a bad flag
        assert args.command == argv[1]
    else:  # python SCRIPT ...: the script must exist in the repository
        assert argv[0].startswith("python"), argv
        assert (ROOT / argv[1]).is_file(), f"{argv[1]} not in the repository"


@pytest.mark.parametrize("job", CRON_JOBS, ids=lambda job: job["metadata"]["name"])
def test_a_scheduled_job_submits_a_real_command(job: dict):
    """A CronJob's container runs `ray job submit ... -- ENTRYPOINT`; the entrypoint parses."""
    (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    argv = shlex.split(" ".join(container["args"]))
    assert argv[:3] == ["ray", "job", "submit"], argv
    entrypoint = argv[argv.index("--") + 1 :]
    assert entrypoint[0] == "recsys-dist", entrypoint
    args = build_parser().parse_args(entrypoint[1:])  # exits (fails the test) on a bad flag
    assert args.command == "retrain" and job["spec"]["concurrencyPolicy"] == "Forbid"


@pytest.mark.parametrize("job", RAY_JOBS, ids=lambda job: job["metadata"]["name"])
def test_rayjob_cleans_up_and_parses_its_runtime_env(job: dict):
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int)
    assert isinstance(yaml.safe_load(spec.get("runtimeEnvYAML", "{}")), dict)


def test_ray_version_matches_pyproject():
    requirement = ray_requirement()
    pinned = {(path.name, v) for path, doc in DOCS for v in ray_versions(doc)}
    assert pinned, "no Ray version found in the cluster YAML"
    outside = {(name, v) for name, v in pinned if Version(v) not in requirement.specifier}
    assert not outside, f"Ray versions outside pyproject's {requirement.specifier}: {outside}"
    assert len({v for _, v in pinned}) == 1, f"more than one Ray version pinned: {pinned}"


def test_package_pins_match_pyproject():
    version = pyproject()["project"]["version"]
    texts = [path.read_text() for path in yaml_files()]
    pins = {v for text in texts for v in PACKAGE_PIN.findall(text) + PACKAGE_WHEEL.findall(text)}
    assert pins <= {version}, f"recsys-dist pinned at {pins}, pyproject says {version}"


def test_credentials_are_never_inline():
    for path, doc in DOCS:
        for item in walk(doc):
            if isinstance(item, dict) and item.get("name") in SECRET_ENV:
                assert "value" not in item, f"{path.name}: {item['name']} written inline"


def test_serve_config_is_a_valid_serve_deploy_config():
    """Ray Serve's own schema accepts it, the builder exists, and its settings are ServeConfig's."""
    import importlib

    from ray.serve.schema import ServeDeploySchema

    from recsys_dist.config import config_from_dict

    raw = yaml.safe_load((ROOT / "serve" / "recommender.yaml").read_text())
    deploy = ServeDeploySchema.model_validate(raw)
    (application,) = deploy.applications
    module, _, builder = application.import_path.partition(":")
    assert callable(getattr(importlib.import_module(module), builder))
    sections = {name: application.args[name] for name in ("serve", "interests")}
    config_from_dict(sections)  # unknown keys or bad types raise
    (deployment,) = application.deployments
    assert deployment.name == "recommender" and "model_dir" in deployment.user_config
    assert {"min_replicas", "max_replicas", "target_ongoing_requests"} <= set(
        deployment.autoscaling_config
    )
    assert deployment.max_queued_requests > 0


def test_the_rayservice_deploys_a_valid_serve_config_with_keys_and_events_on_a_volume():
    """Its serveConfigV2 is a Serve deploy config for our builder, authentication is on, and
    the WAL and the event log are on a ReadWriteMany claim mounted on every pod at one path:
    a lost pod takes no acknowledged event with it."""
    from ray.serve.schema import ServeDeploySchema

    from recsys_dist.config import config_from_dict

    service, _policy = documents(ROOT / "cluster" / "kuberay-rayservice.yaml")
    assert service["kind"] == "RayService"
    deploy = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    (application,) = deploy.applications
    assert application.import_path == "recsys_dist.serving.app:build_app"
    assert "insecure" not in application.args
    config = config_from_dict({"serve": application.args["serve"]})
    assert config.serve.api_keys_file and config.serve.store == "redis"
    for where, pod in ray_pod_specs(service):
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        (container,) = pod["containers"]
        mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        for path in (config.serve.wal_dir, config.serve.event_log_dir):
            mount = next((m for m in mounted if path.startswith(m + "/")), None)
            assert mount and mounted[mount] in claims, f"{where}: {path} is not on a claim"


def test_every_serving_node_starts_ray_with_the_haproxy_ingress():
    """Serve reads the ingress choice when Ray starts: each node's start must carry it."""
    from recsys_dist.serving.app import HAPROXY_INGRESS_ENV

    ((name, value),) = HAPROXY_INGRESS_ENV.items()
    vm = documents(ROOT / "cluster" / "ray-cluster.yaml")[0]
    starts = [
        c
        for key in ("head_start_ray_commands", "worker_start_ray_commands")
        for c in vm[key]
        if "ray start" in c
    ]
    assert len(starts) == 2 and all(f"{name}={value} ray start" in c for c in starts), starts
    (cluster,) = documents(ROOT / "cluster" / "kuberay-raycluster.yaml")
    spec = cluster["spec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {item["name"]: item.get("value") for item in container.get("env", [])}
            assert env.get(name) == value, f"{container['name']}: {name} not {value}"


TOKEN_SECRET = {"name": "recsys-dist-ray-token", "key": "auth_token"}
RAY_CLUSTER_NAME = "recsys-dist"
RAY_CONTROL_PORTS = {6379, 8265, 10001}  # GCS, dashboard/job API, Ray client


def ray_pod_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod spec) of every Ray pod a RayCluster, RayJob or RayService starts."""
    spec = doc["spec"]
    cluster = {"RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}
    cluster = cluster.get(doc["kind"]) or spec
    yield "head", cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"]


def env_of(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def assert_token_from_secret(env: dict[str, dict], where: str) -> None:
    token = env.get("RAY_AUTH_TOKEN")
    assert token is not None, f"{where}: no RAY_AUTH_TOKEN"
    assert "value" not in token, f"{where}: RAY_AUTH_TOKEN written inline"
    ref = token["valueFrom"]["secretKeyRef"]
    assert {k: ref[k] for k in TOKEN_SECRET} == TOKEN_SECRET and not ref.get("optional"), where


KUBERAY = [
    pytest.param(path, doc, id=path.name)
    for path, doc in DOCS
    if isinstance(doc, dict) and doc.get("kind") in ("RayCluster", "RayJob", "RayService")
]


@pytest.mark.parametrize("path, doc", KUBERAY)
def test_every_ray_container_on_kubernetes_uses_token_auth_from_the_secret(path: Path, doc: dict):
    """Head, every worker group, the autoscaler sidecar and a RayJob's submitter: a Ray process
    without the token cannot join or submit, so each one gets RAY_AUTH_MODE=token and the
    token from the Secret, never a literal."""
    containers = [
        (f"{where}/{c['name']}", c) for where, pod in ray_pod_specs(doc) for c in pod["containers"]
    ]
    spec = doc["spec"]
    if "autoscalerOptions" in spec:
        containers.append(("autoscaler", spec["autoscalerOptions"]))
    if "submitterPodTemplate" in spec:
        containers += [
            (f"submitter/{c['name']}", c)
            for c in spec["submitterPodTemplate"]["spec"]["containers"]
        ]
    assert len(containers) >= 2, containers
    for where, container in containers:
        env = env_of(container)
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{path.name} {where}"
        assert_token_from_secret(env, f"{path.name} {where}")


@pytest.mark.parametrize("job", CRON_JOBS, ids=lambda job: job["metadata"]["name"])
def test_a_scheduled_submitter_sends_the_token_from_the_secret(job: dict):
    """`ray job submit` sends RAY_AUTH_TOKEN only in token mode; the NetworkPolicy admits the
    submitter by its pod label."""
    pod = job["spec"]["jobTemplate"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = env_of(container)
    assert env.get("RAY_AUTH_MODE", {}).get("value") == "token"
    assert_token_from_secret(env, job["metadata"]["name"])
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "recsys-dist-retrain"


def test_every_vm_node_starts_ray_with_token_auth_and_a_private_dashboard():
    """On the launcher's machines the token is a file copied to every node (never a value in
    the YAML), each `ray start` runs in token mode, and the dashboard is not on 0.0.0.0."""
    vm = documents(ROOT / "cluster" / "ray-cluster.yaml")[0]
    starts = [
        c
        for key in ("head_start_ray_commands", "worker_start_ray_commands")
        for c in vm[key]
        if "ray start" in c
    ]
    assert len(starts) == 2, starts
    for command in starts:
        assert "RAY_AUTH_MODE=token" in command, command
        token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", command)
        assert token_path, command
        assert "RAY_AUTH_TOKEN=" not in command, f"token written inline: {command}"
        assert "0.0.0.0" not in command, f"dashboard on every interface: {command}"
    (head,) = (c for c in starts if "--head" in c)
    assert "--dashboard-host=" in head, "the dashboard host must be chosen, not defaulted"
    # The token file arrives by file_mounts at the path every node's start reads.
    remote = token_path.group(1).replace("$HOME", "~")
    assert remote in vm["file_mounts"], (remote, vm["file_mounts"])


def test_network_policy_admits_ray_ports_only_from_named_pods():
    """The policy selects the RayCluster's pods; every rule that opens GCS, the job API or the
    Ray client names the pods it admits (no empty `from`, no address block), so no other pod
    and nothing outside the namespace reaches them."""
    (policy,) = documents(ROOT / "cluster" / "kuberay-networkpolicy.yaml")
    own = {"ray.io/cluster": RAY_CLUSTER_NAME}
    labels = assert_ray_ports_only_from_named_pods(policy, own)
    (cluster,) = documents(ROOT / "cluster" / "kuberay-raycluster.yaml")
    assert cluster["metadata"]["name"] == RAY_CLUSTER_NAME, "the policy selects another cluster"
    assert {"app.kubernetes.io/name": "recsys-dist-retrain"} in labels


def test_the_rayservice_policy_selects_its_pods_and_admits_only_named_pods():
    """KubeRay names a RayService's clusters itself, so its pods carry our own label, which
    the policy selects and admits."""
    service, policy = documents(ROOT / "cluster" / "kuberay-rayservice.yaml")
    labels = [pod_labels for pod_labels in _template_labels(service)]
    assert labels and all(lab == labels[0] for lab in labels), labels
    assert_ray_ports_only_from_named_pods(policy, labels[0])


def _template_labels(doc: dict) -> Iterator[dict]:
    cluster = doc["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        yield group["template"]["metadata"]["labels"]


def assert_ray_ports_only_from_named_pods(policy: dict, own: dict) -> list[dict]:
    """The policy selects the pods labelled ``own``; every rule that opens Ray's control ports
    names the pods it admits by label (no empty `from`, no address block), and the cluster's
    own pods reach each other. Returns every admitted pod label set."""
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": own}
    assert "Ingress" in spec["policyTypes"]
    opened = set()
    for rule in spec["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        if ports and not ports & RAY_CONTROL_PORTS:
            continue  # e.g. Serve HTTP (8000) for labelled client pods
        sources = rule.get("from")
        assert sources, f"a rule opens {ports or 'every port'} to everyone: {rule}"
        for source in sources:
            assert set(source) == {"podSelector"}, f"not a pod selector: {source}"
            assert source["podSelector"].get("matchLabels"), f"selects every pod: {source}"
        opened |= ports or RAY_CONTROL_PORTS
    assert RAY_CONTROL_PORTS <= opened, "Ray's own pods must reach each other"
    labels = [
        s["podSelector"]["matchLabels"] for rule in spec["ingress"] for s in rule.get("from", [])
    ]
    assert own in labels
    return labels
