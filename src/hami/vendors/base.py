"""The vendor interface: what differs between accelerator vendors, and nothing else.

The fit loop, scoring and accounting are shared (scheduler/); a vendor only says which resource names it
owns, how a container's limits become a DeviceRequest, what admission defaults apply, and which
annotations carry its registration and allocations. A new vendor is one module registered in
`hami.vendors.registry`, never a branch in shared code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from hami.resources import Device, DeviceRequest, DeviceSelector


@dataclass(frozen=True, slots=True)
class VendorAnnotations:
    """Annotation names of one vendor's HAMi protocol (SPEC §2-3)."""

    register: str  # node: device registration
    allocated: str  # pod: full allocation, source of truth
    to_allocate: str  # pod: containers still waiting for the device plugin
    handshake: str  # node: scheduler/agent handshake


class Vendor(Protocol):
    """One accelerator vendor. Implementations are stateless apart from their configuration."""

    name: str  # the vendor string in allocation annotations, e.g. "NVIDIA"
    annotations: VendorAnnotations

    @property
    def count_resource(self) -> str:
        """The device-count resource kubelet reports in allocatable, e.g. "nvidia.com/gpu"."""
        ...

    def resource_names(self) -> frozenset[str]:
        """Container resource names this vendor owns (limits keys)."""
        ...

    def container_request(self, resources: Mapping[str, Any], field_prefix: str) -> DeviceRequest | None:
        """The device request of one container's limits (after admission defaults), or None.

        Raises HamiError naming `field_prefix` + the resource on malformed values.
        """
        ...

    def default_resources(self, resources: Mapping[str, Any], field_prefix: str) -> dict[str, str]:
        """Resource limits to add so the request is explicit (SPEC §1 defaults); {} when none apply.

        Raises HamiError for requests the webhook must reject.
        """
        ...

    def selector(self, annotations: Mapping[str, str]) -> DeviceSelector:
        """The pod's device constraints from its annotations."""
        ...

    def node_devices(self, annotations: Mapping[str, str], node_name: str) -> tuple[Device, ...]:
        """The devices a node registered; () when it registered none. HamiError when malformed."""
        ...
