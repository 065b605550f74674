"""Which allocation annotations to believe: a tenant who may patch its own pod can rewrite them.

An allocation counts only on a pod that a trusted scheduler schedules (`spec.schedulerName` is immutable, and
the webhook sets it on device pods), and only as the pod's request says: spec resources are immutable after
creation, so a rewritten `…,1,0:` is counted as requested, never as less. The scheduler's state conversion
and the node agent apply this one rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hami.protocol.manifests import map_or_empty
from hami.resources import ContainerAllocation, ContainerDevice, DeviceRequest

DEFAULT_SCHEDULER = "hami-scheduler"
KUBE_DEFAULT_SCHEDULER = "default-scheduler"  # what the API server writes when a pod names no scheduler
UNTRUSTED_ALLOCATION = "UntrustedAllocation"  # Event reason


def scheduler_of(pod: Mapping[str, Any]) -> str:
    return str(map_or_empty(pod, "spec").get("schedulerName") or KUBE_DEFAULT_SCHEDULER)


def untrusted_scheduler(pod: Mapping[str, Any], trusted: Sequence[str]) -> str:
    """"" when one of the `trusted` schedulers schedules the pod, else why its allocation cannot count."""
    name = scheduler_of(pod)
    if name in trusted:
        return ""
    return f"pod is scheduled by {name}, not {' or '.join(trusted)}"


def as_requested(wanted: Sequence[DeviceRequest], devices: ContainerAllocation,
                 memory: Callable[[str], int | None]) -> tuple[ContainerAllocation, bool]:
    """(the devices as they count, whether they are exactly what the container asked for).

    Per vendor asked for: the first `count` devices named, each at exactly the requested cores and memory
    (`memory(uuid)` is the device's registered MiB, for percentage requests; None when unknown, and then the
    annotated memory stands). Devices of a vendor the container did not ask for count for nothing.
    """
    counted: list[ContainerDevice] = []
    exact = True
    for request in wanted:
        named = [d for d in devices if d.vendor == request.vendor]
        shares = [_at_share(d, request, memory(d.uuid)) for d in named[:request.count]]
        exact = exact and len(named) == request.count and shares == named
        counted.extend(shares)
    exact = exact and len(counted) == len(devices)
    return (devices, True) if exact else (tuple(counted), False)


def _at_share(device: ContainerDevice, request: DeviceRequest, device_memory: int | None) -> ContainerDevice:
    if request.memory_mib:
        memory = request.memory_mib
    elif device_memory is not None:
        memory = request.memory_for(device_memory)
    else:
        memory = device.memory_mib  # a share of a device not known (yet): as annotated
    return dataclasses.replace(device, memory_mib=memory, cores=request.cores)


def describe(wanted: Sequence[DeviceRequest]) -> str:
    """A container's request in words, for messages: `1 NVIDIA device(s) at 4000 MiB, 25% cores`."""
    parts = [f"{r.count} {r.vendor} device(s) at "
             f"{f'{r.memory_mib} MiB' if r.memory_mib else f'{r.memory_pct}% memory'}, {r.cores}% cores"
             for r in wanted]
    return "; ".join(parts) or "no devices"
