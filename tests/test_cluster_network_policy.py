"""The NetworkPolicies of cluster/, evaluated for every Ray pod a KubeRay resource starts: who
may connect to it and what it may connect to (cluster/README.md, "Network").

A pod's labels are its template's (``recsys-dist/workload``) plus KubeRay's
``ray.io/node-type``; the policies are read from every file in cluster/, as they all apply in
one namespace. Each rule is its own test, and each was seen failing on a broken policy.
"""

from __future__ import annotations

import pytest

from tests.cluster_manifests import (
    ALL_PORTS,
    WORKLOAD_LABEL,
    admitted,
    kuberay_resources,
    network_policies,
    pod_labels,
    ray_cluster_spec,
    ray_pod_templates,
)

KUBERAY = kuberay_resources()
PODS = [
    pytest.param(doc, role, pod_labels(role, template), id=f"{where.split()[-1]} {group}")
    for where, doc in KUBERAY
    for role, group, template in ray_pod_templates(doc)
]


def tcp(*ports: int) -> frozenset:
    return frozenset(("TCP", port) for port in ports)


def expected_ingress(doc: dict, role: str) -> dict:
    peers = {"same workload": ALL_PORTS, "prometheus": tcp(8080)}
    if role == "head":
        peers["operator"] = tcp(8265, 8000)  # Serve config and job status; Serve's health
    if role == "head" and doc["kind"] == "RayJob":
        peers["submitter"] = tcp(8265)
    if doc["kind"] == "RayService":
        peers["client"] = tcp(8000)
    return peers


def expected_egress(doc: dict, role: str) -> dict:
    peers = {"same workload": ALL_PORTS, "dns": frozenset({("UDP", 53), ("TCP", 53)})}
    peers["https"] = tcp(443)  # object storage, STS
    if doc["kind"] == "RayService":
        peers["redis"] = tcp(6379)
    if role == "head" and ray_cluster_spec(doc).get("enableInTreeAutoscaling"):
        peers["apiserver"] = tcp(443, 6443)
    return peers


def test_each_kuberay_resource_labels_all_its_pods_with_its_own_workload():
    """The policies tell workloads apart by this label: one value per resource, on every pod
    of it, and no two resources share one."""
    workloads = []
    for where, doc in KUBERAY:
        values = {pod_labels(r, t).get(WORKLOAD_LABEL) for r, _, t in ray_pod_templates(doc)}
        assert len(values) == 1 and None not in values, f"{where}: {values}"
        workloads += values
    assert len(workloads) == len(set(workloads)), workloads


@pytest.mark.parametrize("doc, role, labels", PODS)
def test_every_ray_pod_is_isolated_both_ways(doc: dict, role: str, labels: dict):
    """A pod no policy selects accepts and opens every connection."""
    assert admitted(labels, "Ingress")[0], "no policy restricts what reaches this pod"
    assert admitted(labels, "Egress")[0], "no policy restricts what this pod reaches"


@pytest.mark.parametrize("doc, role, labels", PODS)
def test_the_operator_reaches_the_heads_on_8265_and_8000_only(doc: dict, role: str, labels):
    """The KubeRay operator's namespace: the dashboard (Serve config, job status) and Serve's
    health check, on the head; nothing on the workers."""
    ingress = admitted(labels, "Ingress")[1]
    if role == "head":
        assert ingress.get("operator") == tcp(8265, 8000), ingress
    else:
        assert "operator" not in ingress, ingress


@pytest.mark.parametrize("doc, role, labels", PODS)
def test_rayjob_submitters_reach_only_their_heads_job_api(doc: dict, role: str, labels: dict):
    ingress = admitted(labels, "Ingress")[1]
    if not (role == "head" and doc["kind"] == "RayJob"):
        assert "submitter" not in ingress, ingress
        return
    assert ingress.get("submitter") == tcp(8265), ingress
    # KubeRay's labels on this RayJob's submitter pods, and our template's label.
    name = doc["metadata"]["name"]
    kuberay = {"ray.io/originated-from-crd": "RayJob", "ray.io/originated-from-cr-name": name}
    ours = doc["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    peers = [
        peer.get("podSelector", {}).get("matchLabels")
        for policy in network_policies()
        for rule in policy["spec"].get("ingress", [])
        for peer in rule.get("from", [])
    ]
    assert kuberay in peers and ours in peers, peers


@pytest.mark.parametrize("doc, role, labels", PODS)
def test_the_pods_of_one_workload_reach_each_other_on_every_port(doc, role, labels):
    """GCS, raylets, object managers, workers, agents: every port, and only between the pods
    of one workload."""
    for direction in ("Ingress", "Egress"):
        peers = admitted(labels, direction)[1]
        assert peers.get("same workload", ()) is ALL_PORTS, (direction, peers)
        every_port = {kind for kind, ports in peers.items() if ports is ALL_PORTS}
        assert every_port == {"same workload"}, (direction, peers)


@pytest.mark.parametrize("doc, role, labels", PODS)
def test_clients_reach_only_the_service_and_only_on_8000(doc: dict, role: str, labels: dict):
    ingress = admitted(labels, "Ingress")[1]
    if doc["kind"] == "RayService":
        assert ingress.get("client") == tcp(8000), ingress
    else:
        assert "client" not in ingress, ingress


@pytest.mark.parametrize("doc, role, labels", PODS)
def test_prometheus_scrapes_8080_and_dns_answers(doc: dict, role: str, labels: dict):
    assert admitted(labels, "Ingress")[1].get("prometheus") == tcp(8080)
    assert admitted(labels, "Egress")[1].get("dns") == frozenset({("UDP", 53), ("TCP", 53)})


@pytest.mark.parametrize("doc, role, labels", PODS)
def test_only_an_autoscaling_head_reaches_the_api_server(doc: dict, role: str, labels: dict):
    egress = admitted(labels, "Egress")[1]
    if role == "head" and ray_cluster_spec(doc).get("enableInTreeAutoscaling"):
        assert egress.get("apiserver") == tcp(443, 6443), egress
    else:
        assert "apiserver" not in egress, egress


@pytest.mark.parametrize("doc, role, labels", PODS)
def test_nothing_else_gets_in_or_out(doc: dict, role: str, labels: dict):
    assert admitted(labels, "Ingress")[1] == expected_ingress(doc, role)
    assert admitted(labels, "Egress")[1] == expected_egress(doc, role)
