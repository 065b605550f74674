"""spread: the emptiest node and device first, so tenants interfere least."""

from __future__ import annotations

from hami.scheduler.fit import DeviceView
from hami.scheduler.framework import DevicePolicy, PlacementContext, Slot
from hami.scheduler.plugins import register_device_policy, register_node_scorer
from hami.scheduler.plugins.usage import FloatArray, IntArray, device_usage, node_usage


class SpreadNodes:
    name = "spread"

    def score(self, ctx: PlacementContext, nodes: IntArray) -> FloatArray:
        return -node_usage(ctx.state, nodes)


class SpreadDevices(DevicePolicy):
    name = "spread"

    def rank(self, ctx: PlacementContext, node: int, slot: Slot, view: DeviceView,
             cand: IntArray) -> FloatArray | None:
        # Fewest tenants first; among equals, the least used.
        return view.count_used[cand] + device_usage(view, cand)


register_node_scorer("spread", SpreadNodes)
register_device_policy("spread", SpreadDevices)
