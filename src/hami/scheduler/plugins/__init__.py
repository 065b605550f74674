"""Policy plugins, registered by name. A new policy is a module that calls `register_*` at import and is
listed in `_BUILTIN` (or published under the `hami.policies` entry point group by a third party)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from hami.resources import HamiError

if TYPE_CHECKING:
    from hami.scheduler.framework import DevicePolicy, NodeScorer

_NODE: dict[str, Callable[[], NodeScorer]] = {}
_DEVICE: dict[str, Callable[[], DevicePolicy]] = {}
_BUILTIN = ("binpack", "spread", "mutex", "numa", "topology", "random", "bestfit", "dotprod", "packing",
            "clustering", "fgd", "frag_aware")
_loaded = False


def register_node_scorer(name: str, factory: Callable[[], NodeScorer]) -> None:
    _NODE[name] = factory


def register_device_policy(name: str, factory: Callable[[], DevicePolicy]) -> None:
    _DEVICE[name] = factory


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN:
        importlib.import_module(f"hami.scheduler.plugins.{module}")
    for ep in entry_points(group="hami.policies"):
        ep.load()


def make_node_scorer(name: str) -> NodeScorer:
    _load()
    if name not in _NODE:
        known = ", ".join(sorted(_NODE))
        raise HamiError("node-scheduler-policy", f"unknown policy {name!r} (known: {known})")
    return _NODE[name]()


def make_device_policy(name: str) -> DevicePolicy:
    _load()
    if name not in _DEVICE:
        known = ", ".join(sorted(_DEVICE))
        raise HamiError("gpu-scheduler-policy", f"unknown policy {name!r} (known: {known})")
    return _DEVICE[name]()


def node_policies() -> list[str]:
    _load()
    return sorted(_NODE)


def device_policies() -> list[str]:
    _load()
    return sorted(_DEVICE)
