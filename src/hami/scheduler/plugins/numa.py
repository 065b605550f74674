"""numa: keep a multi-device container's devices on one NUMA node.

`numa` in the policy chain prefers it (falls back to any devices); the `nvidia.com/numa-bind: "true"`
annotation requires it (the node is rejected with NumaNotFit otherwise).
"""

from __future__ import annotations

import numpy as np

from hami.scheduler.fit import DeviceView
from hami.scheduler.framework import DevicePolicy, PlacementContext, Slot
from hami.scheduler.plugins import register_device_policy
from hami.scheduler.plugins.usage import IntArray


class NumaDevices(DevicePolicy):
    name = "numa"
    picks = True
    required = False

    def pick(self, ctx: PlacementContext, node: int, slot: Slot, view: DeviceView,
             ordered: IntArray) -> IntArray | None:
        count = slot.request.count
        numa = ctx.state.dev_numa[ctx.state.node_devices[node]]
        groups: dict[int, list[int]] = {}
        # Groups are visited in the order of their best-ranked device, so the ranking still decides.
        for i in ordered.tolist():
            group = groups.setdefault(int(numa[i]), [])
            group.append(i)
            if len(group) == count:
                return np.array(group, np.int64)
        if self.required:
            return None
        return ordered[:count] if len(ordered) >= count else None


class NumaBindDevices(NumaDevices):
    name = "numa-bind"
    required = True


register_device_policy("numa", NumaDevices)
register_device_policy("numa-bind", NumaBindDevices)
