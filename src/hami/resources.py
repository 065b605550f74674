"""Domain values: quantities, device requests, devices and allocations.

Everything here is a frozen value with no I/O, so the scheduling core, the wire codecs, the services and
the simulator can share them without copying or defensive checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation


class HamiError(ValueError):
    """Bad input at a boundary: a malformed annotation, request, manifest or config.

    `field` names what was wrong so the caller can put it in an HTTP 4xx, an Event or a log line.
    """

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


_SUFFIX = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
    "P": Decimal(10**15), "E": Decimal(10**18),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")

# Bounds no real resource comes near: a quantity is at most 2^63-1 of its base unit (Kubernetes' own int64
# range), written in at most 64 characters, with a decimal exponent within +-30. Checked before any
# arithmetic, so "1e999999" is refused at once instead of being expanded into a million-digit integer.
MAX_QUANTITY = Decimal(2**63 - 1)
MAX_QUANTITY_CHARS = 64
MAX_EXPONENT = 30


def parse_quantity(value: str | int | float, field_name: str = "quantity") -> Decimal:
    """Parse a Kubernetes resource quantity ("500m", "2Gi", "1e3", 4) into an exact Decimal, in bounded
    time and range: anything beyond MAX_QUANTITY (either sign) or written with an absurd exponent is a
    HamiError naming the field."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise HamiError(field_name, f"not a quantity: {value!r:.80}")
    if isinstance(value, int) and abs(value) > MAX_QUANTITY:
        raise HamiError(field_name, "quantity out of range (more than 2^63-1)")
    text = (repr(value) if isinstance(value, float) else str(value)).strip()
    if len(text) > MAX_QUANTITY_CHARS:
        raise HamiError(field_name, f"quantity longer than {MAX_QUANTITY_CHARS} characters")
    match = _QUANTITY.match(text)
    if not match:
        raise HamiError(field_name, f"not a quantity: {value!r}")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation as exc:
        raise HamiError(field_name, f"not a quantity: {value!r}") from exc
    if not number.is_finite() or (number and abs(number.adjusted()) > MAX_EXPONENT):
        raise HamiError(field_name, f"quantity out of range: {value!r}")
    q = number * _SUFFIX[match.group(2) or ""]
    if abs(q) > MAX_QUANTITY:
        raise HamiError(field_name, f"quantity out of range (more than 2^63-1): {value!r}")
    return q


# What a parsed amount may be once in its unit (millicores, MiB, a device count, MiB of device memory):
# 2^53, far above any machine, so that sums over thousands of pods stay exact in int64 state arrays (and
# in floats) and a pod asking "cpu: 1e16" is refused at admission instead of poisoning the arithmetic.
MAX_AMOUNT = 2**53


def _amount(q: Decimal, field_name: str, value: str | int | float, *, signed: bool = False) -> int:
    if q < 0 and not signed:
        raise HamiError(field_name, f"must not be negative, got {value!r}")
    amount = int(q.to_integral_value(rounding="ROUND_CEILING"))
    if abs(amount) > MAX_AMOUNT:
        raise HamiError(field_name, f"quantity out of range (more than 2^53 in its unit): {value!r}")
    return amount


def quantity_int(value: str | int | float, field_name: str = "quantity") -> int:
    """A quantity rounded up to an integer, as Kubernetes does for extended resources; negative values are
    returned (the vendor names the rule they break), magnitudes beyond MAX_AMOUNT are refused."""
    return _amount(parse_quantity(value, field_name), field_name, value, signed=True)


def cpu_milli(value: str | int | float, field_name: str = "cpu") -> int:
    return _amount(parse_quantity(value, field_name) * 1000, field_name, value)


