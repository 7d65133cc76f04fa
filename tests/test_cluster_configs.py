"""Cluster and Serve YAML: it parses, runs real sub-commands, pins the Ray we test against,
and follows the rules of cluster/README.md (token auth from one Secret,
hardened containers, no install at run time, no secret written down, one Serve config, one WAL
directory per RayCluster, every placeholder listed). Each rule is its own test, and each was
seen failing on a copy of the manifests that broke it.

A launcher or KubeRay file that names a removed sub-command, or a Ray image one minor version
away from the range ``pyproject.toml`` allows, only fails on the cluster; these checks fail here.
Schemas: tests/test_cluster_schemas.py; NetworkPolicies: tests/test_cluster_network_policy.py;
the image: tests/test_dockerfile.py.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.version import Version

from recsys_dist.cli import build_parser
from tests.cluster_manifests import (
    CLUSTER,
    DOCKERFILE,
    RAY_IMAGE,
    RAY_UID,
    ROOT,
    SERVE_CONFIG,
    containers,
    dockerfile_args,
    dockerfile_instructions,
    kuberay_resources,
    manifests,
    placeholder_table,
    placeholders_in,
    pod_templates,
    pyproject,
    ray_cluster_spec,
    ray_pod_templates,
    ray_requirement,
    ray_versions,
    rayservice_serve_config,
    substitute,
    walk,
)

YAML_DIRS = ("cluster", "serve")
# This package pinned in a pip list, or as a wheel file name.
PACKAGE_PIN = re.compile(r"(?<![\w.-])recsys[-_]dist==([\w.]+)")
PACKAGE_WHEEL = re.compile(r"recsys_dist-([\w.]+?)-py3")
# Environment variables that hold a secret: never a literal `value`.
SECRET_ENV = re.compile(r"^(AWS_\w*(KEY|TOKEN)\w*|REDIS_URL|RAY_AUTH_TOKEN|\w*PASSWORD\w*)$")
RAY_IMAGES = {"IMAGE", "GPU_IMAGE"}  # built from the Dockerfile (cluster/README.md)
AUTH = {"mode": "token", "secretName": "ray-auth"}
KUBERAY_MINIMUM = "v1.6.0"  # the first release with authOptions.secretName


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


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def by_where(items: list[tuple[str, dict]]) -> list:
    return [pytest.param(doc, id=where) for where, doc in items]


ALL = [pytest.param(path, id=str(path.relative_to(ROOT))) for path in yaml_files()]
DOCS = [(path, doc) for path in yaml_files() for doc in documents(path, strict=False)]
MANIFESTS = manifests()
KUBERAY = kuberay_resources()
RAY_JOBS = [(where, doc) for where, doc in KUBERAY if doc["kind"] == "RayJob"]
CRON_JOBS = [(where, doc) for where, doc in MANIFESTS if doc["kind"] == "CronJob"]
WITH_PODS = [(where, doc) for where, doc in MANIFESTS if any(pod_templates(doc))]
(RAYSERVICE,) = (doc for _, doc in KUBERAY if doc["kind"] == "RayService")
INSTRUCTIONS = dockerfile_instructions() if DOCKERFILE.is_file() else []


def test_cluster_folder_has_configs():
    names = {path.name for path in yaml_files()}
    assert {
        "ray-cluster.yaml",
        "kuberay-common.yaml",
        "kuberay-rayjob.yaml",
        "kuberay-raycluster.yaml",
        "kuberay-rayservice.yaml",
        "kuberay-retrain-cronjob.yaml",
    } <= names
    assert len(RAY_JOBS) >= 2, "no training and retraining RayJobs under cluster/"
    assert CRON_JOBS, "no scheduled retraining under cluster/"


@pytest.mark.parametrize("path", ALL)
def test_yaml_parses_to_mappings(path: Path):
    docs = documents(path)
    assert docs, f"{path}: empty"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: a document is not a mapping"


@pytest.mark.parametrize("job", by_where(RAY_JOBS))
def test_rayjob_entrypoint_is_a_real_command(job: dict):
    argv = shlex.split(job["spec"]["entrypoint"])
    parser = build_parser()
    assert argv[0] == "recsys-dist", argv  # the image's console script
    assert argv[1] in subcommands(parser), f"unknown sub-command {argv[1]!r}"
    args = parser.parse_args(argv[1:])  # exits (fails the test) on a bad flag
    assert args.command == argv[1]


@pytest.mark.parametrize("job", by_where(RAY_JOBS))
def test_rayjob_cleans_up_after_itself(job: dict):
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int)
    assert isinstance(spec["activeDeadlineSeconds"], int)


def _retraining() -> tuple[dict, dict, dict, str]:
    """The CronJob, the ConfigMap it mounts, the RayJob in it, and the RayJob's name the
    CronJob deletes first."""
    ((_, cron),) = CRON_JOBS
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (volume,) = (v for v in pod["volumes"] if "configMap" in v)
    (config_map,) = (
        doc
        for _, doc in MANIFESTS
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == volume["configMap"]["name"]
    )
    ((_, rayjob),) = ((w, d) for w, d in RAY_JOBS if "ConfigMap" in w)
    (delete,) = pod["initContainers"]
    return cron, config_map, rayjob, delete["args"][delete["args"].index("rayjob") + 1]


def test_the_scheduled_retraining_creates_a_rayjob_that_runs_the_loop():
    """Each night the CronJob deletes the previous turn's RayJob and creates the one its
    ConfigMap holds, which runs `recsys-dist retrain` on the service's registry and event log
    and cannot outlive the day (so two turns never overlap)."""
    cron, config_map, rayjob, deleted = _retraining()
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (create,) = pod["containers"]
    assert create["args"][0] == "create" and "--filename=" in " ".join(create["args"])
    mount = next(m for m in create["volumeMounts"] if m["name"] != "tmp")["mountPath"]
    (key,) = config_map["data"]
    assert f"--filename={mount}/{key}" in create["args"]
    assert pod["initContainers"][0]["args"][:2] == ["delete", "rayjob"]
    assert deleted == rayjob["metadata"]["name"]
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    args = build_parser().parse_args(argv[1:])
    assert args.command == "retrain"
    assert args.registry == "s3://BUCKET/registry" and args.events == ["s3://BUCKET/event_log"]
    assert args.output == "s3://BUCKET/retraining"
    minute, hour, *every = cron["spec"]["schedule"].split()
    assert every == ["*", "*", "*"], "a daily schedule"
    assert 0 < rayjob["spec"]["activeDeadlineSeconds"] < 24 * 3600
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_the_retraining_creator_may_only_create_and_replace_its_rayjob():
    cron, _, rayjob, _ = _retraining()
    account = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
    (binding,) = (
        doc
        for _, doc in MANIFESTS
        if doc["kind"] == "RoleBinding"
        and {"kind": "ServiceAccount", "name": account} in doc["subjects"]
    )
    assert binding["roleRef"]["kind"] == "Role", "a namespace Role, not a ClusterRole"
    (role,) = (
        doc
        for _, doc in MANIFESTS
        if doc["kind"] == "Role" and doc["metadata"]["name"] == binding["roleRef"]["name"]
    )
    name = rayjob["metadata"]["name"]
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"], rule
        assert "*" not in rule["verbs"], rule
        if rule["verbs"] != ["create"]:
            assert rule.get("resourceNames") == [name], f"{rule} is not limited to {name}"


def test_ray_version_matches_pyproject():
    requirement = ray_requirement()
    pinned = {(path.name, v) for path, doc in DOCS for v in ray_versions(doc)}
    base = substitute(dict(INSTRUCTIONS)["FROM"], dockerfile_args(INSTRUCTIONS))
    assert RAY_IMAGE.findall(base), f"the Dockerfile's base {base!r} names no Ray version"
    pinned |= {("Dockerfile", v) for v in RAY_IMAGE.findall(base)}
    outside = {(name, v) for name, v in pinned if Version(v) not in requirement.specifier}
    assert not outside, f"Ray versions outside pyproject's {requirement.specifier}: {outside}"
    assert len({v for _, v in pinned}) == 1, f"more than one Ray version pinned: {pinned}"


def test_package_pins_match_pyproject():
    version = pyproject()["project"]["version"]
    texts = [path.read_text() for path in yaml_files()]
    pins = {v for text in texts for v in PACKAGE_PIN.findall(text) + PACKAGE_WHEEL.findall(text)}
    assert pins <= {version}, f"recsys-dist pinned at {pins}, pyproject says {version}"


def _serve_configs() -> list[tuple[str, dict]]:
    return [
        ("serve/recommender.yaml", yaml.safe_load(SERVE_CONFIG.read_text())),
        ("serveConfigV2", rayservice_serve_config()),
    ]


def test_nothing_is_installed_at_run_time():
    """The image holds the project (Dockerfile): no RayJob runtimeEnvYAML, no Serve
    runtime_env, no --runtime-env-json / --working-dir in a command the cluster runs."""
    for where, doc in [*MANIFESTS, *_serve_configs()]:
        for path, node in walk(doc):
            if isinstance(node, dict):
                assert not {"runtimeEnvYAML", "runtime_env"} & set(node), f"{where}{path}"
            if isinstance(node, str):
                assert "--runtime-env" not in node and "--working-dir" not in node, where


def test_every_ray_pod_runs_the_image_built_from_the_dockerfile():
    """Ray containers (heads, workers, submitters) run IMAGE or GPU_IMAGE, the placeholders
    cluster/README.md builds with `docker build`; any other container names a pinned tag."""
    assert DOCKERFILE.is_file()
    table = placeholder_table()
    assert all("docker build" in table[name] for name in RAY_IMAGES), table
    for where, doc in WITH_PODS:
        for name, container in containers(doc):
            image = container["image"]
            if doc["kind"] in ("RayCluster", "RayJob", "RayService"):
                assert image in RAY_IMAGES, f"{where} {name}: {image}"
            else:
                assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{where} {name}: {image}"


@pytest.mark.parametrize("doc", by_where(WITH_PODS))
def test_every_container_is_hardened(doc: dict):
    """Non-root, no privilege escalation, every capability dropped, the runtime's default
    seccomp profile; Ray's containers as Ray's uid. The autoscaler sidecar too."""
    for where, template in pod_templates(doc):
        pod = template["spec"].get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot"
        assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, f"{where}: seccomp"
    hardened = list(containers(doc))
    ray = doc["kind"] in ("RayCluster", "RayJob", "RayService")
    if ray and ray_cluster_spec(doc).get("enableInTreeAutoscaling"):
        hardened.append(("autoscaler", ray_cluster_spec(doc)["autoscalerOptions"]))
    for where, container in hardened:
        context = container.get("securityContext", {})
        assert context.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
        assert context.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation"
        assert context.get("capabilities") == {"drop": ["ALL"]}, f"{where}: capabilities"
        assert not context.get("privileged"), f"{where}: privileged"
        assert isinstance(context.get("runAsUser"), int) and context["runAsUser"] > 0, where
        if ray:
            assert context["runAsUser"] == RAY_UID, f"{where}: not Ray's uid"


def test_secrets_are_never_inline():
    """AWS keys, the Redis URL, the Ray token: from Secrets or a workload identity only."""
    for where, doc in [*MANIFESTS, *_serve_configs()]:
        assert doc.get("kind") != "Secret", f"{where}: a Secret's values belong in kubectl"
        for path, node in walk(doc):
            if isinstance(node, dict) and SECRET_ENV.match(str(node.get("name", ""))):
                assert "value" not in node, f"{where}{path}: {node['name']} written inline"
            if isinstance(node, dict):
                assert "auth_token" not in node, f"{where}{path}: a token written inline"
                url = node.get("redis_url")
                assert url is None or url.startswith(("env:", "file:")), f"{where}: {url}"
    for path in [*yaml_files(), DOCKERFILE]:
        text = path.read_text()
        assert not re.search(r"rediss?://[^\s/@]*:[^\s/@]+@", text), f"{path.name}: a password"
        assert not re.search(r"\bA[SK]IA[0-9A-Z]{16}\b", text), f"{path.name}: an AWS key id"


def test_serve_config_is_a_valid_serve_deploy_config():
    """Ray Serve's own schema accepts it, the builder exists, its settings are ServeConfig's,
    and it serves the registry (no fixed model) with the loop's wiring."""
    import importlib

    from ray.serve.schema import ServeDeploySchema

    from recsys_dist.config import config_from_dict

    raw = yaml.safe_load(SERVE_CONFIG.read_text())
    deploy = ServeDeploySchema.model_validate(raw)
    (application,) = deploy.applications
    module, _, builder = application.import_path.partition(":")
    assert callable(getattr(importlib.import_module(module), builder))
    assert set(application.args) == {"registry", "serve", "interests"}, application.args
    assert application.args["registry"] == "s3://BUCKET/registry"
    config = config_from_dict({name: application.args[name] for name in ("serve", "interests")})
    assert config.serve.store == "redis" and config.serve.redis_url == "env:REDIS_URL"
    assert config.serve.event_log_dir == "s3://BUCKET/event_log"
    assert config.serve.event_log_ack == "published" and config.serve.wal_dir == "/mnt/wal"
    assert config.serve.api_keys_file == "/etc/recsys-dist/keys/keys.json"
    (deployment,) = application.deployments
    assert deployment.name == "recommender"
    assert "user_config" not in raw["applications"][0]["deployments"][0], "the registry's model"
    assert {"min_replicas", "max_replicas", "target_ongoing_requests"} <= set(
        deployment.autoscaling_config
    )
    assert raw["applications"][0]["deployments"][0]["logging_config"] == {"encoding": "JSON"}
    assert deployment.max_queued_requests > 0


