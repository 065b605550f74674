"""Allocation: which pod a kubelet Allocate call is for, what its container gets, and the pod's bookkeeping.

kubelet's Allocate names replica IDs but no pod. The pod is found as HAMi's device plugin finds it: the node
lock (`hami.io/mutex.lock`, taken by the scheduler before binding) names it; failing that, the pod bound to
this node in bind-phase `allocating` whose next waiting container wants as many devices as kubelet asks for.
That container's entry of `hami.io/vgpu-devices-to-allocate` is the truth about which cards and which share
it gets; kubelet's replica IDs only have to agree in number. A tenant may patch its own pod, so the entry is
served only on a pod of a trusted scheduler, equal to the pod's `hami.io/vgpu-devices-allocated` entry and
matching the container's request (protocol/trust). The answer is the HAMi-core contract (SPEC §4);
the entry is then blanked, and once no container waits, `bind-phase` becomes `success` and the node lock is
released. Any failure marks the pod `failed`, posts an Event saying why, releases the lock, and is answered
with an `AllocationError` (a gRPC error to kubelet), never with some other pod's devices.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from uuid import uuid4

from hami.agent.devices import DeviceTable
from hami.agent.registration import registered_devices
from hami.kube.api import ApiError, KubeApi, KubeObject
from hami.kube.events import EventRecorder, PodRef
from hami.kube.nodelock import release_node_lock
from hami.protocol import annotations as anno
from hami.protocol.manifests import annotations_of, first_quantity, get_map, get_str, iter_containers
from hami.protocol.trust import DEFAULT_SCHEDULER, as_requested, describe, untrusted_scheduler
from hami.resources import ContainerAllocation, HamiError, PodAllocation, quantity_int
from hami.vendors.nvidia import NvidiaVendor

_log = logging.getLogger(__name__)

VENDOR = "NVIDIA"
EVENT_REASON = "DeviceAllocationFailed"
CORE_POLICIES = ("default", "force", "disable")
_NVIDIA = NvidiaVendor()  # reads a container's request exactly as the scheduler's default vendors do

Status = Literal["invalid", "not_found", "unavailable", "internal"]


class AllocationError(Exception):
    """Why an Allocate call got no devices; `status` picks the gRPC code."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- the HAMi-core contract (pure) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limiter:
    """Where HAMi-core (libvgpu.so) lives on the host, and where containers see it.

    Container paths follow HAMi's device plugin: the library at `<hook>/vgpu/libvgpu.so`, the per-container
    cache dir at `<hook>/vgpu`, the shared lock dir at `/tmp/vgpulock`, and `/etc/ld.so.preload` naming the
    library. Host paths default to the same layout under `hook_path` (HAMi's HOOK_PATH, `/usr/local`).
    `install`: "auto" mounts the limiter only when its library exists on the host, "on" always, "off" never.
    """

    hook_path: str = "/usr/local"
    lib_host_path: str = ""
    preload_host_path: str = ""
    cache_host_dir: str = ""
    lock_dir: str = "/tmp/vgpulock"
    install: Literal["auto", "on", "off"] = "auto"

    @property
    def container_dir(self) -> str:
        return f"{self.hook_path.rstrip('/')}/vgpu"

    @property
    def lib(self) -> str:
        return self.lib_host_path or f"{self.container_dir}/libvgpu.so"

    @property
    def preload(self) -> str:
        return self.preload_host_path or f"{self.container_dir}/ld.so.preload"

    @property
    def cache_root(self) -> str:
        return self.cache_host_dir or f"{self.container_dir}/containers"

    def installed(self) -> bool:
        if self.install == "auto":
            return Path(self.lib).is_file()
        return self.install == "on"


@dataclass(frozen=True, slots=True)
class AllocationSettings:
    """What shapes a container's environment besides its devices, and whose allocations are served: pods of
    the `trusted_schedulers` only (protocol/trust)."""

    limiter: Limiter = field(default_factory=Limiter)
    core_policy: str = "default"  # GPU_CORE_UTILIZATION_POLICY
    priority_resource: str = "nvidia.com/priority"
    oversubscribed: bool = False  # memory scaling > 1: HAMi-core may spill to host memory
    libcuda_log_level: str | None = None
    mig_mode: bool = False
    trusted_schedulers: tuple[str, ...] = (DEFAULT_SCHEDULER,)

    def __post_init__(self) -> None:
        if self.core_policy not in CORE_POLICIES:
            raise HamiError("core_policy", f"must be one of {', '.join(CORE_POLICIES)}, got {self.core_policy!r}")


