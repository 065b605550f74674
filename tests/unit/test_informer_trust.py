"""What the informer believes of pods' allocation annotations (a tenant may patch its own pod), and how it
tells: one Warning Event per pod or node and cause, never one per watch event."""

from __future__ import annotations

import copy
from typing import Any

from kube_kit import node_manifest, pod_manifest

from hami.kube.events import EventRecorder
from hami.kube.informer import ClusterInformer
from hami.kube.memory import MemoryKubeApi
from hami.kube.reservations import Reservations
from hami.protocol import annotations as anno
from hami.scheduler.state import ClusterState
from hami.vendors.registry import default_vendors

VENDORS = default_vendors()


def informer() -> tuple[ClusterInformer, ClusterState, EventRecorder]:
    api = MemoryKubeApi()
    state = ClusterState()
    events = EventRecorder(api)
    watcher = ClusterInformer(api, state, VENDORS, Reservations(state), events=events)
    watcher.apply_node("ADDED", node_manifest("n1", ("GPU-a", 16000), ("GPU-b", 16000)))
    return watcher, state, events


def pod(name: str, alloc: str | None, *, node: str | None = "n1", **kwargs: Any) -> dict[str, Any]:
    annotations = {} if alloc is None else {anno.VGPU_DEVICES_ALLOCATED: alloc, anno.VGPU_NODE: "n1"}
    return pod_manifest(name, node=node, annotations=annotations, **kwargs)


def patched(obj: dict[str, Any], **annotations: str | None) -> dict[str, Any]:
    """The pod after a merge patch of its annotations (None deletes), as the next watch event brings it."""
    out = copy.deepcopy(obj)
    for key, value in annotations.items():
        name = {"allocated": anno.VGPU_DEVICES_ALLOCATED, "phase": anno.BIND_PHASE}[key]
        if value is None:
            out["metadata"]["annotations"].pop(name, None)
        else:
            out["metadata"]["annotations"][name] = value
    return out


def warnings(events: EventRecorder) -> list[tuple[str, str, str]]:
    return [(e["involvedObject"]["name"], e["reason"], e["message"]) for e in events.pending()]


def test_a_forged_allocation_on_a_pod_of_another_scheduler_counts_nothing_and_is_told_once() -> None:
    watcher, state, events = informer()
    forged = pod("forged", "GPU-a,NVIDIA,16000,100:;")
    forged["spec"]["schedulerName"] = "default-scheduler"
    for _ in range(3):  # every watch event of the pod says the same
        watcher.apply_pod("MODIFIED", forged)
    assert state.pods == {} and state.device_usage() == {}
    assert warnings(events) == [("forged", "UntrustedAllocation", "ignoring hami.io/vgpu-devices-allocated: "
                                 "pod is scheduled by default-scheduler, not hami-scheduler")]
    [event] = events.pending()
    assert event["involvedObject"]["kind"] == "Pod" and event["metadata"]["namespace"] == "default"


def test_a_pod_first_seen_tampered_counts_as_requested() -> None:
    watcher, state, events = informer()
    watcher.apply_pod("ADDED", pod("t", "GPU-a,NVIDIA,1,0:;", gpumem=4000, gpucores=25))
    assert state.device_usage() == {("n1", "GPU-a"): (4000, 25, 1)}
    [(name, reason, message)] = warnings(events)
    assert (name, reason) == ("t", "UntrustedAllocation")
    assert message.endswith("does not match the pod's request (container main); counted as requested")


