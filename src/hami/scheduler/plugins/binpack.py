"""binpack: fill the fullest node and device first, keeping whole nodes and cards free for big jobs."""

from __future__ import annotations

from hami.scheduler.fit import DeviceView
from hami.scheduler.framework import DevicePolicy, PlacementContext, Slot
from hami.scheduler.plugins import register_device_policy, register_node_scorer
from hami.scheduler.plugins.usage import FloatArray, IntArray, device_usage, node_usage


class BinpackNodes:
    name = "binpack"

    def score(self, ctx: PlacementContext, nodes: IntArray) -> FloatArray:
        return node_usage(ctx.state, nodes)


class BinpackDevices(DevicePolicy):
    name = "binpack"

    def rank(self, ctx: PlacementContext, node: int, slot: Slot, view: DeviceView,
             cand: IntArray) -> FloatArray | None:
        return -device_usage(view, cand)


register_node_scorer("binpack", BinpackNodes)
register_device_policy("binpack", BinpackDevices)
