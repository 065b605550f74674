"""Whether a node's device registration still speaks for live devices (SPEC §2).

A registration annotation outlives the agent that wrote it: when a device plugin dies, its node keeps
offering GPUs that kubelet can no longer hand out, and every pod placed there fails at admission. SPEC §2:
a node whose registration is older than the expiry and whose allocatable count is 0 is unhealthy. The
registration's age is its handshake's time (HAMi's device plugins write `Reported <time>` every 30 s; ours
answers the scheduler's `Requesting_<time>`; an unanswered request ages from when it was made; HAMi's
`Deleted_` mark is stale at once). The allocatable count is kubelet's word that the device plugin is
serving. Nothing is written: both facts are read from the Node object, so every replica agrees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from hami.protocol import annotations as anno
from hami.protocol.manifests import map_or_empty
from hami.resources import HamiError
from hami.vendors.base import Vendor

NEVER = math.inf


def registration_deadline(annotations: Mapping[str, str], handshake_key: str, expiry_s: float) -> float:
    """Unix time at which the registration goes stale: handshake time + expiry; NEVER when there is no
    handshake or it cannot be read (a parse quirk must not take a node out), -inf for `Deleted`."""
    text = annotations.get(handshake_key)
    if not text:
        return NEVER
    try:
        handshake = anno.decode_handshake(text, annotation=handshake_key)
    except HamiError:
        return NEVER
    if handshake.state == "Deleted":
        return -math.inf
    if handshake.at is None:
        return NEVER
    return handshake.at.timestamp() + expiry_s


def allocatable_count(node: Mapping[str, Any], resource: str) -> int:
    """kubelet's allocatable count of a device resource; 0 when absent or unreadable."""
    value = map_or_empty(map_or_empty(node, "status"), "allocatable").get(resource)
    try:
        return int(str(value)) if value is not None else 0
    except ValueError:
        return 0


def stale_vendors(node: Mapping[str, Any], vendors: Sequence[Vendor], now: float,
                  expiry_s: float) -> tuple[frozenset[str], float]:
    """(vendors whose devices on this node are not live at `now`, the next time that can change without the
    node changing: the earliest future deadline of a vendor kubelet reports no devices for)."""
    annotations = map_or_empty(map_or_empty(node, "metadata"), "annotations")
    stale: set[str] = set()
    wake = NEVER
    for vendor in vendors:
        if vendor.annotations.register not in annotations or allocatable_count(node, vendor.count_resource) > 0:
            continue
        deadline = registration_deadline(annotations, vendor.annotations.handshake, expiry_s)
        if deadline <= now:
            stale.add(vendor.name)
        else:
            wake = min(wake, deadline)
    return frozenset(stale), wake
