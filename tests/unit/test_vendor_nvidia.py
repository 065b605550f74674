"""NVIDIA vendor: SPEC §1 requests, admission defaults, selectors, registration; the vendor registry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hami.resources import Device, DeviceRequest, DeviceSelector, HamiError
from hami.vendors import registry
from hami.vendors.nvidia import NvidiaConfig, NvidiaVendor

NV = NvidiaVendor()
P = "spec.containers[0].resources"


def req(count: int, mem: int = 0, pct: int = 0, cores: int = 0, priority: int | None = None) -> DeviceRequest:
    return DeviceRequest("NVIDIA", count, memory_mib=mem, memory_pct=pct, cores=cores, priority=priority)


@pytest.mark.parametrize(("limits", "expected", "defaults"), [
    # gpu alone: whole card memory and, being neither memory- nor core-limited, exclusive.
    ({"nvidia.com/gpu": "1"}, req(1, pct=100, cores=100), {"nvidia.com/gpucores": "100"}),
    ({"nvidia.com/gpu": 2, "nvidia.com/gpumem": "3000"}, req(2, mem=3000), {}),
    ({"nvidia.com/gpumem": "3000"}, req(1, mem=3000), {"nvidia.com/gpu": "1"}),
    ({"nvidia.com/gpucores": "30"}, req(1, pct=100, cores=30), {"nvidia.com/gpu": "1"}),
    ({"nvidia.com/gpumem-percentage": "50"}, req(1, pct=50), {"nvidia.com/gpu": "1"}),
    ({"nvidia.com/gpumem-percentage": "100"}, req(1, pct=100, cores=100),
     {"nvidia.com/gpu": "1", "nvidia.com/gpucores": "100"}),
    ({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "0"}, req(1, pct=100, cores=100),
     {"nvidia.com/gpucores": "100"}),
    # percentage only counts when gpumem is absent
    ({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4Ki", "nvidia.com/gpumem-percentage": "100"},
     req(1, mem=4096), {}),
    ({"nvidia.com/gpu": "1", "nvidia.com/gpucores": "0"}, req(1, pct=100), {}),
    ({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1000", "nvidia.com/priority": "1"},
     req(1, mem=1000, priority=1), {}),
    ({"nvidia.com/gpu": "0"}, None, {}),
    ({"cpu": "1", "memory": "1Gi"}, None, {}),
    ({}, None, {}),
])
def test_container_request_and_defaults(limits: dict[str, Any], expected: DeviceRequest | None,
                                        defaults: dict[str, str]) -> None:
    for resources in ({"limits": limits}, limits):  # a container's resources, or a bare limits map
        assert NV.container_request(resources, P) == expected
        assert NV.default_resources(resources, P) == defaults
    explicit = {"limits": {**limits, **defaults}}
    assert NV.container_request(explicit, P) == expected
    assert NV.default_resources(explicit, P) == {}


def test_requests_stand_in_for_missing_limits() -> None:
    resources = {"requests": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "2000"}, "limits": {"cpu": "1"}}
    assert NV.container_request(resources, P) == req(1, mem=2000)
    resources = {"requests": {"nvidia.com/gpumem": "1"}, "limits": {"nvidia.com/gpumem": "2000"}}
    assert NV.container_request(resources, P) == req(1, mem=2000)


def test_configured_defaults() -> None:
    vendor = NvidiaVendor(NvidiaConfig(default_memory_mib=4000, default_cores=20, default_gpu_count=2))
    # HAMi: no memory in the spec still means a whole card (exclusive), even with a default memory.
    assert vendor.container_request({"nvidia.com/gpu": "1"}, P) == req(1, mem=4000, cores=100)
    assert vendor.container_request({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1000"}, P) == req(
        1, mem=1000, cores=20)
    assert vendor.container_request({"nvidia.com/gpumem-percentage": "30"}, P) == req(2, pct=30, cores=20)
    assert vendor.default_resources({"nvidia.com/gpumem-percentage": "30"}, P) == {"nvidia.com/gpu": "2"}


def test_custom_resource_names() -> None:
    vendor = NvidiaVendor(NvidiaConfig(resource_count="hami.io/vgpu", resource_memory="hami.io/vmem"))
    assert vendor.container_request({"hami.io/vgpu": "1", "hami.io/vmem": "100"}, P) == req(1, mem=100)
    assert "hami.io/vgpu" in vendor.resource_names()
    assert vendor.container_request({"nvidia.com/gpu": "1"}, P) is None


@pytest.mark.parametrize(("limits", "field"), [
    ({"nvidia.com/gpumem-percentage": "0"}, f"{P}.limits[nvidia.com/gpumem-percentage]"),
    ({"nvidia.com/gpumem-percentage": "101"}, f"{P}.limits[nvidia.com/gpumem-percentage]"),
    ({"nvidia.com/gpu": "1", "nvidia.com/gpucores": "101"}, f"{P}.limits[nvidia.com/gpucores]"),
    ({"nvidia.com/gpu": "1", "nvidia.com/gpucores": "-1"}, f"{P}.limits[nvidia.com/gpucores]"),
    ({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "-1"}, f"{P}.limits[nvidia.com/gpumem]"),
    ({"nvidia.com/gpu": "-1"}, f"{P}.limits[nvidia.com/gpu]"),
    ({"nvidia.com/gpu": "0", "nvidia.com/gpumem": "1000"}, f"{P}.limits[nvidia.com/gpu]"),
    ({"nvidia.com/gpu": "one"}, f"{P}.limits[nvidia.com/gpu]"),
    ({"nvidia.com/gpu": ["1"]}, f"{P}.limits[nvidia.com/gpu]"),
])
def test_invalid_requests_name_the_field(limits: dict[str, Any], field: str) -> None:
    for method in (NV.container_request, NV.default_resources):
        with pytest.raises(HamiError) as err:
            method({"limits": limits}, P)
        assert err.value.field == field


def test_no_default_gpu_count_makes_share_only_request_an_error() -> None:
    vendor = NvidiaVendor(NvidiaConfig(default_gpu_count=0))
    with pytest.raises(HamiError) as err:
        vendor.container_request({"limits": {"nvidia.com/gpumem": "100"}}, P)
    assert err.value.field == f"{P}.limits[nvidia.com/gpumem]"


def test_malformed_resources_shape() -> None:
    with pytest.raises(HamiError) as err:
        NV.container_request({"limits": ["nvidia.com/gpu"]}, P)
    assert err.value.field == f"{P}.limits"


_QTY = st.one_of(st.none(), st.integers(-2, 120).map(str), st.integers(0, 100_000))


@given(gpu=_QTY, mem=_QTY, pct=_QTY, cores=_QTY, in_requests=st.booleans())
def test_defaults_are_consistent_with_requests(gpu: Any, mem: Any, pct: Any, cores: Any,
                                               in_requests: bool) -> None:
    values = {"nvidia.com/gpu": gpu, "nvidia.com/gpumem": mem, "nvidia.com/gpumem-percentage": pct,
              "nvidia.com/gpucores": cores}
    given_ = {k: v for k, v in values.items() if v is not None}
    resources: dict[str, Any] = {"requests": given_, "limits": {}} if in_requests else {"limits": given_}
    try:
        request = NV.container_request(resources, P)
    except HamiError:
        with pytest.raises(HamiError):
            NV.default_resources(resources, P)
        return
    defaults = NV.default_resources(resources, P)
    patched = {**resources, "limits": {**resources["limits"], **defaults}}
    assert NV.container_request(patched, P) == request
    assert NV.default_resources(patched, P) == {}
    if request is not None:
        assert request.count >= 1
        assert bool(request.memory_mib) != bool(request.memory_pct)


def test_selector() -> None:
    annotations = {
        "nvidia.com/use-gputype": "A100, H100,",
        "nvidia.com/nouse-gputype": "MIG",
        "nvidia.com/use-gpuuuid": "GPU-a,GPU-b",
        "nvidia.com/nouse-gpuuuid": "GPU-c",
        "nvidia.com/numa-bind": "true",
        "nvidia.com/vgpu-mode": "MIG",
        "unrelated": "x",
    }
    assert NV.selector(annotations) == DeviceSelector(
        use_types=("A100", "H100"), nouse_types=("MIG",), use_uuids=("GPU-a", "GPU-b"),
        nouse_uuids=("GPU-c",), numa_bind=True, mode="mig",
    )
    assert NV.selector({}) == DeviceSelector()
    assert NV.selector({"nvidia.com/numa-bind": "1"}).numa_bind
    assert not NV.selector({"nvidia.com/numa-bind": "false"}).numa_bind
    assert NV.selector({"nvidia.com/vgpu-mode": " "}).mode is None


@pytest.mark.parametrize(("annotations", "field"), [
    ({"nvidia.com/vgpu-mode": "mps-ish"}, "metadata.annotations[nvidia.com/vgpu-mode]"),
    ({"nvidia.com/numa-bind": "yes"}, "metadata.annotations[nvidia.com/numa-bind]"),
])
def test_selector_errors(annotations: dict[str, str], field: str) -> None:
    with pytest.raises(HamiError) as err:
        NV.selector(annotations)
    assert err.value.field == field


def test_node_devices() -> None:
    text = '[{"id":"GPU-a","count":10,"devmem":16384,"devcore":100,"type":"NVIDIA-Tesla T4","health":true}]'
    assert NV.node_devices({"hami.io/node-nvidia-register": text}, "n1") == (
        Device("GPU-a", 0, 10, 16384, 100, "NVIDIA-Tesla T4"),)
    assert NV.node_devices({}, "n1") == ()
    with pytest.raises(HamiError) as err:
        NV.node_devices({"hami.io/node-nvidia-register": '[{"id":"GPU-a","count":"ten"}]'}, "n1")
    assert err.value.field == "node/n1 hami.io/node-nvidia-register[0].count"


def test_vendor_identity() -> None:
    assert NV.name == "NVIDIA"
    assert NV.annotations.allocated == "hami.io/vgpu-devices-allocated"
    assert NV.annotations.to_allocate == "hami.io/vgpu-devices-to-allocate"
    assert NV.annotations.register == "hami.io/node-nvidia-register"
    assert NV.annotations.handshake == "hami.io/node-handshake"
    assert NV.resource_names() == frozenset({"nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpucores",
                                             "nvidia.com/gpumem-percentage", "nvidia.com/priority"})


# --- registry ---------------------------------------------------------------------------------------------


class AcmeVendor(NvidiaVendor):
    def __init__(self) -> None:
        super().__init__(NvidiaConfig(resource_count="acme.com/npu", resource_memory="acme.com/npumem",
                                      resource_memory_percentage="acme.com/pct", resource_cores="acme.com/core",
                                      resource_priority="acme.com/prio"))
        self.name = "ACME"


class FakeEntryPoint:
    def __init__(self, name: str, obj: object) -> None:
        self.name, self.value, self._obj = name, f"tests:{name}", obj

    def load(self) -> object:
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeEntryPoint]]:
    found: list[FakeEntryPoint] = []
    monkeypatch.setattr(registry, "entry_points", lambda group: found if group == "hami.vendors" else [])
    registry.default_vendors.cache_clear()
    yield found
    registry.default_vendors.cache_clear()


def test_default_vendors_is_nvidia(entry_points: list[FakeEntryPoint]) -> None:
    (vendor,) = registry.default_vendors()
    assert vendor.name == "NVIDIA"
    assert registry.vendor_for_resource("nvidia.com/gpumem") is vendor
    assert registry.vendor_for_resource("cpu") is None
    assert "nvidia.com/gpucores" in registry.managed_resources()


def test_entry_point_vendors(entry_points: list[FakeEntryPoint]) -> None:
    entry_points += [FakeEntryPoint("acme", AcmeVendor), FakeEntryPoint("acme-instance", AcmeVendor()),
                     FakeEntryPoint("nvidia-again", NvidiaVendor)]
    vendors = registry.default_vendors()
    assert [v.name for v in vendors] == ["NVIDIA", "ACME"]
    found = registry.vendor_for_resource("acme.com/npu")
    assert found is not None and found.name == "ACME"


@pytest.mark.parametrize("obj", [ImportError("no module acme"), 42, lambda: "not a vendor"])
def test_broken_entry_point_is_an_error(entry_points: list[FakeEntryPoint], obj: object) -> None:
    entry_points.append(FakeEntryPoint("broken", obj))
    with pytest.raises(HamiError) as err:
        registry.default_vendors()
    assert err.value.field == "entry point hami.vendors:broken"
