"""Discovery backends: the fake devices file, and NVML driven by a stand-in for pynvml."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from hami.agent.discovery import DiscoveryError
from hami.agent.fake import FakeBackend, load_fake_spec, parse_fake_spec
from hami.agent.nvml import NvmlBackend, normalize_bus_id, numa_from_sysfs
from hami.resources import HamiError
from tests.agent_support import GPU0, GPU1, GPU2, spec

# --- fake ------------------------------------------------------------------------------------------------


def test_fake_spec_defaults_and_pair_scores() -> None:
    inv = spec().inventory
    assert [d.uuid for d in inv.devices] == [GPU0, GPU1, GPU2]
    assert [d.index for d in inv.devices] == [0, 1, 2]
    assert all(d.healthy and not d.mig_capable for d in inv.devices)
    scores = {(a, b): s for a, b, s in inv.links}
    assert scores[(GPU0, GPU1)] == scores[(GPU1, GPU0)] == 220  # 2 NVLinks + PCIe on one CPU
    assert scores[(GPU0, GPU2)] == 10  # across CPUs, no NVLink
    assert len(inv.links) == 6


@pytest.mark.parametrize(("doc", "field"), [
    ({"devices": [{"model": "T4", "memory_mib": 1}]}, "devices[0].uuid"),
    ({"devices": [{"uuid": "GPU-a", "memory_mib": 1}]}, "devices[0].model"),
    ({"devices": [{"uuid": "GPU-a", "model": "T4", "memory_mib": "lots"}]}, "devices[0].memory_mib"),
    ({"devices": [{"uuid": "GPU-a,b", "model": "T4", "memory_mib": 1}]}, "devices[0].uuid"),
    ({"devices": [{"uuid": "GPU-a", "model": "T4", "memory_mib": 1, "colour": "red"}]}, "devices[0]"),
    ({"devices": [{"uuid": "GPU-a", "model": "T4", "memory_mib": 1},
                  {"uuid": "GPU-a", "model": "T4", "memory_mib": 1}]}, "devices[1].uuid"),
    ({"devices": [{"uuid": "GPU-a", "model": "T4", "memory_mib": 1, "nvlinks": {"GPU-z": 1}}]}, "nvlinks"),
    ({"devices": [{"uuid": "GPU-a", "model": "T4", "memory_mib": 1, "nvlinks": {"GPU-b": 1}},
                  {"uuid": "GPU-b", "model": "T4", "memory_mib": 1, "nvlinks": {"GPU-a": 2}}]}, "nvlinks"),
    ({"devices": [{"uuid": "GPU-a", "model": "T4", "memory_mib": 1}],
      "failures": [{"uuid": "GPU-x"}]}, "failures[0].uuid"),
    ({"devices": [{"uuid": "GPU-a", "model": "T4", "memory_mib": 1}],
      "failures": [{"uuid": "GPU-a", "after_s": -1}]}, "failures[0].after_s"),
    ({"gpus": []}, "f"),
])
def test_fake_spec_errors_name_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(HamiError) as info:
        parse_fake_spec(doc, "f")
    assert field in info.value.field


def test_fake_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match="cannot read"):
        load_fake_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices: [")
    with pytest.raises(HamiError, match="not valid YAML"):
        load_fake_spec(bad)


async def test_fake_health_scheduled_and_injected() -> None:
    doc = yaml.safe_load(f"""
devices: [{{uuid: {GPU0}, model: T4, memory_mib: 1}}, {{uuid: {GPU1}, model: T4, memory_mib: 1}}]
failures: [{{uuid: {GPU1}, after_s: 0.05, reason: XID 79}}]
""")
    backend = FakeBackend(parse_fake_spec(doc))
    stream = backend.health_changes()
    backend.inject(GPU0, False, "test")
    first = await asyncio.wait_for(anext(stream), 1)
    assert (first.uuid, first.healthy, first.reason) == (GPU0, False, "test")
    second = await asyncio.wait_for(anext(stream), 1)
    assert (second.uuid, second.healthy, second.reason) == (GPU1, False, "XID 79")
    with pytest.raises(KeyError):
        backend.inject("GPU-unknown", False)
    backend.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), 1)


# --- NVML --------------------------------------------------------------------------------------------------


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_Timeout(NVMLError):
    pass


class NVMLError_GpuIsLost(NVMLError):
    pass


class FakeNvml:
    """The slice of pynvml the backend uses: two V100s linked by 2 NVLinks plus an old card without MIG/NVLink."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_Timeout = NVMLError_Timeout
    NVMLError_GpuIsLost = NVMLError_GpuIsLost
    NVML_NVLINK_MAX_LINKS = 4
    NVML_FEATURE_ENABLED = 1
    nvmlEventTypeXidCriticalError = 8
    nvmlEventTypeDoubleBitEccError = 2
    nvmlEventTypeSingleBitEccError = 1

    def __init__(self, *, driver: bool = True) -> None:
        self.driver = driver
        self.cards = [
            {"uuid": b"GPU-a", "name": b"Tesla V100-SXM2-32GB", "bus": b"00000000:3B:00.0", "mem": 32 << 30,
             "mig": False, "links": {0: "00000000:86:00.0", 1: "00000000:86:00.0", 2: "00000000:FF:00.0"}},
            {"uuid": "GPU-b", "name": "Tesla V100-SXM2-32GB", "bus": "00000000:86:00.0", "mem": 32 << 30,
             "mig": False, "links": {0: "00000000:3B:00.0", 1: "00000000:3B:00.0"}},
            {"uuid": "GPU-c", "name": "NVIDIA A100 80GB PCIe", "bus": "00000000:AF:00.0", "mem": 80 << 30,
             "mig": True, "links": None},
        ]
        self.events: list[Any] = []
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if not self.driver:
            raise NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetIndex(self, h: int) -> int:
        return h

    def nvmlDeviceGetUUID(self, h: int) -> Any:
        return self.cards[h]["uuid"]

    def nvmlDeviceGetName(self, h: int) -> Any:
        return self.cards[h]["name"]

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        return SimpleNamespace(busId=self.cards[h]["bus"])

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(total=self.cards[h]["mem"])

    def nvmlDeviceGetMigMode(self, h: int) -> list[int]:
        if not self.cards[h]["mig"]:
            raise NVMLError_NotSupported("Not Supported")
        return [0, 0]

    def nvmlDeviceGetNvLinkState(self, h: int, link: int) -> int:
        links = self.cards[h]["links"]
        if links is None:
            raise NVMLError_NotSupported("Not Supported")
        if link not in links:
            raise NVMLError("Invalid Argument")
        return 1

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: int, link: int) -> Any:
        return SimpleNamespace(busId=self.cards[h]["links"][link])

    def nvmlDeviceGetTopologyCommonAncestor(self, a: int, b: int) -> int:
        return 40 if {a, b} == {0, 1} else 50  # same CPU / across CPUs

    def nvmlEventSetCreate(self) -> str:
        return "set"

    def nvmlDeviceGetSupportedEventTypes(self, h: int) -> int:
        return 0xFF

    def nvmlDeviceRegisterEvents(self, h: int, kinds: int, event_set: str) -> None:
        pass

    def nvmlEventSetWait(self, event_set: str, timeout_ms: int) -> Any:
        if self.events:
            return self.events.pop(0)
        raise NVMLError_Timeout("Timeout")

    def nvmlEventSetFree(self, event_set: str) -> None:
        pass


