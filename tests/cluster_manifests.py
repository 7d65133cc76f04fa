"""The manifests of ``cluster/`` and ``serve/``, read for the static tests: every Kubernetes
object (with the RayJob a ConfigMap carries), the Ray pods of each KubeRay resource, the
RayService's Serve config, the KubeRay CRD schemas, a model of NetworkPolicy selection, the
Dockerfile's instructions and the placeholder table of ``cluster/README.md``.

Offline and Ray-free: a later multi-node test PUTs :func:`rayservice_serve_config` to a real
dashboard, as the KubeRay operator does.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
RAYSERVICE = CLUSTER / "kuberay-rayservice.yaml"
SERVE_CONFIG = ROOT / "serve" / "recommender.yaml"
DOCKERFILE = ROOT / "Dockerfile"
CRDS = ROOT.parent / "shared" / "kuberay-crds"  # skipped where absent, like the datasets
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayService")
WORKLOAD_LABEL = "recsys-dist/workload"
RAY_UID = 1000  # the `ray` user of Ray's images, the Dockerfile's USER, the pods' runAsUser
# Ray version as a pip pin ("ray==X", "ray[serve]==X"), an image tag, or KubeRay's rayVersion.
RAY_PIN = re.compile(r"(?<![\w.-])ray(?:\[[^\]]*\])?==(\d[\w.]*)")
RAY_IMAGE = re.compile(r"rayproject/ray(?:-ml|-llm)?:(\d+\.\d+\.\d+)")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_all(text: str) -> list[Any]:
    """The non-empty YAML documents of ``text``."""
    return [doc for doc in yaml.load_all(text, Loader=_LOADER) if doc is not None]


def kubernetes_files() -> list[Path]:
    return sorted(CLUSTER.glob("kuberay-*.yaml"))


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def manifests() -> list[tuple[str, dict]]:
    """(where, object) of every Kubernetes object in ``cluster/kuberay-*.yaml``; an object a
    ConfigMap holds as a YAML value (the retraining RayJob) follows its ConfigMap."""
    found = []
    for path in kubernetes_files():
        for index, doc in enumerate(load_all(path.read_text())):
            where = f"{path.name}#{index} {name_of(doc)}"
            found.append((where, doc))
            if doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    for inner in load_all(text) if key.endswith((".yaml", ".yml")) else []:
                        if isinstance(inner, dict) and {"apiVersion", "kind"} <= set(inner):
                            found.append((f"{where} data.{key} {name_of(inner)}", inner))
    return found


def kuberay_resources() -> list[tuple[str, dict]]:
    return [(where, doc) for where, doc in manifests() if doc.get("kind") in KUBERAY_KINDS]


def rayservice_serve_config(path: Path = RAYSERVICE) -> dict:
    """The Serve config the KubeRay operator PUTs to ``/api/serve/applications/``: the
    RayService's ``serveConfigV2``, parsed."""
    (service,) = (doc for doc in load_all(Path(path).read_text()) if doc["kind"] == "RayService")
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def ray_cluster_spec(doc: dict) -> dict:
    """The RayCluster spec of a RayCluster, RayJob or RayService."""
    spec = doc["spec"]
    return {"RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}.get(
        doc["kind"]
    ) or spec


def ray_pod_templates(doc: dict) -> Iterator[tuple[str, str, dict]]:
    """(role, group, pod template) of every Ray pod a KubeRay resource starts."""
    cluster = ray_cluster_spec(doc)
    yield "head", "head", cluster["headGroupSpec"]["template"]
    for group in cluster.get("workerGroupSpecs", []):
        yield "worker", group["groupName"], group["template"]


def pod_labels(role: str, template: dict) -> dict:
    """The labels a Ray pod carries that a policy here may select: ours, plus KubeRay's
    ``ray.io/node-type`` (``ray.io/cluster`` is generated for RayJobs and RayServices)."""
    return {**(template.get("metadata") or {}).get("labels", {}), "ray.io/node-type": role}


