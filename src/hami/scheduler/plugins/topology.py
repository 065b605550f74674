"""topology-aware: choose the device set with the strongest links (NVLink over PCIe) from the node's
`hami.io/node-nvidia-score` registration. Greedy: start from the best-ranked device, then add the
device with the highest total link score to those already chosen."""

from __future__ import annotations

import numpy as np

from hami.scheduler.fit import DeviceView
from hami.scheduler.framework import DevicePolicy, PlacementContext, Slot
from hami.scheduler.plugins import register_device_policy
from hami.scheduler.plugins.usage import IntArray


class TopologyDevices(DevicePolicy):
    name = "topology-aware"
    picks = True

    def pick(self, ctx: PlacementContext, node: int, slot: Slot, view: DeviceView,
             ordered: IntArray) -> IntArray | None:
        count = slot.request.count
        if len(ordered) < count:
            return None
        info = ctx.state.nodes[node]
        if count == 1 or info is None or not info.topology:
            return ordered[:count]
        slots = ctx.state.node_devices[node]
        uuid = [ctx.state.dev_uuid[s] for s in slots.tolist()]
        link: dict[tuple[str, str], int] = {}
        for a, b, score in info.topology:
            link[(a, b)] = link[(b, a)] = max(score, link.get((a, b), 0))
        chosen = [int(ordered[0])]
        rest = [int(i) for i in ordered[1:]]
        while len(chosen) < count:
            # max() keeps the first of equals, i.e. the better-ranked device.
            best = max(rest, key=lambda i: sum(link.get((uuid[i], uuid[j]), 0) for j in chosen))
            chosen.append(best)
            rest.remove(best)
        return np.array(chosen, np.int64)


register_device_policy("topology-aware", TopologyDevices)
register_device_policy("topology", TopologyDevices)