def test_bus_id_and_sysfs_numa(tmp_path: Path) -> None:
    assert normalize_bus_id("00000000:3B:00.0") == "0000:3b:00.0"
    assert normalize_bus_id("0000:3b:00.0") == "0000:3b:00.0"
    pci = tmp_path / "bus" / "pci" / "devices"
    (pci / "0000:3b:00.0").mkdir(parents=True)
    (pci / "0000:3b:00.0" / "numa_node").write_text("1\n")
    (pci / "0000:86:00.0").mkdir(parents=True)
    (pci / "0000:86:00.0" / "numa_node").write_text("-1\n")
    assert numa_from_sysfs("00000000:3B:00.0", tmp_path) == 1
    assert numa_from_sysfs("00000000:86:00.0", tmp_path) == -1
    assert numa_from_sysfs("00000000:AF:00.0", tmp_path) == -1


def test_nvml_discovery(tmp_path: Path) -> None:
    pci = tmp_path / "bus" / "pci" / "devices" / "0000:3b:00.0"
    pci.mkdir(parents=True)
    (pci / "numa_node").write_text("0")
    nv = FakeNvml()
    backend = NvmlBackend(nv, sysfs_root=tmp_path)
    inv = backend.discover()
    assert [(d.uuid, d.index, d.model, d.memory_mib, d.numa, d.mig_capable) for d in inv.devices] == [
        ("GPU-a", 0, "Tesla V100-SXM2-32GB", 32768, 0, False),
        ("GPU-b", 1, "Tesla V100-SXM2-32GB", 32768, -1, False),
        ("GPU-c", 2, "NVIDIA A100 80GB PCIe", 81920, -1, True),
    ]
    scores = {(a, b): s for a, b, s in inv.links}
    assert scores[("GPU-a", "GPU-b")] == scores[("GPU-b", "GPU-a")] == 220  # same CPU (20) + 2 NVLinks
    assert scores[("GPU-a", "GPU-c")] == 10
    backend.close()
    assert nv.shutdowns == 1


def test_nvml_without_driver_is_a_clear_error() -> None:
    with pytest.raises(DiscoveryError, match="NVIDIA driver installed"):
        NvmlBackend(FakeNvml(driver=False)).discover()


def test_nvml_unified_memory_needs_preconfigured_memory() -> None:
    nv = FakeNvml()

    def no_memory(h: int) -> Any:
        raise NVMLError_NotSupported("Not Supported")

    nv.nvmlDeviceGetMemoryInfo = no_memory  # type: ignore[method-assign]
    assert NvmlBackend(nv).discover().devices == ()
    assert {d.memory_mib for d in NvmlBackend(nv, preconfigured_memory_mib=122880).discover().devices} == {122880}


async def test_nvml_health_events_skip_application_xids() -> None:
    nv = FakeNvml()
    nv.events = [SimpleNamespace(eventType=8, eventData=13, device=0),  # application fault: ignored
                 SimpleNamespace(eventType=1, eventData=0, device=0),  # single-bit ECC: ignored
                 SimpleNamespace(eventType=8, eventData=79, device=1)]  # fell off the bus
    backend = NvmlBackend(nv, event_timeout_ms=10)
    stream = backend.health_changes()
    change = await asyncio.wait_for(anext(stream), 2)
    assert (change.uuid, change.healthy, change.reason) == ("GPU-b", False, "XID 79")
    backend.close()
