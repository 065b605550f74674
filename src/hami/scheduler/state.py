"""ClusterState: every node's devices and their usage, laid out as arrays for fast filtering.

The state is a cache of what the API server holds: node registrations and the allocation annotations of
pods. It is updated incrementally (node and pod events) and can always be rebuilt from those objects.
Devices live in flat numpy arrays (one slot per device, grown by doubling) so that filtering a pod over
thousands of nodes is a handful of vectorised comparisons instead of a Python loop over every device.
Per-node summaries are kept alongside and updated with each change.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hami.resources import Node, PodAllocation

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class DeviceUse:
    """What one pod takes from one device: init containers at their peak, app containers summed."""

    memory_mib: int
    cores: int
    tasks: int


@dataclass(frozen=True, slots=True)
class PodRecord:
    uid: str
    key: str  # namespace/name, for messages and for matching on bind
    node: str
    allocation: PodAllocation
    init: tuple[bool, ...]  # per allocation entry: an init container (peak) or not (summed)
    cpu_milli: int
    memory_mib: int
    mutex: bool = False  # the pod asked `mutex`: no other pod may share its devices, before or after

    def device_uses(self) -> dict[str, DeviceUse]:
        """Per-device usage of this pod (uuid -> use), with init containers at their peak."""
        init: dict[str, list[int]] = {}
        app: dict[str, list[int]] = {}
        for i, container in enumerate(self.allocation):
            target = init if i < len(self.init) and self.init[i] else app
            for dev in container:
                cur = target.get(dev.uuid)
                if cur is None:
                    target[dev.uuid] = [dev.memory_mib, dev.cores, 1]
                elif target is init:
                    cur[0] = max(cur[0], dev.memory_mib)
                    cur[1] = max(cur[1], dev.cores)
                else:
                    cur[0] += dev.memory_mib
                    cur[1] += dev.cores
                    cur[2] += 1
        uses = {}
        for uuid in init.keys() | app.keys():
            a = app.get(uuid, [0, 0, 0])
            b = init.get(uuid, [0, 0, 0])
            uses[uuid] = DeviceUse(max(a[0], b[0]), max(a[1], b[1]), max(a[2], b[2]))
        return uses


class _Interner:
    """Small string -> int table, so device types and modes are array-comparable."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.names: list[str] = []

    def __call__(self, name: str) -> int:
        i = self.ids.get(name)
        if i is None:
            i = self.ids[name] = len(self.names)
            self.names.append(name)
        return i


