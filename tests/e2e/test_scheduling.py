"""Scheduling scenarios as a user lives them: pods submitted to a real kube-apiserver, admitted by our
webhook, scheduled by a real kube-scheduler calling our extender, annotations read back from the API."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from hami.protocol import annotations as anno
from hami.resources import Device
from tests.e2e.kube import Kube

pytestmark = pytest.mark.e2e

BINPACK = {anno.NODE_SCHEDULER_POLICY: "binpack", anno.GPU_SCHEDULER_POLICY: "binpack"}
SPREAD = {anno.NODE_SCHEDULER_POLICY: "spread", anno.GPU_SCHEDULER_POLICY: "spread"}


def gpus(node: str, model: str, n: int, mem: int = 16000, count: int = 10, numa: tuple[int, ...] = ()) -> list[Device]:
    return [Device(f"GPU-{node}-{i}", i, count, mem, 100, f"NVIDIA-{model}", numa=numa[i] if numa else 0)
            for i in range(n)]


def allocation(pod: dict) -> list[list[tuple[str, int, int]]]:  # type: ignore[type-arg]
    text = pod["metadata"]["annotations"][anno.VGPU_DEVICES_ALLOCATED]
    return [[(d.uuid, d.memory_mib, d.cores) for d in c] for c in anno.decode_pod_allocation(text)]


def test_shared_pods_binpack_onto_one_gpu_with_spec_annotations(kube: Kube) -> None:
    for n in ("bin-a", "bin-b"):
        kube.gpu_node(n, gpus(n, "E2EBIN", 2))
    # One after another: during a burst filter deliberately prefers nodes with no bind in line for their
    # node lock (--node-queue-depth), which trades packing for throughput; this checks the policy itself.
    for i in range(4):
        kube.pod("binpack", f"p{i}", {"nvidia.com/gpumem": "1000"},
                 annotations={**BINPACK, anno.NVIDIA_USE_GPUTYPE: "E2EBIN"})
        kube.wait_bound("binpack", f"p{i}")
    pods = [kube.get_pod("binpack", f"p{i}") for i in range(4)]
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert len(nodes) == 1
    devices = {allocation(p)[0][0][0] for p in pods}
    assert len(devices) == 1, "binpack puts every slice on the same card"
    for p in pods:
        a = p["metadata"]["annotations"]
        uuid = allocation(p)[0][0][0]
        assert a[anno.VGPU_DEVICES_ALLOCATED] == f"{uuid},NVIDIA,1000,0:;"
        assert a[anno.VGPU_NODE] == p["spec"]["nodeName"]
        assert a[anno.BIND_PHASE] in ("allocating", "success")
        assert int(a[anno.VGPU_TIME]) > 0 and int(a[anno.BIND_TIME]) > 0
        assert p["spec"]["schedulerName"] == "hami-scheduler"
    # HAMi's vGPU monitor finds a node's pods by this label.
    (node,) = nodes
    deadline = time.monotonic() + 30
    while len(labelled := kube.list_pods("binpack", f"{anno.VGPU_NODE}={node}")) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sorted(p["metadata"]["name"] for p in labelled) == ["p0", "p1", "p2", "p3"]


def test_a_node_whose_device_plugin_is_gone_takes_no_work(kube: Kube) -> None:
    # Both registrations were last reported 10 minutes ago; kubelet still has the devices of one of them.
    old = anno.reported_handshake(datetime.now(UTC) - timedelta(minutes=10))
    kube.gpu_node("live-ok", gpus("live-ok", "E2ELIVE", 1), extra_annotations={anno.NODE_HANDSHAKE: old})
    kube.gpu_node("live-gone", gpus("live-gone", "E2ELIVE", 1), extra_annotations={anno.NODE_HANDSHAKE: old},
                  allocatable_gpus=0)
    for i in range(2):
        kube.pod("live", f"p{i}", {"nvidia.com/gpumem": "1000"},
                 annotations={**SPREAD, anno.NVIDIA_USE_GPUTYPE: "E2ELIVE"})
        assert kube.wait_bound("live", f"p{i}")["spec"]["nodeName"] == "live-ok"  # spread would take the other
    kube.pod("live", "pinned", {"nvidia.com/gpumem": "1000"}, annotations={anno.NVIDIA_USE_GPUUUID: "GPU-live-gone-0"})
    kube.wait_event("live", "pinned", "CardNotHealth")


def test_shared_pods_spread_across_nodes_and_gpus(kube: Kube) -> None:
    for n in ("spr-a", "spr-b"):
        kube.gpu_node(n, gpus(n, "E2ESPR", 2))
    for i in range(4):
        kube.pod("spread", f"p{i}", {"nvidia.com/gpumem": "1000"},
                 annotations={**SPREAD, anno.NVIDIA_USE_GPUTYPE: "E2ESPR"})
        kube.wait_bound("spread", f"p{i}")  # one at a time: each sees the previous one's usage
    pods = [kube.get_pod("spread", f"p{i}") for i in range(4)]
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["spr-a", "spr-a", "spr-b", "spr-b"]
    assert len({allocation(p)[0][0][0] for p in pods}) == 4, "spread gives each pod its own card"


def test_gpu_only_pod_gets_an_exclusive_card(kube: Kube) -> None:
    kube.gpu_node("excl", gpus("excl", "E2EEXCL", 1, mem=24000))
    kube.pod("excl", "whole", {"nvidia.com/gpu": "1"}, annotations={anno.NVIDIA_USE_GPUTYPE: "E2EEXCL"})
    pod = kube.wait_bound("excl", "whole")
    assert allocation(pod) == [[("GPU-excl-0", 24000, 100)]]
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpucores"] == "100", "the webhook made the exclusive request explicit"
    kube.pod("excl", "slice", {"nvidia.com/gpumem": "100"}, annotations={anno.NVIDIA_USE_GPUTYPE: "E2EEXCL"})
    kube.wait_event("excl", "slice", "CardComputeUnitsExhausted")


def test_type_and_uuid_selectors(kube: Kube) -> None:
    kube.gpu_node("sel-t4", gpus("sel-t4", "E2E-T4", 2))
    kube.gpu_node("sel-h100", gpus("sel-h100", "E2E-H100", 2))
    kube.pod("sel", "by-type", {"nvidia.com/gpumem": "1000"}, annotations={anno.NVIDIA_USE_GPUTYPE: "e2e-h100"})
    kube.pod("sel", "by-uuid", {"nvidia.com/gpumem": "1000"}, annotations={anno.NVIDIA_USE_GPUUUID: "GPU-sel-t4-1"})
    kube.pod("sel", "not-type", {"nvidia.com/gpumem": "1000"},
             annotations={anno.NVIDIA_USE_GPUTYPE: "E2E-", anno.NVIDIA_NOUSE_GPUTYPE: "E2E-T4"})
    assert kube.wait_bound("sel", "by-type")["spec"]["nodeName"] == "sel-h100"
    assert allocation(kube.wait_bound("sel", "by-uuid"))[0][0][0] == "GPU-sel-t4-1"
    assert kube.wait_bound("sel", "not-type")["spec"]["nodeName"] == "sel-h100"


def test_multi_gpu_container_gets_distinct_cards(kube: Kube) -> None:
    kube.gpu_node("multi", gpus("multi", "E2EMULTI", 4, numa=(0, 0, 1, 1)))
    kube.pod("multi", "two", {"nvidia.com/gpu": "2", "nvidia.com/gpumem": "2000"},
             annotations={anno.NVIDIA_USE_GPUTYPE: "E2EMULTI", anno.NVIDIA_NUMA_BIND: "true"})
    [devices] = allocation(kube.wait_bound("multi", "two"))
    assert len({d[0] for d in devices}) == 2 and all(d[1] == 2000 for d in devices)
    numa = {"GPU-multi-0": 0, "GPU-multi-1": 0, "GPU-multi-2": 1, "GPU-multi-3": 1}
    assert len({numa[d[0]] for d in devices}) == 1, "numa-bind keeps both cards on one NUMA node"


def test_unschedulable_pod_stays_pending_with_an_event_naming_nodes(kube: Kube) -> None:
    kube.gpu_node("small-a", gpus("small-a", "E2ESMALL", 2, mem=8000))
    kube.gpu_node("small-b", gpus("small-b", "E2ESMALL", 1, mem=8000))
    kube.pod("pending", "huge", {"nvidia.com/gpumem": "9000"}, annotations={anno.NVIDIA_USE_GPUTYPE: "E2ESMALL"})
    ev = kube.wait_event("pending", "huge", "small-a")
    assert "small-b" in ev["message"] and "CardInsufficientMemory" in ev["message"]
    assert not kube.get_pod("pending", "huge")["spec"].get("nodeName")


def test_webhook_defaults_as_the_user_sees_them(kube: Kube) -> None:
    kube.gpu_node("hook", gpus("hook", "E2EHOOK", 1))
    created = kube.pod("hook", "defaults", {"nvidia.com/gpumem": "1000"},
                       annotations={anno.NVIDIA_USE_GPUTYPE: "E2EHOOK",
                                    anno.VGPU_DEVICES_ALLOCATED: "GPU-forged,NVIDIA,1,0:;"})
    assert created["spec"]["schedulerName"] == "hami-scheduler"
    assert created["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert anno.VGPU_DEVICES_ALLOCATED not in created["metadata"].get("annotations", {}), "forgery removed"
    assert allocation(kube.wait_bound("hook", "defaults"))[0][0][0] == "GPU-hook-0"
    plain = kube.pod("hook", "no-gpu", {"cpu": "1"})
    assert plain["spec"]["schedulerName"] == "default-scheduler", "pods without devices pass untouched"
    ignored = kube.pod("hook", "ignored", {"nvidia.com/gpumem": "1000"}, labels={"hami.io/webhook": "ignore"})
    assert ignored["spec"]["schedulerName"] == "default-scheduler"


@pytest.mark.parametrize(("limits", "extra", "message"), [
    ({"nvidia.com/gpumem-percentage": "150"}, {}, "gpumem-percentage"),
    ({"nvidia.com/gpumem": "-5"}, {}, "nvidia.com/gpumem"),
    ({"nvidia.com/gpumem": "1000"}, {"privileged": True}, "privileged"),
    ({"nvidia.com/gpumem": "1000"}, {"nodeName": "hook"}, "nodeName"),
])
def test_webhook_rejections_as_the_user_sees_them(kube: Kube, limits: dict[str, str], extra: dict[str, object],
                                                  message: str) -> None:
    container = {"name": "main", "image": "cuda", "resources": {"limits": limits}}
    spec: dict[str, object] = {}
    if extra.get("privileged"):
        container["securityContext"] = {"privileged": True}
    if "nodeName" in extra:
        spec["nodeName"] = extra["nodeName"]
    r = kube.submit("reject", "bad", containers=[container], extra_spec=spec)
    assert r.status_code in (400, 403, 422), r.text
    body = r.json()
    assert "admission webhook" in body["message"] and message in body["message"]
