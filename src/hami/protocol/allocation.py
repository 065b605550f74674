"""The pod annotations that record a placement (SPEC §3), written in the same call that binds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from hami.protocol import annotations as anno
from hami.resources import PodAllocation
from hami.vendors.base import Vendor


def allocation_annotations(allocation: PodAllocation, node: str, vendors: Sequence[Vendor],
                           now: datetime) -> dict[str, str]:
    """Per vendor with devices in the allocation: the full allocation and the to-allocate copy the
    device plugin consumes; plus the node, the decision time and `bind-phase: allocating`."""
    out: dict[str, str] = {}
    for vendor in vendors:
        part = tuple(tuple(d for d in c if d.vendor == vendor.name) for c in allocation)
        if any(part):
            encoded = anno.encode_pod_allocation(part)
            out[vendor.annotations.allocated] = encoded
            out[vendor.annotations.to_allocate] = encoded
    stamp = str(int(now.timestamp()))
    out[anno.VGPU_NODE] = node
    out[anno.VGPU_TIME] = stamp
    out[anno.BIND_PHASE] = anno.BIND_PHASE_ALLOCATING
    out[anno.BIND_TIME] = stamp
    return out
