"""Kubernetes objects -> state: what a pod holds, as far as its annotations may be believed, and which nodes
take work; the informer and `hami place` share this conversion and so hold the same state."""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from kube_kit import node_manifest, pod_manifest

from hami import demo
from hami.kube.informer import ClusterInformer
from hami.kube.memory import MemoryKubeApi
from hami.kube.reservations import Reservations
from hami.protocol import annotations as anno
from hami.resources import ContainerDevice
from hami.scheduler.snapshot import node_state, pod_state, state_from_manifests
from hami.scheduler.state import ClusterState
from hami.vendors.registry import default_vendors

VENDORS = default_vendors()
NOW = datetime(2026, 11, 30, 1, 0, 0, tzinfo=UTC).timestamp()


def _pod(name: str, limits: dict[str, str], annotations: dict[str, str], phase: str = "Running",
         scheduler: str | None = "hami-scheduler") -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeName": "t4-node-1", "containers": [{"name": "c", "resources": {"limits": limits}}]}
    if scheduler is not None:
        spec["schedulerName"] = scheduler
    return {"metadata": {"name": name, "namespace": "ns", "uid": name, "annotations": annotations},
            "spec": spec, "status": {"phase": phase}}


ALLOC = {anno.VGPU_DEVICES_ALLOCATED: "GPU-t4-node-1-0,NVIDIA,1000,10:;"}
ASKS = {"nvidia.com/gpumem": "1000", "nvidia.com/gpucores": "10", "nvidia.com/gpu": "1"}


def build(pods: list[dict[str, Any]], nodes: list[dict[str, Any]] | None = None) -> tuple[ClusterState, list[str]]:
    lines: list[str] = []
    state = state_from_manifests(demo.cluster() if nodes is None else nodes, pods, VENDORS, now=NOW,
                                 report=lines.append)
    return state, lines


def test_allocated_running_pod_counts_finished_and_deviceless_do_not() -> None:
    state, lines = build([
        _pod("real", ASKS, ALLOC),
        _pod("done", ASKS, ALLOC, phase="Succeeded"),
        _pod("forged", {}, ALLOC),  # no managed resource: the annotation can only be forged
    ])
    assert state.device_usage() == {("t4-node-1", "GPU-t4-node-1-0"): (1000, 10, 1)}
    assert set(state.pods) == {"real"}
    assert lines == ["pod ns/forged: ignoring hami.io/vgpu-devices-allocated: the pod requests no devices"]


def test_malformed_pod_is_skipped_with_a_line_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    pods = [_pod("bad", ASKS, {anno.VGPU_DEVICES_ALLOCATED: "GPU-x,NVIDIA,lots,0:;"}), _pod("good", ASKS, ALLOC)]
    with caplog.at_level(logging.WARNING):
        state = state_from_manifests(demo.cluster(), pods, VENDORS)  # no report: the log has it
    assert set(state.pods) == {"good"}
    assert "ns/bad" in caplog.text


@pytest.mark.parametrize(("limits", "counted"), [
    (ASKS, (1000, 10)),
    ({"nvidia.com/gpu": "1"}, (15360, 100)),  # a whole T4 (15360 MiB registered)
    ({"nvidia.com/gpumem-percentage": "50", "nvidia.com/gpucores": "30"}, (7680, 30)),
])
def test_a_rewritten_allocation_counts_as_requested(limits: dict[str, str], counted: tuple[int, int]) -> None:
    # The tenant patched its running pod down to 1 MiB and no cores: the card looked almost free.
    tampered = _pod("t", limits, {anno.VGPU_DEVICES_ALLOCATED: "GPU-t4-node-1-0,NVIDIA,1,0:;"})
    state, lines = build([tampered])
    assert state.device_usage() == {("t4-node-1", "GPU-t4-node-1-0"): (*counted, 1)}
    assert lines == ["pod ns/t: hami.io/vgpu-devices-allocated does not match the pod's request (container c); "
                     "counted as requested"]


