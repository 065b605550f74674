"""The NVML discovery backend (nvidia-ml-py): devices, NUMA, MIG capability, pair topology, XID health.

It follows what HAMi's device plugin reads, so a node registers the same whichever agent runs on it:
UUID, index, product name and total memory from NVML; the NUMA node from sysfs by PCI bus id (HAMi's
GetNumaNode); pair scores from the PCIe common ancestor plus 100 per active NVLink (HAMi's
CalculateGPUScore); health from NVML critical-XID and ECC events, ignoring the XIDs that application
faults raise (as NVIDIA's and HAMi's plugins do).

The `nvml` module is a parameter so the logic is testable without a GPU; production passes `pynvml`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from hami.agent.discovery import (
    PCIE_CROSS_CPU,
    PCIE_HOST_BRIDGE,
    PCIE_MULTI_SWITCH,
    PCIE_SAME_BOARD,
    PCIE_SAME_CPU,
    PCIE_SINGLE_SWITCH,
    DiscoveredDevice,
    DiscoveryError,
    HealthChange,
    Inventory,
    pair_score,
)

_log = logging.getLogger(__name__)

# XIDs caused by the application, not the card (NVIDIA k8s-device-plugin's default skip list).
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})

# nvmlGpuTopologyLevel_t → HAMi's PCIe pair score.
_TOPOLOGY_SCORE = {0: PCIE_SAME_BOARD, 10: PCIE_SINGLE_SWITCH, 20: PCIE_MULTI_SWITCH, 30: PCIE_HOST_BRIDGE,
                   40: PCIE_SAME_CPU, 50: PCIE_CROSS_CPU}

_NO_DRIVER_HINT = ("is the NVIDIA driver installed on the node, and does this container see it (the nvidia "
                   "container runtime, or /dev/nvidia* and libnvidia-ml.so.1 mounted)? Use --backend fake on "
                   "nodes without GPUs")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def normalize_bus_id(bus_id: str) -> str:
    """NVML's `00000000:3B:00.0` → sysfs's `0000:3b:00.0` (HAMi drops the leading four zeros)."""
    text = bus_id.strip().lower()
    if len(text.split(":")[0]) == 8 and text.startswith("0000"):
        text = text[4:]
    return text


def numa_from_sysfs(bus_id: str, sysfs_root: Path = Path("/sys")) -> int:
    """The NUMA node of a PCI device, or -1 when sysfs does not say (single-socket machines report -1)."""
    path = sysfs_root / "bus" / "pci" / "devices" / normalize_bus_id(bus_id) / "numa_node"
    try:
        node = int(path.read_text().strip())
    except (OSError, ValueError):
        return -1
    return node if node >= 0 else -1


class NvmlBackend:
    """Discovery through NVML. NVML stays initialised until `close`, because health events need it."""

    name = "nvml"

    def __init__(self, nvml: Any = None, *, sysfs_root: Path = Path("/sys"),
                 skip_xids: Iterable[int] = APPLICATION_XIDS, preconfigured_memory_mib: int = 0,
                 event_timeout_ms: int = 5000) -> None:
        if nvml is None:
            try:
                import pynvml
            except ImportError as exc:  # it is a dependency, so this means a broken install
                raise DiscoveryError(f"nvidia-ml-py is not installed: {exc}") from None
            nvml = pynvml
        self.nvml = nvml
        self.sysfs_root = sysfs_root
        self.skip_xids = frozenset(skip_xids)
        self.preconfigured_memory_mib = preconfigured_memory_mib
        self.event_timeout_ms = event_timeout_ms
        self._initialised = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def _init(self) -> None:
        if self._initialised:
            return
        try:
            self.nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, _NoPermission, ...
            raise DiscoveryError(f"NVML is not available ({exc}): {_NO_DRIVER_HINT}") from None
        self._initialised = True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.event_timeout_ms / 1000 + 1)
            self._thread = None
        if self._initialised:
            try:
                self.nvml.nvmlShutdown()
            except Exception as exc:
                _log.warning("nvmlShutdown failed: %s", exc)
            self._initialised = False

    # -- discovery -------------------------------------------------------------------------------------
    def discover(self) -> Inventory:
        self._init()
        nv = self.nvml
        try:
            count = nv.nvmlDeviceGetCount()
        except nv.NVMLError as exc:
            raise DiscoveryError(f"NVML cannot count devices: {exc}") from None
        devices: list[DiscoveredDevice] = []
        handles: dict[str, Any] = {}
        bus_ids: dict[str, str] = {}
        for i in range(count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                uuid = _text(nv.nvmlDeviceGetUUID(handle))
                model = _text(nv.nvmlDeviceGetName(handle))
                bus_id = _text(nv.nvmlDeviceGetPciInfo(handle).busId)
            except nv.NVMLError as exc:
                # A device NVML cannot describe cannot be shared safely; skip it but say so.
                _log.error("GPU %d: NVML cannot describe it (%s); not registered", i, exc)
                continue
            memory_mib = self._memory_mib(handle, uuid)
            if memory_mib is None:
                continue
            devices.append(DiscoveredDevice(
                uuid=uuid, index=self._index(handle, i), model=model, memory_mib=memory_mib,
                numa=numa_from_sysfs(bus_id, self.sysfs_root), healthy=True,
                mig_capable=self._mig_capable(handle),
            ))
            handles[uuid] = handle
            bus_ids[normalize_bus_id(bus_id)] = uuid
        return Inventory(tuple(devices), self._links(devices, handles, bus_ids))

    def _index(self, handle: Any, fallback: int) -> int:
        try:
            return int(self.nvml.nvmlDeviceGetIndex(handle))
        except self.nvml.NVMLError:
            return fallback

    def _memory_mib(self, handle: Any, uuid: str) -> int | None:
        nv = self.nvml
        try:
            return int(nv.nvmlDeviceGetMemoryInfo(handle).total) // (1 << 20)
        except nv.NVMLError_NotSupported:
            # Unified-memory parts (GB10/DGX Spark) have no device memory; HAMi's preConfiguredDeviceMemory.
            if self.preconfigured_memory_mib > 0:
                return self.preconfigured_memory_mib
            _log.error("%s: NVML reports no device memory (unified memory?) and no preconfigured memory "
                       "is set (nodeconfig preconfigureddevicememory); not registered", uuid)
            return None
        except nv.NVMLError as exc:
            _log.error("%s: cannot read memory (%s); not registered", uuid, exc)
            return None

    def _mig_capable(self, handle: Any) -> bool:
        try:
            self.nvml.nvmlDeviceGetMigMode(handle)
        except self.nvml.NVMLError:
            return False
        return True

    def _links(self, devices: list[DiscoveredDevice], handles: dict[str, Any],
               bus_ids: dict[str, str]) -> tuple[tuple[str, str, int], ...]:
        nv = self.nvml
        nvlinks: dict[tuple[str, str], int] = {}
        max_links = int(getattr(nv, "NVML_NVLINK_MAX_LINKS", 18))
        enabled = getattr(nv, "NVML_FEATURE_ENABLED", 1)
        for dev in devices:
            for link in range(max_links):
                try:
                    if nv.nvmlDeviceGetNvLinkState(handles[dev.uuid], link) != enabled:
                        continue
                    remote = normalize_bus_id(_text(nv.nvmlDeviceGetNvLinkRemotePciInfo(
                        handles[dev.uuid], link).busId))
                except nv.NVMLError_NotSupported:
                    break  # no NVLink on this card
                except nv.NVMLError:
                    continue  # link index beyond this card's links, or link down
                peer = bus_ids.get(remote)
                if peer is not None and peer != dev.uuid:  # NVSwitch and CPU links have no peer GPU here
                    nvlinks[(dev.uuid, peer)] = nvlinks.get((dev.uuid, peer), 0) + 1
        links: list[tuple[str, str, int]] = []
        for a in devices:
            for b in devices:
                if a.uuid == b.uuid:
                    continue
                try:
                    level = int(nv.nvmlDeviceGetTopologyCommonAncestor(handles[a.uuid], handles[b.uuid]))
                    pcie = _TOPOLOGY_SCORE.get(level, 0)
                except nv.NVMLError:
                    pcie = 0
                # NVLinks are bidirectional; take the smaller count if the two ends disagree (HAMi panics).
                count = min(nvlinks.get((a.uuid, b.uuid), 0), nvlinks.get((b.uuid, a.uuid), 0))
                links.append((a.uuid, b.uuid, pair_score(pcie, count)))
        return tuple(links)

    # -- health ----------------------------------------------------------------------------------------
    async def health_changes(self) -> AsyncIterator[HealthChange]:
        """NVML events, waited for on a thread and handed to the event loop."""
        self._init()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[HealthChange | None] = asyncio.Queue()

        def put(change: HealthChange | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, change)

        self._stop.clear()
        self._thread = threading.Thread(target=self._watch_events, args=(put,), name="nvml-health", daemon=True)
        self._thread.start()
        while True:
            change = await queue.get()
            if change is None:
                return
            yield change

    def _watch_events(self, put: Any) -> None:
        nv = self.nvml
        try:
            event_set = nv.nvmlEventSetCreate()
        except nv.NVMLError as exc:
            _log.error("NVML events unavailable (%s); device health is not watched", exc)
            put(None)
            return
        kinds = nv.nvmlEventTypeXidCriticalError | nv.nvmlEventTypeDoubleBitEccError | \
            nv.nvmlEventTypeSingleBitEccError
        watched: dict[int, str] = {}
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                uuid = _text(nv.nvmlDeviceGetUUID(handle))
                try:
                    supported = nv.nvmlDeviceGetSupportedEventTypes(handle)
                    nv.nvmlDeviceRegisterEvents(handle, kinds & supported, event_set)
                    watched[i] = uuid
                except nv.NVMLError as exc:
                    _log.warning("%s: health events not supported (%s); its health is not watched", uuid, exc)
            while not self._stop.is_set():
                try:
                    event = nv.nvmlEventSetWait(event_set, self.event_timeout_ms)
                except nv.NVMLError_Timeout:
                    continue
                except nv.NVMLError_GpuIsLost:
                    for uuid in watched.values():
                        put(HealthChange(uuid, False, "GPU is lost"))
                    continue
                except nv.NVMLError as exc:
                    _log.error("waiting for NVML events failed: %s", exc)
                    continue
                change = self._change_of(event)
                if change is not None:
                    put(change)
        finally:
            with contextlib.suppress(nv.NVMLError):
                nv.nvmlEventSetFree(event_set)
            put(None)

    def _change_of(self, event: Any) -> HealthChange | None:
        nv = self.nvml
        if event.eventType != nv.nvmlEventTypeXidCriticalError:
            return None  # ECC events alone do not make a card unusable
        xid = int(event.eventData)
        if xid in self.skip_xids:
            _log.info("XID %d is an application error; device stays healthy", xid)
            return None
        try:
            uuid = _text(nv.nvmlDeviceGetUUID(event.device))
        except nv.NVMLError:
            return None
        return HealthChange(uuid, False, f"XID {xid}")