def pod_templates(doc: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod template) of every pod an object starts: Ray pods, a RayJob's submitter, a
    CronJob's or Job's pods."""
    kind = doc.get("kind")
    if kind in KUBERAY_KINDS:
        for _role, group, template in ray_pod_templates(doc):
            yield group, template
        if "submitterPodTemplate" in doc["spec"]:
            yield "submitter", doc["spec"]["submitterPodTemplate"]
    elif kind == "CronJob":
        yield "job", doc["spec"]["jobTemplate"]["spec"]["template"]
    elif kind in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
        yield "pod", doc["spec"]["template"]


def containers(doc: dict) -> Iterator[tuple[str, dict]]:
    """(where, container) of every container an object runs, init containers included."""
    for where, template in pod_templates(doc):
        spec = template["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield f"{where}/{container['name']}", container


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, node) of every mapping, list and scalar inside ``node``, depth first."""
    yield path, node
    if isinstance(node, dict):
        for key, child in node.items():
            yield from walk(child, f"{path}.{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from walk(child, f"{path}[{index}]")


def ray_versions(node: Any) -> set[str]:
    """Every Ray version ``node`` names: rayVersion, a pip pin, an image tag."""
    found = set()
    for _, item in walk(node):
        if isinstance(item, dict) and "rayVersion" in item:
            found.add(str(item["rayVersion"]))
        if isinstance(item, str):
            found |= set(RAY_PIN.findall(item)) | set(RAY_IMAGE.findall(item))
    return found


def pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def ray_requirement() -> Requirement:
    """The Ray requirement of pyproject.toml's dependencies."""
    dependencies = map(Requirement, pyproject()["project"]["dependencies"])
    (ray,) = (r for r in dependencies if r.name == "ray")
    return ray


# NetworkPolicy --------------------------------------------------------------------------------

ALL_PORTS = None  # a rule without `ports`


def selects(selector: dict, labels: dict) -> bool:
    """Kubernetes' label selector semantics (an empty selector selects everything)."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        value, values = labels.get(key), expression.get("values", [])
        if not {
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
            "In": value in values,
            "NotIn": value not in values,
        }[operator]:
            return False
    return True


def network_policies() -> list[dict]:
    return [doc for _, doc in manifests() if doc.get("kind") == "NetworkPolicy"]


def peer_kind(peer: dict, workload: str) -> str:
    """What a NetworkPolicy peer is, in the terms of cluster/README.md."""
    namespace = (peer.get("namespaceSelector") or {}).get("matchLabels", {})
    namespace = namespace.get("kubernetes.io/metadata.name")
    pods = (peer.get("podSelector") or {}).get("matchLabels", {})
    if "ipBlock" in peer:
        cidr = peer["ipBlock"]["cidr"]
        return {"0.0.0.0/0": "https", "API_SERVER_CIDR": "apiserver"}.get(cidr, f"ipBlock {cidr}")
    known = {
        ("KUBERAY_NAMESPACE", "app.kubernetes.io/component", "kuberay-operator"): "operator",
        ("PROMETHEUS_NAMESPACE", "app.kubernetes.io/name", "prometheus"): "prometheus",
        ("kube-system", "k8s-app", "kube-dns"): "dns",
        ("REDIS_NAMESPACE", "app.kubernetes.io/name", "redis"): "redis",
    }
    for (ns, key, value), kind in known.items():
        if (
            namespace == ns
            and pods == {key: value}
            and set(peer) == {"namespaceSelector", "podSelector"}
        ):
            return kind
    if set(peer) != {"podSelector"} or not pods or peer["podSelector"].get("matchExpressions"):
        return f"other {peer}"
    if pods == {WORKLOAD_LABEL: workload}:
        return "same workload"
    if pods.get("ray.io/originated-from-crd") == "RayJob" or "recsys-dist/submitter" in pods:
        return "submitter"
    if pods == {"recsys-dist/client": "true"}:
        return "client"
    return f"pods {pods}"


def admitted(labels: dict, direction: str) -> tuple[bool, dict[str, frozenset | None]]:
    """Whether the pod with ``labels`` is isolated in ``direction`` ("Ingress" or "Egress"),
    and which peers (by :func:`peer_kind`) the policies selecting it admit, on which
    (protocol, port) pairs (``ALL_PORTS``: every port)."""
    isolated, peers = False, {}
    key = "from" if direction == "Ingress" else "to"
    for policy in network_policies():
        spec = policy["spec"]
        if direction not in spec.get("policyTypes", ["Ingress"]) or not selects(
            spec["podSelector"], labels
        ):
            continue
        isolated = True
        for rule in spec.get(direction.lower(), []):
            ports = rule.get("ports")
            ports = (
                ALL_PORTS
                if ports is None
                else frozenset((p.get("protocol", "TCP"), p["port"]) for p in ports)
            )
            for peer in rule.get(key) or [{"everyone": True}]:
                kind = peer_kind(peer, labels.get(WORKLOAD_LABEL, ""))
                before = peers.get(kind, frozenset())
                merged = ALL_PORTS if ALL_PORTS in (before, ports) else before | ports
                peers[kind] = merged
    return isolated, peers


# KubeRay CRD schemas ----------------------------------------------------------------------------


def crd_versions() -> list[str]:
    return sorted(p.name for p in CRDS.iterdir() if p.is_dir()) if CRDS.is_dir() else []


@cache
def crd_schema(version: str, kind: str) -> dict:
    """The ``openAPIV3Schema`` of ``ray.io/v1`` ``kind`` in KubeRay ``version``."""
    crd = yaml.load((CRDS / version / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=_LOADER)
    (v1,) = (v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return v1["schema"]["openAPIV3Schema"]


def json_schema(node: Any) -> Any:
    """An OpenAPI v3 CRD schema as JSON Schema: ``nullable`` allows null and a bare
    ``x-kubernetes-int-or-string`` becomes integer-or-string; the other ``x-kubernetes-*``
    keys are annotations JSON Schema ignores (pruning and CEL: :func:`unknown_fields`,
    :func:`cel_rules`)."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: json_schema(value) for key, value in node.items()}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        out.pop("type", None)
    return out


def _children(schema: dict, value: Any) -> Iterator[tuple[str, dict | None, Any]]:
    """(key, its schema or None when the schema has no room for it, value) below ``value``."""
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            yield f".{key}", properties.get(key, extra if isinstance(extra, dict) else None), item
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield f"[{index}]", schema["items"], item


def unknown_fields(schema: dict, value: Any, path: str = "") -> Iterator[str]:
    """Every key the schema has no room for. The API server does not reject those for a CRD:
    it prunes them (kubectl's strict field validation turns that into an error), so a typo
    such as ``authOption`` would vanish silently."""
    for key, child, item in _children(schema, value):
        if child is None:
            yield path + key
        else:
            yield from unknown_fields(child, item, path + key)


def cel_rules(schema: dict, value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, rule) of every CEL validation (``x-kubernetes-validations``) that applies to a
    value present in ``value``; these tests do not evaluate CEL."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule["rule"]
    for key, child, item in _children(schema, value):
        if child is not None:
            yield from cel_rules(child, item, path + key)


# Dockerfile, .dockerignore, placeholders ---------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        instruction, _, arguments = (current + line).partition(" ")
        instructions.append((instruction.upper(), " ".join(arguments.split())))
        current = ""
    return instructions


def dockerfile_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """Every ARG's default value (quotes removed)."""
    args = {}
    for instruction, arguments in instructions:
        if instruction == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default.strip("\"'")
    return args


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def pip_installs(instructions: list[tuple[str, str]]) -> list[list[str]]:
    """The arguments of every ``pip install`` the RUN instructions make, ARGs substituted."""
    args, installs = dockerfile_args(instructions), []
    for instruction, arguments in instructions:
        if instruction != "RUN":
            continue
        lexer = shlex.shlex(arguments, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands: list[list[str]] = [[]]
        for word in lexer:
            if word in ("&&", "||", ";", "|"):
                commands.append([])
            else:
                commands[-1].append(substitute(word, args))
        for words in commands:
            if words[:2] in (["pip", "install"], ["pip3", "install"]):
                installs.append(words[2:])
            elif words[1:4] == ["-m", "pip", "install"]:
                installs.append(words[4:])
    return installs


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves ``path`` out (Docker's rules: the last pattern that
    matches the path or a folder above it wins; ``!`` lets it back in)."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            excluded = not negated
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


PLACEHOLDER = re.compile(r"(?<![A-Za-z0-9_$(])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*(?![a-z0-9_])")
# An environment variable a container defines (`- name: NAME` on a line of its own) ...
ENV_NAME = re.compile(r"^\s*(?:-\s+)?name:\s*([A-Z][A-Z0-9_]+)\s*(?:#.*)?$", re.M)
# ... or one set (NAME=) or read ($NAME, $(NAME), env:NAME) in a value.
ENV_REFERENCE = re.compile(r"([A-Z][A-Z0-9_]+)=|\$\(?([A-Z][A-Z0-9_]+)|env:([A-Z][A-Z0-9_]+)")
# Upper-case words in the files that are values, not placeholders.
LITERALS = {"ALL", "TCP", "UDP", "JSON", "TEXT", "UTC"}


def placeholder_table() -> dict[str, str]:
    """The placeholders cluster/README.md lists (its "Placeholders" table): name -> row."""
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|(.*)$", (CLUSTER / "README.md").read_text(), re.M)
    return dict(rows)


def _strings(node: Any) -> Iterator[str]:
    """Every string value inside ``node``; a multi-line string that is itself YAML (a Serve
    config, a ConfigMap's manifest) is read as YAML, so that its comments are left out."""
    for _, item in walk(node):
        if not isinstance(item, str):
            continue
        inner = yaml.load(item, Loader=_LOADER) if "\n" in item else None
        if isinstance(inner, (dict, list)):
            yield from _strings(inner)
        else:
            yield item


def placeholders_in(paths: list[Path]) -> dict[str, set[str]]:
    """Placeholder -> files: the upper-case words in the YAML values (comments aside) of
    ``paths`` that are not environment variable names nor :data:`LITERALS`."""
    found: dict[str, set[str]] = {}
    for path in paths:
        text = " ".join(value for doc in load_all(path.read_text()) for value in _strings(doc))
        env = set(ENV_NAME.findall(path.read_text()))
        env |= {next(filter(None, match)) for match in ENV_REFERENCE.findall(text)}
        for word in PLACEHOLDER.findall(text):
            if len(word) >= 3 and word not in env and word not in LITERALS:
                found.setdefault(word, set()).add(path.name)
    return found