def test_extra_devices_are_cut_to_the_request_and_missing_ones_are_not_invented() -> None:
    two = "GPU-a100-node-0,NVIDIA,1000,10:GPU-a100-node-1,NVIDIA,1000,10:;"
    more = _pod("more", ASKS, {anno.VGPU_DEVICES_ALLOCATED: two})
    fewer = _pod("fewer", {**ASKS, "nvidia.com/gpu": "3"}, {anno.VGPU_DEVICES_ALLOCATED: two})
    for pod in (more, fewer):
        pod["spec"]["nodeName"] = "a100-node"
    state, lines = build([more, fewer])
    assert state.pods["more"].allocation == ((ContainerDevice("GPU-a100-node-0", "NVIDIA", 1000, 10),),)
    assert len(state.pods["fewer"].allocation[0]) == 2
    assert len(lines) == 2


def test_a_pod_of_another_scheduler_holds_nothing() -> None:
    # `hami.io/webhook: ignore`, or a pod that names its own scheduler, keeps whatever annotations it wrote.
    whole = {anno.VGPU_DEVICES_ALLOCATED: "GPU-t4-node-1-0,NVIDIA,15360,100:;"}
    state, lines = build([_pod("other", {"nvidia.com/gpu": "1"}, whole, scheduler="default-scheduler"),
                          _pod("unnamed", {"nvidia.com/gpu": "1"}, whole, scheduler=None)])
    assert state.pods == {} and state.device_usage() == {}
    assert lines == [
        "pod ns/other: ignoring hami.io/vgpu-devices-allocated: pod is scheduled by default-scheduler, not "
        "hami-scheduler",
        "pod ns/unnamed: ignoring hami.io/vgpu-devices-allocated: pod is scheduled by default-scheduler, not "
        "hami-scheduler",
    ]
    trusted = state_from_manifests(demo.cluster(), [_pod("other", {"nvidia.com/gpu": "1"}, whole,
                                                         scheduler="volcano")], VENDORS,
                                   trusted=("hami-scheduler", "volcano"))
    assert set(trusted.pods) == {"other"}


def test_a_percentage_of_a_node_not_seen_yet_is_taken_as_annotated() -> None:
    pod = _pod("p", {"nvidia.com/gpumem-percentage": "50", "nvidia.com/gpucores": "30"},
               {anno.VGPU_DEVICES_ALLOCATED: "GPU-t4-node-1-0,NVIDIA,1,0:;"})
    converted = pod_state(pod, VENDORS)  # no node known
    assert converted.record is not None
    assert converted.record.allocation == ((ContainerDevice("GPU-t4-node-1-0", "NVIDIA", 1, 30),),)
    assert "counted as requested" in converted.untrusted


def test_mutex_is_the_pods_own_policy() -> None:
    state, _ = build([_pod("m", ASKS, {**ALLOC, anno.GPU_SCHEDULER_POLICY: "binpack, Mutex"}),
                      _pod("s", ASKS, {anno.VGPU_DEVICES_ALLOCATED: "GPU-t4-node-1-1,NVIDIA,1000,10:;"})])
    assert state.pods["m"].mutex and not state.pods["s"].mutex


def test_one_malformed_node_is_skipped_naming_it_and_the_rest_stay() -> None:
    broken = node_manifest("broken", ("GPU-x", 1000))
    broken["metadata"]["annotations"][anno.NODE_NVIDIA_REGISTER] = "[{not json"
    state, lines = build([], [*demo.cluster(), broken])
    assert {n.name for n in state.live_nodes()} == {n["metadata"]["name"] for n in demo.cluster()}
    [line] = lines
    assert line.startswith("node broken takes no work: hami.io/node-nvidia-register: invalid JSON")


