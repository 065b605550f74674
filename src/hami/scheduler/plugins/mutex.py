"""mutex: the pod's devices carry no other pod's tasks (its own containers may still share them).

The check itself is a fit rule (fit.device_reasons, ExclusiveDeviceAllocateConflict): naming `mutex` in
the pod's policy chain turns it on. As a ranker it has no opinion, so `mutex,binpack` ranks by binpack.
"""

from __future__ import annotations

from hami.scheduler.framework import DevicePolicy
from hami.scheduler.plugins import register_device_policy


class MutexDevices(DevicePolicy):
    name = "mutex"


register_device_policy("mutex", MutexDevices)