@dataclass(frozen=True, slots=True)
class Mount:
    container_path: str
    host_path: str
    read_only: bool


@dataclass(frozen=True, slots=True)
class ContainerGrant:
    """One container's answer: its env and mounts, and the host cache dir to create before answering."""

    container: str
    devices: ContainerAllocation
    envs: Mapping[str, str]
    mounts: tuple[Mount, ...] = ()
    cache_dir: str | None = None


def _priority(container: Mapping[str, Any], resource: str, where: str) -> int | None:
    resources = get_map(container, "resources", where)
    sections = [(get_map(resources, key, f"{where}.resources"), f"{where}.resources.{key}")
                for key in ("limits", "requests")]
    return first_quantity(sections, resource, quantity_int)


def container_grant(devices: ContainerAllocation, container: Mapping[str, Any], pod_uid: str,
                    settings: AllocationSettings, *, limiter_installed: bool, cache_id: str,
                    where: str = "container") -> ContainerGrant:
    """The HAMi-core contract for one container (SPEC §4), exactly as HAMi's device plugin writes it."""
    name = get_str(container, "name", where)
    uuids = list(dict.fromkeys(d.uuid for d in devices))
    envs: dict[str, str] = {"NVIDIA_VISIBLE_DEVICES": ",".join(uuids)}
    if settings.mig_mode:
        return ContainerGrant(name, devices, envs)
    limiter = settings.limiter
    for i, dev in enumerate(devices):
        envs[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] = f"{dev.memory_mib}m"
    envs["CUDA_DEVICE_SM_LIMIT"] = str(devices[0].cores if devices else 0)
    envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = f"{limiter.container_dir}/{cache_id}.cache"
    priority = _priority(container, settings.priority_resource, where)
    if priority is not None:
        envs["CUDA_TASK_PRIORITY"] = str(priority)
    envs["GPU_CORE_UTILIZATION_POLICY"] = settings.core_policy
    if settings.oversubscribed:
        envs["CUDA_OVERSUBSCRIBE"] = "true"
    if settings.libcuda_log_level:
        envs["LIBCUDA_LOG_LEVEL"] = settings.libcuda_log_level
    if not limiter_installed:
        return ContainerGrant(name, devices, envs)
    cache_dir = f"{limiter.cache_root}/{pod_uid}_{name}"
    # The preload is what turns the limiter on, so it is mounted whatever the container's env says: HAMi skips
    # it for `CUDA_DISABLE_CONTROL=true`, which would let any tenant lift its own memory and core limits.
    mounts = (
        Mount(f"{limiter.container_dir}/libvgpu.so", limiter.lib, True),
        Mount(limiter.container_dir, cache_dir, False),
        Mount("/tmp/vgpulock", limiter.lock_dir, False),
        Mount("/etc/ld.so.preload", limiter.preload, True),
    )
    return ContainerGrant(name, devices, envs, mounts, cache_dir)


# --- choosing replicas for GetPreferredAllocation (pure) -----------------------------------------------------


def preferred_ids(available: Sequence[str], must_include: Sequence[str], size: int,
                  annotated: Sequence[str] | None, physical: Callable[[str], str | None]) -> list[str]:
    """Replica IDs for kubelet to pick: replicas of the annotated cards when the pod's waiting container is
    known, else distinct cards first. `must_include` always comes first."""
    selected = list(dict.fromkeys(must_include))[:max(size, 0)]
    rest = [d for d in dict.fromkeys(available) if d not in selected]
    if annotated is not None and len(annotated) == size:
        need = Counter(annotated)
        need.subtract(Counter(physical(d) or d for d in selected))
        picked: list[str] = []
        pool = list(rest)
        for uuid in annotated:
            if need[uuid] <= 0:
                continue
            match = next((d for d in pool if physical(d) == uuid), None)
            if match is None:
                break
            pool.remove(match)
            picked.append(match)
            need[uuid] -= 1
        else:
            if len(selected) + len(picked) == size:
                return selected + picked
    used = {physical(d) for d in selected}
    for d in rest:
        if len(selected) >= size:
            break
        if physical(d) not in used:
            selected.append(d)
            used.add(physical(d))
    for d in rest:
        if len(selected) >= size:
            break
        if d not in selected:
            selected.append(d)
    return selected