def test_the_rayservice_deploys_serve_recommender_yaml():
    """One Serve config: what the operator PUTs is what `serve deploy` takes."""
    assert rayservice_serve_config() == yaml.safe_load(SERVE_CONFIG.read_text())


def _rayservice_containers() -> list[tuple[str, dict, dict]]:
    return [
        (f"{group}/{c['name']}", c, template["spec"])
        for _, group, template in ray_pod_templates(RAYSERVICE)
        for c in template["spec"]["containers"]
    ]


def test_the_rayservice_pods_get_the_service_secrets_from_secrets():
    """REDIS_URL from a Secret key, the API keys file from a Secret volume, on every pod."""
    serve = rayservice_serve_config()["applications"][0]["args"]["serve"]
    keys_dir = str(Path(serve["api_keys_file"]).parent)
    for where, container, pod in _rayservice_containers():
        env = {item["name"]: item for item in container.get("env", [])}
        assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "REDIS_URL", where
        (mount,) = (m for m in container["volumeMounts"] if m["mountPath"] == keys_dir)
        (volume,) = (v for v in pod["volumes"] if v["name"] == mount["name"])
        assert "secret" in volume and "subPath" not in mount, f"{where}: {volume}"


def test_the_wal_is_one_subdirectory_per_raycluster():
    """serve.wal_dir is a subPathExpr of a ReadWriteMany claim named after the pod's RayCluster
    (KubeRay's ray.io/cluster label, through the downward API): the two clusters of an
    upgrade never share a WAL."""
    wal_dir = rayservice_serve_config()["applications"][0]["args"]["serve"]["wal_dir"]
    claims = {
        doc["metadata"]["name"]: doc["spec"]["accessModes"]
        for _, doc in MANIFESTS
        if doc["kind"] == "PersistentVolumeClaim"
    }
    for where, container, pod in _rayservice_containers():
        (mount,) = (m for m in container["volumeMounts"] if m["mountPath"] == wal_dir)
        assert "subPath" not in mount, where
        variable = re.fullmatch(r"\$\((\w+)\)", mount.get("subPathExpr", ""))
        assert variable, f"{where}: {mount}"
        env = {item["name"]: item for item in container["env"]}
        field = env[variable[1]]["valueFrom"]["fieldRef"]["fieldPath"]
        assert field == "metadata.labels['ray.io/cluster']", f"{where}: {field}"
        (volume,) = (v for v in pod["volumes"] if v["name"] == mount["name"])
        assert claims[volume["persistentVolumeClaim"]["claimName"]] == ["ReadWriteMany"], where


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
    for where, container, _ in _rayservice_containers():
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        assert env.get(name) == value, f"{where}: {name} not {value}"


