"""ClusterState from Kubernetes objects: what counts as held usage on a restart."""

from __future__ import annotations

import logging

import pytest

from hami import demo
from hami.protocol import annotations as anno
from hami.scheduler.snapshot import state_from_manifests
from hami.vendors.registry import default_vendors


def _pod(name: str, limits: dict[str, str], annotations: dict[str, str], phase: str = "Running") -> dict:  # type: ignore[type-arg]
    return {"metadata": {"name": name, "namespace": "ns", "uid": name, "annotations": annotations},
            "spec": {"nodeName": "t4-node-1", "containers": [{"name": "c", "resources": {"limits": limits}}]},
            "status": {"phase": phase}}


ALLOC = {anno.VGPU_DEVICES_ALLOCATED: "GPU-t4-node-1-0,NVIDIA,1000,10:;"}


def test_allocated_running_pod_counts_finished_and_deviceless_do_not() -> None:
    pods = [
        _pod("real", {"nvidia.com/gpumem": "1000", "nvidia.com/gpu": "1"}, ALLOC),
        _pod("done", {"nvidia.com/gpumem": "1000", "nvidia.com/gpu": "1"}, ALLOC, phase="Succeeded"),
        _pod("forged", {}, ALLOC),  # no managed resource: the annotation can only be forged
    ]
    state = state_from_manifests(demo.cluster(), pods, default_vendors())
    assert state.device_usage() == {("t4-node-1", "GPU-t4-node-1-0"): (1000, 10, 1)}
    assert set(state.pods) == {"real"}


def test_malformed_pod_is_skipped_with_a_log_line_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    pods = [_pod("bad", {"nvidia.com/gpumem": "1000"}, {anno.VGPU_DEVICES_ALLOCATED: "GPU-x,NVIDIA,lots,0:;"}),
            _pod("good", {"nvidia.com/gpumem": "1000"}, ALLOC)]
    with caplog.at_level(logging.WARNING):
        state = state_from_manifests(demo.cluster(), pods, default_vendors())
    assert set(state.pods) == {"good"}
    assert "ns/bad" in caplog.text
