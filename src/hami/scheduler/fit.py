"""Whether a device can take one container's request, and if not, why.

One vectorised function serves both the cluster-wide pre-filter (all device slots at once) and the
exact fit on the chosen node (that node's slots with the pod's own earlier containers added), so the two
can never disagree about what fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from hami.resources import DeviceRequest

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class Reason(IntEnum):
    """Why a device does not fit, in SPEC §3's vocabulary. Lower values are reported first."""

    FITS = 0
    CARD_NOT_HEALTH = 1
    CARD_CORDONED = 2
    CARD_TYPE_MISMATCH = 3
    CARD_UUID_MISMATCH = 4
    MODE_NOT_FIT = 5
    EXCLUSIVE_CONFLICT = 6
    COMPUTE_UNITS_EXHAUSTED = 7
    TIME_SLICING_EXHAUSTED = 8
    INSUFFICIENT_MEMORY = 9
    INSUFFICIENT_CORE = 10


REASON_NAMES = {
    Reason.CARD_NOT_HEALTH: "CardNotHealth",
    Reason.CARD_CORDONED: "CardCordoned",
    Reason.CARD_TYPE_MISMATCH: "CardTypeMismatch",
    Reason.CARD_UUID_MISMATCH: "CardUuidMismatch",
    Reason.MODE_NOT_FIT: "ModeNotFit",
    Reason.EXCLUSIVE_CONFLICT: "ExclusiveDeviceAllocateConflict",
    Reason.COMPUTE_UNITS_EXHAUSTED: "CardComputeUnitsExhausted",
    Reason.TIME_SLICING_EXHAUSTED: "CardTimeSlicingExhausted",
    Reason.INSUFFICIENT_MEMORY: "CardInsufficientMemory",
    Reason.INSUFFICIENT_CORE: "CardInsufficientCore",
}


@dataclass(slots=True)
class DeviceView:
    """Parallel arrays over some device slots: the whole cluster, or one node during exact fit."""

    valid: BoolArray
    health: BoolArray
    cordoned: BoolArray
    type: IntArray
    mode: IntArray
    vendor: IntArray
    mem_total: IntArray
    mem_used: IntArray
    core_total: IntArray
    core_used: IntArray
    count_total: IntArray
    count_used: IntArray


@dataclass(frozen=True, slots=True)
class DeviceConstraint:
    """A request's constraints resolved against the state's interned ids (computed once per pod)."""

    vendor: int  # interned vendor id, -1 if no device of this vendor is registered
    type_ok: BoolArray  # indexed by interned type id
    uuid_ok: BoolArray | None  # per slot of the view, None when the pod names no UUIDs
    mode: int | None  # interned mode id required, None for any; -1 for a mode no device has
    mutex: bool  # the pod wants devices no other pod uses


def device_reasons(req: DeviceRequest, c: DeviceConstraint, v: DeviceView) -> IntArray:
    """Reason code per device slot (0 = this request fits on it now). Invalid slots get TYPE_MISMATCH."""
    n = len(v.valid)
    codes = np.zeros(n, np.int64)
    mem_free = v.mem_total - v.mem_used
    core_free = v.core_total - v.core_used
    need_mem = req.memory_mib if req.memory_mib else v.mem_total * req.memory_pct // 100
    # Assigned from the least to the most important, so the most important reason wins.
    codes[core_free < req.cores] = Reason.INSUFFICIENT_CORE
    codes[mem_free < need_mem] = Reason.INSUFFICIENT_MEMORY
    codes[v.count_used >= v.count_total] = Reason.TIME_SLICING_EXHAUSTED
    codes[(v.core_used >= v.core_total) & (v.core_total > 0)] = Reason.COMPUTE_UNITS_EXHAUSTED
    if req.exclusive or c.mutex:
        codes[v.count_used > 0] = Reason.EXCLUSIVE_CONFLICT
    if c.mode is not None:
        codes[v.mode != c.mode] = Reason.MODE_NOT_FIT
    if c.uuid_ok is not None:
        codes[~c.uuid_ok] = Reason.CARD_UUID_MISMATCH
    type_ok = c.type_ok[v.type] & (v.vendor == c.vendor) & v.valid
    codes[~type_ok] = Reason.CARD_TYPE_MISMATCH
    codes[v.cordoned] = Reason.CARD_CORDONED
    codes[~v.health] = Reason.CARD_NOT_HEALTH
    codes[~v.valid] = Reason.CARD_TYPE_MISMATCH
    return codes


def could_ever_fit(req: DeviceRequest, c: DeviceConstraint, v: DeviceView) -> BoolArray:
    """Devices that could take the request if every other pod left: used to tell kube-scheduler which
    nodes preemption cannot help (FailedAndUnresolvableNodes)."""
    need_mem = req.memory_mib if req.memory_mib else v.mem_total * req.memory_pct // 100
    ok = v.valid & v.health & ~v.cordoned & c.type_ok[v.type] & (v.vendor == c.vendor)
    ok &= (v.mem_total >= need_mem) & (v.core_total >= req.cores) & (v.count_total > 0)
    if c.uuid_ok is not None:
        ok &= c.uuid_ok
    if c.mode is not None:
        ok &= v.mode == c.mode
    result: BoolArray = ok
    return result