@dataclass(frozen=True, slots=True)
class PreferredRequest:
    available: tuple[str, ...]
    must_include: tuple[str, ...]
    size: int


# --- finding the pod ---------------------------------------------------------------------------------------


def _pending(pod: Mapping[str, Any]) -> PodAllocation | None:
    """The decoded to-allocate annotation, or None when absent or unreadable."""
    try:
        text = annotations_of(pod).get(anno.VGPU_DEVICES_TO_ALLOCATE)
        return None if text is None else anno.decode_pod_allocation(text, annotation=anno.VGPU_DEVICES_TO_ALLOCATE)
    except HamiError:
        return None


def _bind_time(pod: Mapping[str, Any]) -> int:
    try:
        return int(annotations_of(pod).get(anno.BIND_TIME, ""))
    except (HamiError, ValueError):
        return 2**63


def _pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"


class Allocator:
    """Serves Allocate and GetPreferredAllocation for one node; one allocation at a time."""

    def __init__(self, api: KubeApi, node_name: str, table: DeviceTable, settings: AllocationSettings,
                 events: EventRecorder, *, new_cache_id: Callable[[], str] = lambda: str(uuid4())) -> None:
        self.api = api
        self.node_name = node_name
        self.table = table
        self.settings = settings
        self.events = events
        self.new_cache_id = new_cache_id
        self._registered_memory = {d.uuid: d.memory_mib for d in registered_devices(table.inventory, table.config)}
        self._lock = asyncio.Lock()

    # -- pod lookup ------------------------------------------------------------------------------------
    def _allocating_here(self, pod: Mapping[str, Any]) -> bool:
        try:
            annotations = annotations_of(pod)
        except HamiError:
            return False
        return (annotations.get(anno.BIND_PHASE) == anno.BIND_PHASE_ALLOCATING
                and annotations.get(anno.VGPU_NODE) == self.node_name)

    async def _locked_pod(self, lock_text: str) -> KubeObject | None:
        """The pod named by the node lock, if it is still waiting here for devices."""
        try:
            lock = anno.decode_node_lock(lock_text)
        except HamiError as exc:
            _log.warning("node %s: ignoring unreadable lock: %s", self.node_name, exc)
            return None
        if not (lock.namespace and lock.pod):
            return None
        try:
            pod = await self.api.get("pods", lock.pod, namespace=lock.namespace)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise AllocationError("unavailable", f"cannot read pod {lock.namespace}/{lock.pod}: {exc}") from None
        # A locked pod whose entries are all blanked was served already (its lock outlived it); a missing or
        # unreadable annotation is an error to report on the pod itself.
        pending = _pending(pod)
        served = pending is not None and len(pending) > 0 and not any(pending)
        return pod if self._allocating_here(pod) and not served else None

    async def find_pod(self, count: int | None = None, kubelet_ids: Sequence[str] = ()) -> KubeObject:
        """The pod this Allocate is for: the node lock's pod, else the pending pod on this node whose next
        container wants `count` devices, preferring the one the scheduler put on kubelet's cards, then the
        oldest binding."""
        try:
            node = await self.api.get("nodes", self.node_name)
            lock_text = annotations_of(node).get(anno.NODE_LOCK, "")
        except (ApiError, HamiError) as exc:
            raise AllocationError("unavailable", f"cannot read node {self.node_name}: {exc}") from None
        if lock_text and (pod := await self._locked_pod(lock_text)) is not None:
            return pod
        try:
            listed = await self.api.list("pods", field_selector=f"spec.nodeName={self.node_name}")
        except ApiError as exc:
            raise AllocationError("unavailable", f"cannot list pods of node {self.node_name}: {exc}") from None
        wanted = {self.table.physical_id(i) for i in kubelet_ids} - {None}
        candidates: list[tuple[bool, int, int, str, KubeObject]] = []
        for pod in listed.items:
            try:
                phase = get_str(get_map(pod, "status", "pod"), "phase", "status")
            except HamiError:
                continue
            if phase not in ("", "Pending") or not self._allocating_here(pod):
                continue
            entry = next((c for c in _pending(pod) or () if c), None)
            if entry is None or (count is not None and len(entry) != count):
                continue
            overlap = len(wanted & {d.uuid for d in entry})
            # A pod of an untrusted scheduler goes last, so it never stands in for a real one; if kubelet is
            # allocating for it after all, plan() refuses it.
            untrusted = bool(untrusted_scheduler(pod, self.settings.trusted_schedulers))
            candidates.append((untrusted, -overlap, _bind_time(pod), _pod_key(pod), pod))
        if not candidates:
            asked = f" waiting for {count} device(s)" if count is not None else ""
            raise AllocationError("not_found", f"no pod on node {self.node_name} is in bind-phase allocating"
                                               f"{asked} (node lock: {lock_text or 'none'})")
        candidates.sort(key=lambda c: c[:4])
        return candidates[0][4]

    # -- Allocate --------------------------------------------------------------------------------------
    def plan(self, pod: Mapping[str, Any], requests: Sequence[Sequence[str]]
             ) -> tuple[list[ContainerGrant], dict[str, str | None]]:
        """The grants for kubelet's container requests and the pod patch recording them. Pure apart from the
        limiter check; raises AllocationError("invalid") for anything that cannot be served safely."""
        key = _pod_key(pod)
        if self.settings.mig_mode:
            raise AllocationError("invalid", "operating mode mig is not supported by this node agent")
        untrusted = untrusted_scheduler(pod, self.settings.trusted_schedulers)
        if untrusted:
            raise AllocationError("invalid", f"pod {key}: refusing its allocation: {untrusted}")
        try:
            annotations = annotations_of(pod)
            text = annotations.get(anno.VGPU_DEVICES_TO_ALLOCATE)
            if not text:
                raise HamiError(anno.VGPU_DEVICES_TO_ALLOCATE, "missing or empty")
            alloc = anno.decode_pod_allocation(text, annotation=anno.VGPU_DEVICES_TO_ALLOCATE)
            allocated = anno.decode_pod_allocation(annotations.get(anno.VGPU_DEVICES_ALLOCATED, ""))
            containers = list(iter_containers(pod))
        except HamiError as exc:
            raise AllocationError("invalid", f"pod {key}: {exc}") from None
        if any(alloc[len(containers):]):
            raise AllocationError("invalid", f"pod {key}: {anno.VGPU_DEVICES_TO_ALLOCATE} has {len(alloc)} "
                                             f"entries for {len(containers)} containers")
        pending = [i for i, c in enumerate(alloc) if c]
        if len(requests) > len(pending):
            raise AllocationError("invalid", f"pod {key}: kubelet allocates {len(requests)} container(s), "
                                             f"{len(pending)} wait for devices")
        installed = self.settings.limiter.installed()
        uid = get_str(get_map(pod, "metadata", "pod"), "uid", "metadata")
        grants: list[ContainerGrant] = []
        for ids, index in zip(requests, pending, strict=False):
            devices = alloc[index]
            container, kind, position = containers[index]
            where = f"spec.{kind}[{position}]"
            name = get_str(container, "name", where) or where
            if len(devices) != len(ids):
                raise AllocationError("invalid", f"pod {key} container {name}: kubelet allocates {len(ids)} "
                                                 f"device(s), the scheduler assigned {len(devices)}")
            foreign = [i for i in ids if self.table.physical_id(i) is None]
            if foreign:
                raise AllocationError("invalid", f"pod {key} container {name}: kubelet device IDs "
                                                 f"{', '.join(foreign)} are not this plugin's")
            for dev in devices:
                if dev.vendor != VENDOR:
                    raise AllocationError("invalid", f"pod {key} container {name}: device {dev.uuid} has vendor "
                                                     f"{dev.vendor}, expected {VENDOR}")
                if dev.uuid not in self.table.uuids:
                    raise AllocationError("invalid", f"pod {key} container {name}: device {dev.uuid} is not a "
                                                     f"device of node {self.node_name}")
            if index >= len(allocated) or allocated[index] != devices:
                raise AllocationError("invalid", f"pod {key} container {name}: its {anno.VGPU_DEVICES_TO_ALLOCATE} "
                                                 f"entry differs from {anno.VGPU_DEVICES_ALLOCATED}")
            try:
                self._check_request(devices, container, where)
                grants.append(container_grant(devices, container, uid, self.settings, limiter_installed=installed,
                                              cache_id=self.new_cache_id(), where=where))
            except HamiError as exc:
                raise AllocationError("invalid", f"pod {key}: {exc}") from None
        for index in pending[:len(requests)]:
            text = anno.blank_container(text, index)
        patch: dict[str, str | None] = {anno.VGPU_DEVICES_TO_ALLOCATE: text}
        if len(requests) == len(pending):
            patch[anno.BIND_PHASE] = anno.BIND_PHASE_SUCCESS
        return grants, patch

    def _check_request(self, devices: ContainerAllocation, container: Mapping[str, Any], where: str) -> None:
        """The devices are the container's request (count, cores, memory in MiB or as a percentage of the
        registered card), or HamiError: spec resources are immutable, annotations a tenant may rewrite."""
        request = _NVIDIA.container_request(get_map(container, "resources", where), f"{where}.resources")
        wanted = () if request is None else (request,)
        if not as_requested(wanted, devices, self._registered_memory.get)[1]:
            entry = anno.encode_pod_allocation((devices,)).rstrip(":;")
            raise HamiError(where, f"allocation {entry} does not match the container's request ({describe(wanted)})")

    async def allocate(self, requests: Sequence[Sequence[str]]) -> list[ContainerGrant]:
        if not requests:
            return []
        async with self._lock:
            pod = await self.find_pod(len(requests[0]), [i for r in requests for i in r])
            meta = get_map(pod, "metadata", "pod")
            name, namespace = get_str(meta, "name", "metadata"), get_str(meta, "namespace", "metadata")
            try:
                grants, patch = self.plan(pod, requests)
                self._prepare_dirs(grants)
                await self.api.patch_annotations("pods", name, patch, namespace=namespace)
            except AllocationError as exc:
                await self._fail(pod, exc.message)
                raise
            except ApiError as exc:
                message = f"pod {namespace}/{name}: cannot record the allocation: {exc}"
                await self._fail(pod, message)
                raise AllocationError("unavailable", message) from None
            done = patch.get(anno.BIND_PHASE) == anno.BIND_PHASE_SUCCESS
            _log.info("pod %s/%s: allocated %s%s", namespace, name,
                      "; ".join(f"{g.container}={g.envs['NVIDIA_VISIBLE_DEVICES']}" for g in grants),
                      " (all containers done)" if done else "")
            if done:
                await release_node_lock(self.api, self.node_name, namespace, name)
            return grants

    def _prepare_dirs(self, grants: Sequence[ContainerGrant]) -> None:
        """Fresh per-container cache dirs and the shared lock dir, world-writable as HAMi-core expects."""
        for grant in grants:
            if grant.cache_dir is None:
                continue
            try:
                shutil.rmtree(grant.cache_dir, ignore_errors=True)
                for path in (grant.cache_dir, self.settings.limiter.lock_dir):
                    os.makedirs(path, exist_ok=True)
                    os.chmod(path, 0o777)
            except OSError as exc:
                raise AllocationError("internal", f"cannot prepare {grant.cache_dir}: {exc}") from None

    async def _fail(self, pod: Mapping[str, Any], message: str) -> None:
        meta = get_map(pod, "metadata", "pod")
        name, namespace = get_str(meta, "name", "metadata"), get_str(meta, "namespace", "metadata")
        _log.error("allocation failed: %s", message)
        try:
            await self.api.patch_annotations("pods", name, {anno.BIND_PHASE: anno.BIND_PHASE_FAILED},
                                             namespace=namespace)
        except ApiError as exc:
            _log.error("pod %s/%s: cannot set bind-phase failed: %s", namespace, name, exc)
        self.events.emit(PodRef(namespace, name, get_str(meta, "uid", "metadata")), EVENT_REASON, message)
        await release_node_lock(self.api, self.node_name, namespace, name)

    # -- GetPreferredAllocation ------------------------------------------------------------------------
    async def preferred(self, requests: Sequence[PreferredRequest]) -> list[list[str]]:
        """Replica choices for kubelet; never fails (kubelet falls back to its own choice)."""
        annotated: list[ContainerAllocation] = []
        if requests:
            try:
                pod = await self.find_pod(requests[0].size, [i for r in requests for i in r.must_include])
                annotated = [c for c in _pending(pod) or () if c]
            except AllocationError as exc:
                _log.info("preferred allocation without a pod: %s", exc.message)
        out: list[list[str]] = []
        for k, request in enumerate(requests):
            uuids = [d.uuid for d in annotated[k]] if k < len(annotated) else None
            out.append(preferred_ids(request.available, request.must_include, request.size, uuids,
                                     self.table.physical_id))
        return out