@pytest.mark.parametrize("doc", by_where(KUBERAY))
def test_every_kuberay_resource_uses_the_operators_token_auth_from_one_secret(doc: dict):
    """authOptions token with the Secret ray-auth (key auth_token): the operator sets the
    token on every Ray container and sends it itself; no hand-set RAY_AUTH_* can disagree."""
    cluster = ray_cluster_spec(doc)
    assert cluster.get("authOptions") == AUTH, cluster.get("authOptions")
    assert Version(cluster["rayVersion"]) >= Version("2.52"), "token auth needs Ray >= 2.52"
    hand_set = [("autoscaler", e) for e in cluster.get("autoscalerOptions", {}).get("env", [])]
    hand_set += [(w, e) for w, c in containers(doc) for e in c.get("env", [])]
    hand_set += [(w, e) for w, c in containers(doc) for e in c.get("envFrom", [])]
    for where, item in hand_set:
        assert not str(item.get("name", "")).startswith("RAY_AUTH"), f"{where}: {item}"
        assert not str(item.get("prefix", "")).startswith("RAY_AUTH"), f"{where}: {item}"


def test_the_files_claim_the_kuberay_version_they_need():
    """authOptions.secretName came with KubeRay v1.6.0; no older claim may remain."""
    readme = (CLUSTER / "README.md").read_text()
    assert KUBERAY_MINIMUM in readme
    for path in [*CLUSTER.glob("*"), SERVE_CONFIG]:
        text = path.read_text()
        assert not re.search(r"v1\.1\b|1\.1 or newer|v1\.1\+", text), f"{path.name}: old claim"
        if path.name.startswith("kuberay-") and re.search(r"kind: Ray(Cluster|Job|Service)", text):
            assert KUBERAY_MINIMUM in text, f"{path.name} does not say it needs {KUBERAY_MINIMUM}"


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


def test_every_placeholder_is_listed_in_the_readme():
    """A CAPITALS value in cluster/ or serve/recommender.yaml is a placeholder, and
    cluster/README.md's table lists each one (and no other)."""
    found = placeholders_in([*sorted(CLUSTER.glob("*.yaml")), SERVE_CONFIG])
    table = placeholder_table()
    missing = {name: files for name, files in found.items() if name not in table}
    assert not missing, f"placeholders missing from cluster/README.md: {missing}"
    assert not set(table) - set(found), f"listed but unused: {set(table) - set(found)}"