def test_a_stale_registration_marks_its_devices_unhealthy_at_the_given_time() -> None:
    reported = datetime.fromtimestamp(NOW - 61, UTC)
    node = node_manifest("n1", ("GPU-a", 1000), annotations={anno.NODE_HANDSHAKE: anno.reported_handshake(reported)})
    converted = node_state(node, VENDORS, now=NOW)
    assert converted.node is not None and converted.stale == {"NVIDIA"}
    assert [d.health for d in converted.node.devices] == [False]
    fresh = node_state(node, VENDORS, now=NOW - 30)
    assert fresh.node is not None and fresh.node.devices[0].health and fresh.recheck_at == NOW - 1


# --- informer and snapshot agree --------------------------------------------------------------------------


def random_cluster(rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A few nodes (some malformed, some with a stale registration) and pods in every state a pod's
    annotations can be in: honest, tampered, of another scheduler, failed-bind, finished, pending."""
    nodes = []
    for i in range(rng.randint(1, 4)):
        handshake = anno.reported_handshake(datetime.fromtimestamp(NOW - rng.choice([10, 120]), UTC))
        node = node_manifest(f"n{i}", *((f"GPU-{i}-{g}", rng.choice([8000, 16000])) for g in range(2)),
                             annotations={anno.NODE_HANDSHAKE: handshake})
        node["status"]["allocatable"]["nvidia.com/gpu"] = rng.choice(["0", "20"])
        if rng.random() < 0.2:
            node["metadata"]["annotations"][anno.NODE_NVIDIA_REGISTER] = "GPU-x,ten,1000,100,T4,0,true:"
        nodes.append(node)
    pods = []
    for j in range(rng.randint(0, 12)):
        node = f"n{rng.randrange(len(nodes) + 1)}"  # sometimes a node that does not exist
        uuid = f"GPU-{node[1:]}-{rng.randrange(2)}"
        shape = rng.choice([{"gpumem": 1000, "gpucores": 10}, {"gpumem": None, "gpucores": None}])
        honest = f"{uuid},NVIDIA,{shape['gpumem'] or 8000},{shape['gpucores'] or 100}:;"
        alloc = rng.choice([honest, f"{uuid},NVIDIA,1,0:;"])
        annotations = {anno.VGPU_DEVICES_ALLOCATED: alloc, anno.VGPU_NODE: node}
        kind = rng.choice(["bound", "bound", "unbound", "failed", "done", "other", "policy"])
        if kind == "failed":
            annotations[anno.BIND_PHASE] = anno.BIND_PHASE_FAILED
        if kind == "policy":
            annotations[anno.GPU_SCHEDULER_POLICY] = "mutex"
        pod = pod_manifest(f"p{j}", node=node if kind in ("bound", "done", "policy") else None,
                           annotations=annotations, **shape)
        if kind == "done":
            pod["status"]["phase"] = "Succeeded"
        if kind == "other":
            pod["spec"]["schedulerName"] = "default-scheduler"
        if rng.random() < 0.3:
            pod["spec"]["containers"][0]["resources"]["limits"] = {"nvidia.com/gpumem-percentage": "50"}
        pods.append(pod)
    return nodes, pods


@pytest.mark.parametrize("seed", range(16))
def test_informer_and_snapshot_hold_the_same_state(seed: int) -> None:
    rng = random.Random(seed)
    nodes, pods = random_cluster(rng)
    snapshot = state_from_manifests(nodes, pods, VENDORS, now=NOW, report=lambda _: None)
    state = ClusterState()
    informer = ClusterInformer(MemoryKubeApi(), state, VENDORS, Reservations(state), track_node_resources=True,
                               clock=lambda: NOW)
    # Nodes and pods are listed at once: a pod may be seen before its node.
    events = [("nodes", n) for n in nodes] + [("pods", p) for p in pods]
    rng.shuffle(events)
    for kind, obj in events:
        (informer.apply_node if kind == "nodes" else informer.apply_pod)("ADDED", obj)
    assert {n.name: n for n in state.live_nodes()} == {n.name: n for n in snapshot.live_nodes()}
    assert state.pods == snapshot.pods
    assert state.device_usage() == snapshot.device_usage()
