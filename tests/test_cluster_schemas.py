"""Every object in cluster/ against the schema the API server would use, offline.

* Built-in kinds (NetworkPolicy, CronJob, ServiceAccount, Role, RoleBinding, ConfigMap,
  PersistentVolumeClaim) against Kubernetes' own OpenAPI schemas, as shipped by
  kubernetes-validate, in strict mode (an unknown field fails), for Kubernetes 1.30 (the oldest
  release we target) and 1.37 (the newest kubernetes-validate 1.37 ships). The pod templates
  and the metadata inside KubeRay resources get the same check.
* KubeRay resources (RayCluster, RayJob, RayService, and the RayJob the retraining ConfigMap
  holds) against the ``openAPIV3Schema`` of the KubeRay CRDs, v1.6.0 (the oldest release these
  files need) and v1.7.0, from ../shared/kuberay-crds; skipped where that folder is absent.
  jsonschema checks types, enums and required fields; unknown fields are checked apart, as
  the API server prunes them from a custom resource instead of refusing it; CEL rules are not
  evaluated, so a test fails if one applies to a field these files set.

The last tests break a copy on purpose, to show each check refuses what it should.
"""

from __future__ import annotations

import copy
from functools import cache

import jsonschema
import kubernetes_validate
import pytest

from tests.cluster_manifests import (
    CRDS,
    KUBERAY_KINDS,
    cel_rules,
    crd_schema,
    json_schema,
    kuberay_resources,
    manifests,
    pod_templates,
    ray_cluster_spec,
    unknown_fields,
)

K8S_VERSIONS = ("1.30", "1.37")
KUBERAY_VERSIONS = ("v1.6.0", "v1.7.0")
MANIFESTS = manifests()
BUILT_IN = [(w, d) for w, d in MANIFESTS if d["kind"] not in KUBERAY_KINDS]
KUBERAY = kuberay_resources()


def by_where(items):
    return [pytest.param(doc, id=where) for where, doc in items]


def k8s_errors(doc: dict, version: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}"]
    return []


@cache
def crd_validator(version: str, kind: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(json_schema(crd_schema(version, kind)))


def crd_errors(doc: dict, version: str) -> list[str]:
    """Why the KubeRay ``version`` CRD would refuse ``doc``, or silently drop part of it."""
    schema = crd_schema(version, doc["kind"])
    errors = [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in crd_validator(version, doc["kind"]).iter_errors(doc)
    ]
    body = {key: value for key, value in doc.items() if key != "metadata"}  # ObjectMeta: below
    errors += [f"{path}: not in the CRD (pruned)" for path in unknown_fields(schema, body)]
    errors += [
        f"{path}: CEL rule {rule!r} applies and is not checked here"
        for path, rule in cel_rules(schema, body)
        if "oldSelf" not in rule  # transition rules: nothing to compare on creation
    ]
    return errors


def need_crds(version: str) -> None:
    if not (CRDS / version).is_dir():
        pytest.skip(f"{CRDS / version} is absent")


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
@pytest.mark.parametrize("doc", by_where(BUILT_IN))
def test_built_in_objects_match_the_kubernetes_schema(doc: dict, k8s: str):
    assert k8s_errors(doc, k8s) == []


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
@pytest.mark.parametrize("doc", by_where(KUBERAY))
def test_pod_templates_and_metadata_in_kuberay_resources_match_the_kubernetes_schema(doc, k8s):
    """KubeRay embeds core/v1 PodTemplateSpec; checked here as Kubernetes checks a pod."""
    metadata = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
    assert k8s_errors(metadata, k8s) == []
    for where, template in pod_templates(doc):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": where}}
        assert k8s_errors({**wrapped, "template": template}, k8s) == [], where


@pytest.mark.parametrize("kuberay", KUBERAY_VERSIONS)
@pytest.mark.parametrize("doc", by_where(KUBERAY))
def test_kuberay_resources_match_the_crd(doc: dict, kuberay: str):
    need_crds(kuberay)
    assert crd_errors(doc, kuberay) == []


# The checks refuse what they should -------------------------------------------------------------


def _rayservice() -> dict:
    (service,) = (doc for _, doc in KUBERAY if doc["kind"] == "RayService")
    return copy.deepcopy(service)


def _typo_auth_options(doc):
    cluster = ray_cluster_spec(doc)
    cluster["authOption"] = cluster.pop("authOptions")  # would be pruned: no token auth


def _bad_mode(doc):
    ray_cluster_spec(doc)["authOptions"]["mode"] = "tokn"


def _replicas_as_text(doc):
    ray_cluster_spec(doc)["workerGroupSpecs"][0]["replicas"] = "one"


def _typo_in_a_container(doc):
    container = ray_cluster_spec(doc)["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["runAsNonroot"] = True


def _no_group_name(doc):
    del ray_cluster_spec(doc)["workerGroupSpecs"][0]["groupName"]


def _cel_guarded(doc):
    doc["spec"]["managedBy"] = "ray.io/kuberay-operator"


BREAKS = {
    "spec.rayClusterConfig.authOption": _typo_auth_options,
    "authOptions.mode": _bad_mode,
    "replicas": _replicas_as_text,
    "securityContext.runAsNonroot": _typo_in_a_container,
    "groupName": _no_group_name,
    "managedBy": _cel_guarded,
}


@pytest.mark.parametrize("where", BREAKS)
def test_the_crd_check_refuses_a_broken_rayservice(where: str):
    need_crds(KUBERAY_VERSIONS[0])
    doc = _rayservice()
    BREAKS[where](doc)
    errors = crd_errors(doc, KUBERAY_VERSIONS[0])
    assert errors and any(where.split(".")[-1] in error for error in errors), errors


def test_the_kubernetes_check_refuses_a_broken_policy_and_pod():
    (policy,) = (d for w, d in BUILT_IN if w.endswith("NetworkPolicy/recsys-dist-ray-heads"))
    broken = copy.deepcopy(policy)
    broken["spec"]["ingress"][0]["ports"][0]["protocl"] = "TCP"  # a typo: refused
    assert k8s_errors(broken, K8S_VERSIONS[0])
    broken = copy.deepcopy(policy)
    broken["spec"]["ingress"][0]["ports"] = {"port": 8265}  # a mapping for a list
    assert k8s_errors(broken, K8S_VERSIONS[0])
    (cron,) = (d for _, d in BUILT_IN if d["kind"] == "CronJob")
    broken = copy.deepcopy(cron)
    pod = broken["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalaton"] = False
    assert k8s_errors(broken, K8S_VERSIONS[0])
