"""NVIDIA, the reference vendor: SPEC §1 resource names, defaults, user annotations and registration.

Semantics follow HAMi's pkg/device/nvidia (GenerateResourceRequests, mutateContainerResource,
defaultExclusiveCoreIfNeeded); where we validate more strictly, the rule is named in the error message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hami.protocol import annotations as anno
from hami.resources import Device, DeviceRequest, DeviceSelector, HamiError, quantity_int
from hami.vendors.base import VendorAnnotations

VENDOR = "NVIDIA"
MODES = ("hami-core", "mig")


@dataclass(frozen=True, slots=True)
class NvidiaConfig:
    """Resource names and request defaults (HAMi's nvidia config of the same meaning).

    `default_memory_mib` 0 means a request without memory takes the whole card (100 %); `default_gpu_count`
    is the count given to a container that asks only for memory or cores (0: such a container is an error).
    """

    resource_count: str = "nvidia.com/gpu"
    resource_memory: str = "nvidia.com/gpumem"
    resource_memory_percentage: str = "nvidia.com/gpumem-percentage"
    resource_cores: str = "nvidia.com/gpucores"
    resource_priority: str = "nvidia.com/priority"
    default_memory_mib: int = 0
    default_cores: int = 0
    default_gpu_count: int = 1


class _Resources:
    """One container's resources seen the way Kubernetes treats extended resources: limits first, and a
    key only in requests counts as the same limit.

    Accepts either the container's `resources` object (`{"limits": …, "requests": …}`) or a bare limits map;
    `prefix` names what was passed, so errors read e.g. `spec.containers[0].resources.limits[nvidia.com/gpu]`.
    """

    def __init__(self, resources: Mapping[str, Any], prefix: str) -> None:
        if not isinstance(resources, Mapping):
            raise HamiError(prefix, f"expected a mapping, got {type(resources).__name__}")
        self.sections: list[tuple[Mapping[str, Any], str]] = []
        if "limits" in resources or "requests" in resources:
            for key in ("limits", "requests"):
                section = resources.get(key) or {}
                if not isinstance(section, Mapping):
                    raise HamiError(f"{prefix}.{key}", f"expected a mapping, got {type(section).__name__}")
                self.sections.append((section, f"{prefix}.{key}"))
        else:
            self.sections.append((resources, prefix))

    def has(self, name: str) -> bool:
        return any(name in section for section, _ in self.sections)

    def int(self, name: str) -> tuple[int, str] | None:
        """The value rounded up to an integer (as Kubernetes does) and the field it came from."""
        for section, where in self.sections:
            if name in section:
                field = f"{where}[{name}]"
                raw = section[name]
                if not isinstance(raw, str | int | float):
                    raise HamiError(field, f"not a quantity: {raw!r}")
                return quantity_int(raw, field), field
        return None


class NvidiaVendor:
    """SPEC §1 for NVIDIA GPUs. Stateless apart from its config."""

    name: str
    annotations: VendorAnnotations

    def __init__(self, config: NvidiaConfig | None = None) -> None:
        self.config = config or NvidiaConfig()
        self.name = VENDOR
        self.annotations = VendorAnnotations(
            register=anno.NODE_NVIDIA_REGISTER,
            allocated=anno.VGPU_DEVICES_ALLOCATED,
            to_allocate=anno.VGPU_DEVICES_TO_ALLOCATE,
            handshake=anno.NODE_HANDSHAKE,
        )

    def __repr__(self) -> str:
        return f"NvidiaVendor({self.config!r})"

    @property
    def count_resource(self) -> str:
        return self.config.resource_count

    def resource_names(self) -> frozenset[str]:
        c = self.config
        return frozenset({c.resource_count, c.resource_memory, c.resource_memory_percentage,
                          c.resource_cores, c.resource_priority})

    def container_request(self, resources: Mapping[str, Any], field_prefix: str) -> DeviceRequest | None:
        return self._resolve(resources, field_prefix)[0]

    def default_resources(self, resources: Mapping[str, Any], field_prefix: str) -> dict[str, str]:
        return self._resolve(resources, field_prefix)[1]

    def _resolve(
        self, resources: Mapping[str, Any], prefix: str
    ) -> tuple[DeviceRequest | None, dict[str, str]]:
        """The request and the limits admission must add to make it explicit, computed together so that
        `container_request(limits + defaults) == container_request(limits)` holds by construction."""
        c = self.config
        res = _Resources(resources, prefix)
        count = res.int(c.resource_count)
        memory = res.int(c.resource_memory)
        percentage = res.int(c.resource_memory_percentage)
        cores = res.int(c.resource_cores)
        priority = res.int(c.resource_priority)

        if count is not None and count[0] < 0:
            raise HamiError(count[1], f"GPU count must not be negative, got {count[0]}")
        if memory is not None and memory[0] < 0:
            raise HamiError(memory[1], f"memory must not be negative, got {memory[0]}")
        if percentage is not None and not 1 <= percentage[0] <= 100:
            raise HamiError(percentage[1], f"memory percentage must be 1-100, got {percentage[0]}")
        if cores is not None and not 0 <= cores[0] <= 100:
            raise HamiError(cores[1], f"cores must be 0-100 (% of a card), got {cores[0]}")

        shares = [s for s in (memory, percentage, cores) if s is not None]
        defaults: dict[str, str] = {}
        if count is None:
            if not shares:
                return None, {}
            if c.default_gpu_count <= 0:
                raise HamiError(shares[0][1], f"needs {c.resource_count} (no default GPU count configured)")
            n = c.default_gpu_count
            defaults[c.resource_count] = str(n)
        else:
            n = count[0]
        if n == 0:
            if shares:
                raise HamiError(count[1] if count else prefix, "memory or cores requested with 0 GPUs")
            return None, {}

        memory_mib = memory[0] if memory else 0
        memory_pct = 0
        if not memory_mib:
            if percentage is not None:
                memory_pct = percentage[0]
            elif c.default_memory_mib:
                memory_mib = c.default_memory_mib
            else:
                memory_pct = 100

        # HAMi: a count with no cores and no (or 100 %) memory in the spec means a whole card. The configured
        # default memory does not change that; gpumem: 0 counts as no memory.
        if cores is not None:
            core_share = cores[0]
        elif not (memory and memory[0]) and (percentage is None or percentage[0] == 100):
            core_share = 100
            defaults[c.resource_cores] = "100"
        else:
            core_share = c.default_cores

        request = DeviceRequest(vendor=VENDOR, count=n, memory_mib=memory_mib, memory_pct=memory_pct,
                                cores=core_share, priority=priority[0] if priority else None)
        return request, defaults

    def selector(self, annotations: Mapping[str, str]) -> DeviceSelector:
        def field(name: str) -> str:
            return f"metadata.annotations[{name}]"

        numa = annotations.get(anno.NVIDIA_NUMA_BIND, "").strip()
        mode = annotations.get(anno.NVIDIA_VGPU_MODE, "").strip().lower() or None
        if mode is not None and mode not in MODES:
            raise HamiError(field(anno.NVIDIA_VGPU_MODE), f"must be one of {', '.join(MODES)}, got {mode!r}")
        return DeviceSelector(
            use_types=anno.split_list(annotations.get(anno.NVIDIA_USE_GPUTYPE, "")),
            nouse_types=anno.split_list(annotations.get(anno.NVIDIA_NOUSE_GPUTYPE, "")),
            use_uuids=anno.split_list(annotations.get(anno.NVIDIA_USE_GPUUUID, "")),
            nouse_uuids=anno.split_list(annotations.get(anno.NVIDIA_NOUSE_GPUUUID, "")),
            numa_bind=anno.parse_go_bool(numa, field(anno.NVIDIA_NUMA_BIND)) if numa else False,
            mode=mode,
        )

    def node_devices(self, annotations: Mapping[str, str], node_name: str) -> tuple[Device, ...]:
        text = annotations.get(self.annotations.register)
        if text is None:
            return ()
        try:
            return anno.decode_node_devices(text, VENDOR, annotation=self.annotations.register)
        except HamiError as exc:
            raise HamiError(f"node/{node_name} {exc.field}", exc.message) from None
