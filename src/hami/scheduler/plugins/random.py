"""random: a uniformly random feasible node, and a random GPU on it for a sharing task (the paper's
Random baseline). Whole-card requests take the lowest-indexed idle cards, as the paper's artifact does."""

from __future__ import annotations

from hami.scheduler.fit import DeviceView
from hami.scheduler.framework import DevicePolicy, PlacementContext, Slot
from hami.scheduler.plugins import register_device_policy, register_node_scorer
from hami.scheduler.plugins.gpushare import FloatArray, IntArray, Seeded


class RandomNodes(Seeded):
    name = "random"

    def score(self, ctx: PlacementContext, nodes: IntArray) -> FloatArray:
        return self.jitter(len(nodes))


class RandomDevices(DevicePolicy, Seeded):
    name = "random"

    def rank(self, ctx: PlacementContext, node: int, slot: Slot, view: DeviceView,
             cand: IntArray) -> FloatArray | None:
        if slot.request.exclusive:
            return None
        return self.jitter(len(cand))


register_node_scorer("random", RandomNodes)
register_device_policy("random", RandomDevices)