def memory_mib(value: str | int | float, field_name: str = "memory") -> int:
    return _amount(parse_quantity(value, field_name) / (1 << 20), field_name, value)


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """What one container asks of one vendor: `count` distinct devices, each with this share.

    Memory is either absolute (`memory_mib`) or a percentage of each card (`memory_pct`); exactly one is
    non-zero after admission defaults. `cores` is a percentage of each card (100 = the whole card).
    """

    vendor: str
    count: int
    memory_mib: int = 0
    memory_pct: int = 0
    cores: int = 0
    priority: int | None = None

    def memory_for(self, device_memory_mib: int) -> int:
        """The MiB this request takes on a device of the given size."""
        if self.memory_mib:
            return self.memory_mib
        return device_memory_mib * self.memory_pct // 100

    @property
    def exclusive(self) -> bool:
        """A whole card: only an idle device will do, and nothing may join it."""
        return self.cores >= 100


@dataclass(frozen=True, slots=True)
class ContainerRequest:
    name: str
    devices: tuple[DeviceRequest, ...] = ()
    init: bool = False
    cpu_milli: int = 0
    memory_mib: int = 0


@dataclass(frozen=True, slots=True)
class DeviceSelector:
    """User constraints on which devices a pod may use (pod annotations, SPEC §1)."""

    use_types: tuple[str, ...] = ()
    nouse_types: tuple[str, ...] = ()
    use_uuids: tuple[str, ...] = ()
    nouse_uuids: tuple[str, ...] = ()
    numa_bind: bool = False
    mode: str | None = None

    def type_allowed(self, device_type: str) -> bool:
        t = device_type.lower()
        if self.use_types and not any(u.lower() in t for u in self.use_types):
            return False
        return not any(n.lower() in t for n in self.nouse_types)

    def uuid_allowed(self, uuid: str) -> bool:
        if self.use_uuids and uuid not in self.use_uuids:
            return False
        return uuid not in self.nouse_uuids


@dataclass(frozen=True, slots=True)
class PodRequest:
    """A pod as the core sees it: containers (init first, then app) and its placement preferences.

    `node_policy` and `device_policy` are None when the pod did not choose; the framework then uses the
    cluster defaults. `device_policy` is a comma chain such as ("binpack", "numa").
    """

    namespace: str
    name: str
    uid: str
    containers: tuple[ContainerRequest, ...]
    selector: DeviceSelector = field(default_factory=DeviceSelector)
    node_policy: str | None = None
    device_policy: tuple[str, ...] = ()
    node_name: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def wants_devices(self) -> bool:
        return any(c.devices for c in self.containers)

    @property
    def cpu_milli(self) -> int:
        """Effective pod CPU: max(peak init container, sum of app containers), as kube-scheduler counts."""
        init = max((c.cpu_milli for c in self.containers if c.init), default=0)
        return max(init, sum(c.cpu_milli for c in self.containers if not c.init))

    @property
    def memory_mib(self) -> int:
        init = max((c.memory_mib for c in self.containers if c.init), default=0)
        return max(init, sum(c.memory_mib for c in self.containers if not c.init))


@dataclass(frozen=True, slots=True)
class Device:
    """One physical device as its node registered it (SPEC §2). `memory_mib` and `cores` already include
    the node's scaling; `count` is the split count (how many tasks may share it)."""

    uuid: str
    index: int
    count: int
    memory_mib: int
    cores: int
    type: str
    vendor: str = "NVIDIA"
    numa: int = 0
    mode: str = "hami-core"
    health: bool = True
    mig_profiles: tuple[dict[str, object], ...] = ()


@dataclass(frozen=True, slots=True)
class Node:
    """A node as the core sees it: its devices, its allocatable CPU/memory and the admin's cordons.

    `cpu_milli`/`memory_mib` of 0 mean "not tracked" (the extender leaves those to kube-scheduler).
    `topology` maps (uuid, uuid) to a link score from `hami.io/node-nvidia-score`.
    """

    name: str
    devices: tuple[Device, ...] = ()
    cpu_milli: int = 0
    memory_mib: int = 0
    cordoned: frozenset[str] = frozenset()
    topology: tuple[tuple[str, str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class ContainerDevice:
    """One device share handed to one container: what `hami.io/vgpu-devices-allocated` encodes."""

    uuid: str
    vendor: str
    memory_mib: int
    cores: int


ContainerAllocation = tuple[ContainerDevice, ...]
PodAllocation = tuple[ContainerAllocation, ...]
"""One entry per container, init containers first, in PodRequest.containers order."""