class ClusterState:
    """Nodes, devices and pod usage. Not thread-safe: one writer (the event loop) at a time."""

    def __init__(self, device_capacity: int = 256, node_capacity: int = 64) -> None:
        self.types = _Interner()
        self.modes = _Interner()
        self.vendors = _Interner()
        # Device table.
        self._dcap = 0
        self.n_dev_slots = 0
        self.dev_node = np.zeros(0, np.int64)
        self.dev_valid = np.zeros(0, np.bool_)
        self.dev_index = np.zeros(0, np.int64)
        self.dev_mem_total = np.zeros(0, np.int64)
        self.dev_mem_used = np.zeros(0, np.int64)
        self.dev_core_total = np.zeros(0, np.int64)
        self.dev_core_used = np.zeros(0, np.int64)
        self.dev_count_total = np.zeros(0, np.int64)
        self.dev_count_used = np.zeros(0, np.int64)
        self.dev_health = np.zeros(0, np.bool_)
        self.dev_cordoned = np.zeros(0, np.bool_)
        self.dev_type = np.zeros(0, np.int64)
        self.dev_mode = np.zeros(0, np.int64)
        self.dev_vendor = np.zeros(0, np.int64)
        self.dev_numa = np.zeros(0, np.int64)
        self.dev_uuid: list[str] = []
        self._grow_devices(device_capacity)
        # Node table.
        self._ncap = 0
        self.n_node_slots = 0
        self.node_names: list[str] = []
        self.node_index: dict[str, int] = {}
        self.nodes: list[Node | None] = []
        self.node_valid = np.zeros(0, np.bool_)
        self.node_cpu_total = np.zeros(0, np.int64)
        self.node_cpu_used = np.zeros(0, np.int64)
        self.node_mem_total = np.zeros(0, np.int64)
        self.node_mem_used = np.zeros(0, np.int64)
        # Per-node device summaries (sums over the node's devices), for node-level scoring.
        self.node_dmem_total = np.zeros(0, np.int64)
        self.node_dmem_used = np.zeros(0, np.int64)
        self.node_dcore_total = np.zeros(0, np.int64)
        self.node_dcore_used = np.zeros(0, np.int64)
        self.node_dtasks = np.zeros(0, np.int64)
        # Per-node change counter (usage or devices), so policies can cache per-node derived values and
        # recompute only the nodes that changed since they last looked.
        self.node_epoch = np.zeros(0, np.int64)
        self.uuid_slots: dict[str, set[int]] = {}
        self.node_devices: list[IntArray] = []  # device slots in registration order
        self.node_uuid_slot: list[dict[str, int]] = []
        self._grow_nodes(node_capacity)
        # Pods.
        self.pods: dict[str, PodRecord] = {}
        self.pods_by_node: dict[str, set[str]] = {}
        self._free_dev_slots: list[tuple[int, int]] = []  # (start, length) blocks
        self.version = 0  # bumped on every change, for caches keyed on the state
        self.layout_version = 0  # bumped when nodes or device slots change (not on usage), for layout caches

    # -- growth -------------------------------------------------------------------------------------
    _DEV_ARRAYS = (
        "dev_node", "dev_valid", "dev_index", "dev_mem_total", "dev_mem_used", "dev_core_total",
        "dev_core_used", "dev_count_total", "dev_count_used", "dev_health", "dev_cordoned", "dev_type",
        "dev_mode", "dev_vendor", "dev_numa",
    )
    _NODE_ARRAYS = (
        "node_valid", "node_cpu_total", "node_cpu_used", "node_mem_total", "node_mem_used",
        "node_dmem_total", "node_dmem_used", "node_dcore_total", "node_dcore_used", "node_dtasks",
        "node_epoch",
    )

    def _grow_devices(self, need: int) -> None:
        if need <= self._dcap:
            return
        cap = max(need, self._dcap * 2, 16)
        for name in self._DEV_ARRAYS:
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)
        self.dev_uuid.extend([""] * (cap - len(self.dev_uuid)))
        self._dcap = cap

    def _grow_nodes(self, need: int) -> None:
        if need <= self._ncap:
            return
        cap = max(need, self._ncap * 2, 16)
        for name in self._NODE_ARRAYS:
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)
        self._ncap = cap

    # -- nodes --------------------------------------------------------------------------------------
    def upsert_node(self, node: Node) -> None:
        """Add or update a node. Pods already bound to it (seen before the node) are applied now."""
        idx = self.node_index.get(node.name)
        if idx is None:
            idx = self.n_node_slots
            self._grow_nodes(idx + 1)
            self.n_node_slots += 1
            self.node_names.append(node.name)
            self.nodes.append(None)
            self.node_devices.append(np.zeros(0, np.int64))
            self.node_uuid_slot.append({})
            self.node_index[node.name] = idx
        old = self.nodes[idx]
        self.version += 1
        self.node_epoch[idx] += 1
        self.nodes[idx] = node
        self.node_valid[idx] = True
        self.node_cpu_total[idx] = node.cpu_milli
        self.node_mem_total[idx] = node.memory_mib
        if old is not None and old.devices == node.devices:
            self._apply_cordons(idx, node)
            return
        if old is not None:
            self._release_devices(idx)
        self._place_devices(idx, node)
        self._reapply_pods(node.name)

    def remove_node(self, name: str) -> None:
        """Forget a node's devices. Its pods stay known, so a node that comes back gets its usage back."""
        idx = self.node_index.get(name)
        if idx is None or not self.node_valid[idx]:
            return
        self.version += 1
        self.layout_version += 1
        self.node_epoch[idx] += 1
        self._release_devices(idx)
        self.node_valid[idx] = False
        self.nodes[idx] = None
        self.node_cpu_total[idx] = self.node_mem_total[idx] = 0
        self.node_cpu_used[idx] = self.node_mem_used[idx] = 0

    def _release_devices(self, idx: int) -> None:
        slots = self.node_devices[idx]
        for uuid, slot in self.node_uuid_slot[idx].items():
            self.uuid_slots[uuid].discard(slot)
            if not self.uuid_slots[uuid]:
                del self.uuid_slots[uuid]
        if len(slots):
            self.dev_valid[slots] = False
            self._free_dev_slots.append((int(slots[0]), len(slots)))
        self.node_devices[idx] = np.zeros(0, np.int64)
        self.node_uuid_slot[idx] = {}
        self.node_cpu_used[idx] = self.node_mem_used[idx] = 0
        for summary in ("node_dmem_total", "node_dmem_used", "node_dcore_total", "node_dcore_used",
                        "node_dtasks"):
            getattr(self, summary)[idx] = 0

    def _alloc_slots(self, n: int) -> int:
        for i, (start, length) in enumerate(self._free_dev_slots):
            if length >= n:
                if length == n:
                    self._free_dev_slots.pop(i)
                else:
                    self._free_dev_slots[i] = (start + n, length - n)
                return start
        start = self.n_dev_slots
        self._grow_devices(start + n)
        self.n_dev_slots += n
        return start

    def _place_devices(self, idx: int, node: Node) -> None:
        self.layout_version += 1
        n = len(node.devices)
        start = self._alloc_slots(n) if n else 0
        slots = np.arange(start, start + n, dtype=np.int64)
        uuid_slot: dict[str, int] = {}
        for slot, dev in zip(slots.tolist(), node.devices, strict=True):
            self.dev_node[slot] = idx
            self.dev_valid[slot] = True
            self.dev_index[slot] = dev.index
            self.dev_mem_total[slot] = dev.memory_mib
            self.dev_core_total[slot] = dev.cores
            self.dev_count_total[slot] = dev.count
            self.dev_mem_used[slot] = self.dev_core_used[slot] = self.dev_count_used[slot] = 0
            self.dev_health[slot] = dev.health
            self.dev_type[slot] = self.types(dev.type)
            self.dev_mode[slot] = self.modes(dev.mode)
            self.dev_vendor[slot] = self.vendors(dev.vendor)
            self.dev_numa[slot] = dev.numa
            self.dev_uuid[slot] = dev.uuid
            uuid_slot[dev.uuid] = slot
            self.uuid_slots.setdefault(dev.uuid, set()).add(slot)
        self.node_devices[idx] = slots
        self.node_dmem_total[idx] = sum(d.memory_mib for d in node.devices)
        self.node_dcore_total[idx] = sum(d.cores for d in node.devices)
        self.node_uuid_slot[idx] = uuid_slot
        self._apply_cordons(idx, node)

    def _apply_cordons(self, idx: int, node: Node) -> None:
        for uuid, slot in self.node_uuid_slot[idx].items():
            self.dev_cordoned[slot] = uuid in node.cordoned

    def _reapply_pods(self, node_name: str) -> None:
        for uid in self.pods_by_node.get(node_name, ()):
            self._apply(self.pods[uid], +1)

    # -- pods ---------------------------------------------------------------------------------------
    def add_pod(self, record: PodRecord) -> None:
        """Account a pod's allocation on its node. Re-adding the same pod replaces its old usage."""
        old = self.pods.get(record.uid)
        if old == record:
            return
        if old is not None:
            self.remove_pod(record.uid)
        self.version += 1
        self.pods[record.uid] = record
        self.pods_by_node.setdefault(record.node, set()).add(record.uid)
        self._apply(record, +1)

    def remove_pod(self, uid: str) -> PodRecord | None:
        record = self.pods.pop(uid, None)
        if record is None:
            return None
        self.version += 1
        on_node = self.pods_by_node.get(record.node)
        if on_node is not None:
            on_node.discard(uid)
            if not on_node:
                del self.pods_by_node[record.node]
        self._apply(record, -1)
        return record

    def _apply(self, record: PodRecord, sign: int) -> None:
        idx = self.node_index.get(record.node)
        if idx is None or not self.node_valid[idx]:
            return  # applied when the node (re)appears
        self.node_epoch[idx] += 1
        self.node_cpu_used[idx] += sign * record.cpu_milli
        self.node_mem_used[idx] += sign * record.memory_mib
        uuid_slot = self.node_uuid_slot[idx]
        for uuid, use in record.device_uses().items():
            slot = uuid_slot.get(uuid)
            if slot is None:
                continue  # device no longer registered; its usage returns with it
            self.dev_mem_used[slot] += sign * use.memory_mib
            self.dev_core_used[slot] += sign * use.cores
            self.dev_count_used[slot] += sign * use.tasks
            self.node_dmem_used[idx] += sign * use.memory_mib
            self.node_dcore_used[idx] += sign * use.cores
            self.node_dtasks[idx] += sign * use.tasks

    # -- views --------------------------------------------------------------------------------------
    def live_nodes(self) -> Iterator[Node]:
        for node in self.nodes:
            if node is not None:
                yield node

    def node_slots(self, name: str) -> IntArray:
        idx = self.node_index.get(name)
        return self.node_devices[idx] if idx is not None else np.zeros(0, np.int64)

    def device_usage(self) -> dict[tuple[str, str], tuple[int, int, int]]:
        """(node, uuid) -> (memory, cores, tasks) used, for every device that has any usage."""
        out: dict[tuple[str, str], tuple[int, int, int]] = {}
        for idx, name in enumerate(self.node_names):
            if not self.node_valid[idx]:
                continue
            for uuid, slot in self.node_uuid_slot[idx].items():
                use = (int(self.dev_mem_used[slot]), int(self.dev_core_used[slot]),
                       int(self.dev_count_used[slot]))
                if use != (0, 0, 0):
                    out[(name, uuid)] = use
        return out

    @classmethod
    def build(cls, nodes: Iterable[Node], pods: Iterable[PodRecord]) -> ClusterState:
        state = cls()
        for node in nodes:
            state.upsert_node(node)
        for pod in pods:
            state.add_pod(pod)
        return state
