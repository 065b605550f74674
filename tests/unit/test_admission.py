"""Admission: the JSON Patch for device pods, denials, idempotence, and our small RFC 6902 applier."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hami.admission import admit, apply_patch, escape_pointer
from hami.protocol.manifests import pod_request
from hami.resources import ContainerRequest, DeviceRequest, HamiError
from hami.vendors.nvidia import NvidiaVendor

VENDORS = (NvidiaVendor(),)


def gpu_pod(**limits: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "annotations": {}},
        "spec": {"containers": [
            {"name": "main", "resources": {"limits": {k.replace("_", "/"): v for k, v in limits.items()}}},
            {"name": "logger"},
        ]},
    }


def test_memory_only_pod() -> None:
    pod = gpu_pod(**{"nvidia.com_gpumem": "3000"})
    assert admit(pod, VENDORS) == [
        {"op": "add", "path": "/spec/schedulerName", "value": "hami-scheduler"},
        {"op": "add", "path": "/spec/containers/0/resources/limits/nvidia.com~1gpu", "value": "1"},
    ]


def test_exclusive_pod_gets_cores_and_existing_scheduler_is_replaced() -> None:
    pod = gpu_pod(**{"nvidia.com_gpu": "2"})
    pod["spec"]["schedulerName"] = "default-scheduler"
    assert admit(pod, VENDORS, scheduler_name="gpu-sched") == [
        {"op": "replace", "path": "/spec/schedulerName", "value": "gpu-sched"},
        {"op": "add", "path": "/spec/containers/0/resources/limits/nvidia.com~1gpucores", "value": "100"},
    ]


def test_missing_resources_and_limits_maps_are_created() -> None:
    pod = {"metadata": {"name": "p"}, "spec": {
        "initContainers": [{"name": "i", "resources": {"requests": {"nvidia.com/gpumem": "10"},
                                                         "limits": None}}],
        "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
    ops = admit(pod, VENDORS)
    assert ops[1:] == [
        {"op": "add", "path": "/spec/initContainers/0/resources/limits", "value": {"nvidia.com/gpu": "1"}},
        {"op": "add", "path": "/spec/containers/0/resources/limits/nvidia.com~1gpucores", "value": "100"},
    ]
    pod["spec"]["initContainers"][0]["resources"] = None
    pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpucores"] = "10"
    assert admit(pod, VENDORS)[1:] == []  # the init container asks for nothing any more


def test_explicit_request_needs_only_the_scheduler_name() -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "a", "resources": {"limits": {"nvidia.com/gpu": "1", "nvidia.com/gpucores": "50"}}}]}}
    assert admit(pod, VENDORS) == [{"op": "add", "path": "/spec/schedulerName", "value": "hami-scheduler"}]


def test_forged_annotations_are_removed() -> None:
    pod = gpu_pod(**{"nvidia.com_gpu": "1", "nvidia.com_gpucores": "20"})
    pod["spec"]["schedulerName"] = "hami-scheduler"
    pod["metadata"]["annotations"] = {
        "hami.io/vgpu-devices-allocated": "GPU-x,NVIDIA,1,0:;", "hami.io/vgpu-devices-to-allocate": ";",
        "hami.io/vgpu-node": "n1", "hami.io/bind-phase": "success", "hami.io/vgpu-time": "1",
        "hami.io/bind-time": "1", "hami.io/cambricon-devices-allocated": "x",
        "nvidia.com/use-gputype": "A100", "team": "ml",
    }
    assert admit(pod, VENDORS) == [
        {"op": "remove", "path": f"/metadata/annotations/hami.io~1{name}"}
        for name in ("bind-phase", "bind-time", "cambricon-devices-allocated", "vgpu-devices-allocated",
                     "vgpu-devices-to-allocate", "vgpu-node", "vgpu-time")
    ]


@pytest.mark.parametrize("mutate", [
    lambda p: p["spec"]["containers"][0]["resources"].clear(),  # no managed resource
    lambda p: p["metadata"].update(labels={"hami.io/webhook": "ignore"}),
    lambda p: p["spec"].update(schedulerName="volcano"),
    lambda p: p["spec"]["containers"][0]["resources"]["limits"].update({"nvidia.com/gpu": "0"}),
])
def test_pods_left_alone(mutate: Any) -> None:
    """Not made ours, but a forged allocation annotation goes whatever the (tenant-set) label or scheduler."""
    pod = gpu_pod(**{"nvidia.com_gpu": "1"})
    mutate(pod)
    assert admit(pod, VENDORS) == []
    pod["metadata"]["annotations"]["hami.io/vgpu-node"] = "n1"
    assert admit(pod, VENDORS) == [{"op": "remove", "path": "/metadata/annotations/hami.io~1vgpu-node"}]


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda p: p["spec"]["containers"][0]["resources"]["limits"].update({"nvidia.com/gpumem-percentage": "0"}),
     "spec.containers[0].resources.limits[nvidia.com/gpumem-percentage]"),
    (lambda p: p["spec"]["containers"][0]["resources"]["limits"].update({"nvidia.com/gpumem-percentage": "150"}),
     "spec.containers[0].resources.limits[nvidia.com/gpumem-percentage]"),
    (lambda p: p["spec"]["containers"][0]["resources"]["limits"].update({"nvidia.com/gpumem": "-1"}),
     "spec.containers[0].resources.limits[nvidia.com/gpumem]"),
    (lambda p: p["spec"]["containers"][0].update(securityContext={"privileged": True}),
     "spec.containers[0].securityContext.privileged"),
    # As in HAMi, a privileged container anywhere in a device pod is refused: it sees every device.
    (lambda p: p["spec"]["containers"][1].update(securityContext={"privileged": True}),
     "spec.containers[1].securityContext.privileged"),
    (lambda p: p["spec"].update(nodeName="n1"), "spec.nodeName"),
])
def test_denials(mutate: Any, field: str) -> None:
    pod = gpu_pod(**{"nvidia.com_gpu": "1"})
    mutate(pod)
    with pytest.raises(HamiError) as err:
        admit(pod, VENDORS)
    assert err.value.field == field


def test_privileged_and_preset_node_fine_without_devices() -> None:
    pod = gpu_pod()
    pod["spec"]["nodeName"] = "n1"
    pod["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    assert admit(pod, VENDORS) == []


def test_apply_then_request_and_idempotence() -> None:
    pod = gpu_pod(**{"nvidia.com_gpumem-percentage": "100"})
    pod["metadata"]["annotations"]["hami.io/vgpu-node"] = "n1"
    before = copy.deepcopy(pod)
    patched = apply_patch(pod, admit(pod, VENDORS))
    assert pod == before  # apply_patch copies
    assert patched["spec"]["schedulerName"] == "hami-scheduler"
    assert patched["metadata"]["annotations"] == {}
    assert patched["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpumem-percentage": "100", "nvidia.com/gpu": "1", "nvidia.com/gpucores": "100"}
    assert pod_request(patched, VENDORS).containers == (
        ContainerRequest("main", (DeviceRequest("NVIDIA", 1, memory_pct=100, cores=100),)),
        ContainerRequest("logger"),
    )
    assert pod_request(patched, VENDORS) == pod_request(pod, VENDORS)
    assert admit(patched, VENDORS) == []


_VALUE = st.one_of(st.none(), st.sampled_from(["0", "1", "2", "50", "100", "3000", "4Gi"]))


@given(gpu=_VALUE, mem=_VALUE, pct=_VALUE, cores=_VALUE, init=st.booleans(), forged=st.booleans())
def test_admit_apply_admit_is_empty(gpu: str | None, mem: str | None, pct: str | None, cores: str | None,
                                    init: bool, forged: bool) -> None:
    limits = {k: v for k, v in {"nvidia.com/gpu": gpu, "nvidia.com/gpumem": mem,
                                "nvidia.com/gpumem-percentage": pct, "nvidia.com/gpucores": cores}.items()
              if v is not None}
    pod: dict[str, Any] = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}
    key = "initContainers" if init else "containers"
    pod["spec"].setdefault(key, []).insert(0, {"name": "d", "resources": {"limits": limits}})
    if forged:
        pod["metadata"]["annotations"] = {"hami.io/vgpu-devices-allocated": ";"}
    try:
        ops = admit(pod, VENDORS)
    except HamiError:
        return
    patched = apply_patch(pod, ops)
    assert admit(patched, VENDORS) == []
    assert pod_request(patched, VENDORS) == pod_request(pod, VENDORS)


# --- apply_patch ------------------------------------------------------------------------------------------


def test_apply_patch_operations() -> None:
    doc = {"a": {"b/c": 1, "d~e": 2}, "l": [1, 2]}
    ops = [
        {"op": "add", "path": "/a/new", "value": {"x": [1]}},
        {"op": "replace", "path": "/a/b~1c", "value": 10},
        {"op": "remove", "path": "/a/d~0e"},
        {"op": "add", "path": "/l/-", "value": 3},
        {"op": "add", "path": "/l/0", "value": 0},
        {"op": "replace", "path": "/l/1", "value": 11},
        {"op": "remove", "path": "/l/2"},
        {"op": "add", "path": "/a/new/x/1", "value": 2},
    ]
    assert apply_patch(doc, ops) == {"a": {"b/c": 10, "new": {"x": [1, 2]}}, "l": [0, 11, 3]}
    assert doc == {"a": {"b/c": 1, "d~e": 2}, "l": [1, 2]}


@pytest.mark.parametrize("op", [
    {"op": "replace", "path": "/missing", "value": 1},
    {"op": "remove", "path": "/missing"},
    {"op": "add", "path": "/x/y", "value": 1},
    {"op": "add", "path": "/l/5", "value": 1},
    {"op": "add", "path": "/l/01", "value": 1},
    {"op": "remove", "path": "/l/-"},
    {"op": "add", "path": "no-slash", "value": 1},
    {"op": "add", "path": "", "value": 1},
    {"op": "add", "path": "/a"},
    {"op": "move", "from": "/a", "path": "/b"},
    {"op": "add", "path": "/s/x", "value": 1},
    {"op": "add"},
])
def test_apply_patch_errors(op: dict[str, Any]) -> None:
    with pytest.raises(HamiError) as err:
        apply_patch({"a": 1, "l": [1], "s": "str"}, [op])
    assert err.value.field == "patch[0]"


def test_escape_pointer() -> None:
    assert escape_pointer("nvidia.com/gpu") == "nvidia.com~1gpu"
    assert escape_pointer("a~/b") == "a~0~1b"
