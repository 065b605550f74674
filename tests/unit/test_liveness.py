"""A registration whose device plugin is gone stops taking work (SPEC §2: older than the expiry and no
allocatable devices), read from the Node alone, and comes back when the plugin reports again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from kube_kit import node_manifest, pod_manifest

from hami.kube.informer import ClusterInformer
from hami.kube.memory import MemoryKubeApi
from hami.kube.reservations import Reservations
from hami.protocol import annotations as anno
from hami.protocol.liveness import NEVER, stale_vendors
from hami.protocol.manifests import pod_request
from hami.scheduler.framework import Scheduler
from hami.scheduler.state import ClusterState
from hami.vendors.registry import default_vendors

VENDORS = default_vendors()
NOW = datetime(2026, 11, 30, 1, 0, 0, tzinfo=UTC).timestamp()


def at(seconds_ago: float) -> datetime:
    return datetime.fromtimestamp(NOW - seconds_ago, UTC)


def node(handshake: str | None, gpus: str | None) -> dict[str, Any]:
    obj = node_manifest("n1", ("GPU-a", 16000), annotations={anno.NODE_HANDSHAKE: handshake} if handshake else {})
    if gpus is not None:
        obj["status"]["allocatable"]["nvidia.com/gpu"] = gpus
    return obj


@pytest.mark.parametrize(("handshake", "gpus", "stale", "recheck"), [
    (None, "0", False, NEVER),  # nobody ever shook hands: static clusters, foreign agents
    (anno.reported_handshake(at(10)), "0", False, NOW + 50),  # fresh; re-read when it lapses
    (anno.reported_handshake(at(120)), "10", False, NEVER),  # old, but kubelet has the plugin's devices
    (anno.reported_handshake(at(120)), "0", True, NEVER),
    (anno.reported_handshake(at(120)), None, True, NEVER),  # kubelet never heard of the resource
    (anno.requesting_handshake(at(30)), "0", False, NOW + 30),  # asked, still time to answer
    (anno.requesting_handshake(at(61)), "0", True, NEVER),  # asked, never answered
    ("Deleted_2026.11.30 00:59:50", "0", True, NEVER),  # HAMi's scheduler already gave it up
    ("Deleted_2026.11.30 00:59:50", "4", False, NEVER),
    ("Requesting_not a time", "0", False, NEVER),  # unreadable: do not take a node out over it
])
def test_stale_iff_old_and_nothing_allocatable(handshake: str | None, gpus: str | None, stale: bool,
                                               recheck: float) -> None:
    got, wake = stale_vendors(node(handshake, gpus), VENDORS, NOW, 60.0)
    assert got == ({"NVIDIA"} if stale else set())
    assert wake == pytest.approx(recheck)


async def test_informer_takes_a_dead_plugins_node_out_when_its_time_runs_out_and_back_when_it_reports() -> None:
    clock = [NOW]
    api = MemoryKubeApi.from_objects([node(anno.reported_handshake(at(50)), "0")], [])
    state = ClusterState()
    informer = ClusterInformer(api, state, VENDORS, Reservations(state), clock=lambda: clock[0],
                               liveness_check_s=3600)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 5)
        request = pod_request(pod_manifest("p", gpumem=1000), VENDORS)
        assert Scheduler().schedule(request, state).node == "n1"
        clock[0] = NOW + 11  # 61 s since the report: stale, with no event to say so
        informer.check_liveness()
        decision = Scheduler().schedule(request, state)
        assert decision.node is None and "CardNotHealth" in decision.rejected["n1"]
        await api.patch_annotations("nodes", "n1", {anno.NODE_HANDSHAKE: anno.reported_handshake(at(-11))})
        for _ in range(200):
            if Scheduler().schedule(request, state).node == "n1":
                break
            await asyncio.sleep(0.01)
        assert Scheduler().schedule(request, state).node == "n1"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
