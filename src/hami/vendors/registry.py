"""The one place vendors are registered: built-ins plus third-party packages via entry points.

A third-party package declares, in its pyproject.toml,
`[project.entry-points."hami.vendors"] acme = "acme_hami:AcmeVendor"`; the object may be a Vendor instance
or a zero-argument callable (a class, a factory) returning one. Built-ins win a name clash.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from importlib.metadata import entry_points
from typing import cast

from hami.resources import HamiError
from hami.vendors.base import Vendor
from hami.vendors.nvidia import NvidiaVendor

ENTRY_POINT_GROUP = "hami.vendors"
_log = logging.getLogger(__name__)
_MEMBERS = ("name", "annotations", "resource_names", "container_request", "default_resources",
            "selector", "node_devices")


def _is_vendor(obj: object) -> bool:
    return not isinstance(obj, type) and all(hasattr(obj, m) for m in _MEMBERS)


@cache
def default_vendors() -> tuple[Vendor, ...]:
    """NVIDIA (default config) and every installed `hami.vendors` entry point, loaded once.

    A plugin that fails to load is an error, not a silent omission: pods for it would go unscheduled.
    """
    vendors: list[Vendor] = [NvidiaVendor()]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {ENTRY_POINT_GROUP}:{ep.name}"
        try:
            obj = ep.load()
            vendor = obj if _is_vendor(obj) else obj()
        except Exception as exc:
            raise HamiError(where, f"cannot load {ep.value}: {exc}") from exc
        if not _is_vendor(vendor):
            raise HamiError(where, f"{ep.value} is not a Vendor (needs {', '.join(_MEMBERS)})")
        vendor = cast(Vendor, vendor)
        if any(v.name == vendor.name for v in vendors):
            _log.warning("%s: vendor %s already registered, ignored", where, vendor.name)
            continue
        vendors.append(vendor)
    return tuple(vendors)


def vendor_for_resource(name: str, vendors: Sequence[Vendor] | None = None) -> Vendor | None:
    """The vendor owning a container resource name, or None for resources no vendor manages."""
    for vendor in default_vendors() if vendors is None else vendors:
        if name in vendor.resource_names():
            return vendor
    return None


def managed_resources(vendors: Sequence[Vendor] | None = None) -> frozenset[str]:
    """Every resource name some vendor owns (the extender's managedResources, the webhook's trigger)."""
    found: set[str] = set()
    for vendor in default_vendors() if vendors is None else vendors:
        found |= vendor.resource_names()
    return frozenset(found)