def test_a_bound_pods_allocation_stays_what_it_was_when_first_accounted() -> None:
    watcher, state, events = informer()
    honest = pod("p", "GPU-a,NVIDIA,4000,25:;", gpumem=4000, gpucores=25)
    watcher.apply_pod("ADDED", honest)
    for forged in (patched(honest, allocated="GPU-b,NVIDIA,4000,25:;"),  # another card, to free this one
                   patched(honest, allocated=None)):  # no annotation: nothing held
        watcher.apply_pod("MODIFIED", forged)
        assert state.device_usage() == {("n1", "GPU-a"): (4000, 25, 1)}
    [(name, reason, message)] = warnings(events)
    assert (name, reason) == ("p", "UntrustedAllocation")
    assert "ignoring a change of hami.io/vgpu-devices-allocated after the pod was bound" in message
    done = copy.deepcopy(honest)
    done["status"]["phase"] = "Succeeded"
    watcher.apply_pod("MODIFIED", done)  # finished: its devices are free, whatever it was
    assert state.device_usage() == {} and state.pods == {}


def test_hamis_own_flow_may_change_the_allocation_until_the_pod_is_bound() -> None:
    # HAMi's scheduler writes the allocation before binding, marks a failed bind and schedules again.
    watcher, state, events = informer()
    first = pod("h", "GPU-a,NVIDIA,4000,0:;", node=None, gpumem=4000, gpucores=0)
    watcher.apply_pod("ADDED", first)
    assert state.device_usage() == {("n1", "GPU-a"): (4000, 0, 1)}
    watcher.apply_pod("MODIFIED", patched(first, phase=anno.BIND_PHASE_FAILED))
    assert state.device_usage() == {}
    again = patched(first, allocated="GPU-b,NVIDIA,4000,0:;", phase=anno.BIND_PHASE_ALLOCATING)
    watcher.apply_pod("MODIFIED", again)
    assert state.device_usage() == {("n1", "GPU-b"): (4000, 0, 1)}
    bound = copy.deepcopy(again)
    bound["spec"]["nodeName"] = "n1"
    watcher.apply_pod("MODIFIED", bound)
    watcher.apply_pod("MODIFIED", patched(bound, allocated="GPU-a,NVIDIA,4000,0:;"))
    assert state.device_usage() == {("n1", "GPU-b"): (4000, 0, 1)}
    assert [reason for _, reason, _ in warnings(events)] == ["UntrustedAllocation"]  # the last change only
    watcher.apply_pod("DELETED", bound)
    assert state.pods == {}


def test_a_node_that_cannot_be_read_is_told_on_the_node_once() -> None:
    watcher, state, events = informer()
    broken = node_manifest("n1", ("GPU-a", 16000))
    broken["metadata"]["annotations"][anno.NODE_NVIDIA_REGISTER] = "[{garbage"
    for beat in range(3):  # its agent keeps answering the handshake
        broken["metadata"]["annotations"][anno.NODE_HANDSHAKE] = f"Reported 2026-01-01 00:00:0{beat} +0000 UTC"
        watcher.apply_node("MODIFIED", broken)
    assert list(state.live_nodes()) == []
    [event] = events.pending()
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "n1"}
    assert event["metadata"]["namespace"] == "default" and event["type"] == "Warning"
    assert event["reason"] == "InvalidDeviceRegistration"
    assert event["message"].startswith("node n1 takes no work: hami.io/node-nvidia-register: invalid JSON")


def test_a_percentage_seen_before_its_node_is_checked_when_the_node_is_seen() -> None:
    watcher, state, _ = informer()
    half = pod("p", "GPU-c,NVIDIA,1,50:;", node="n2", gpu=None, gpucores=50)
    half["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpumem-percentage"] = "50"
    watcher.apply_pod("ADDED", half)  # n2 not seen yet: 1 MiB stands for now
    assert state.pods["uid-p"].allocation[0][0].memory_mib == 1
    watcher.apply_node("ADDED", node_manifest("n2", ("GPU-c", 8000)))
    assert state.device_usage()[("n2", "GPU-c")] == (4000, 50, 1)
    watcher.apply_pod("MODIFIED", patched(half, allocated="GPU-c,NVIDIA,2,50:;"))  # bound and checked: fixed
    assert state.device_usage()[("n2", "GPU-c")] == (4000, 50, 1)
