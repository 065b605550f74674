"""What a node agent finds on its node, behind one interface for every discovery backend.

A backend answers two questions: which devices are here (`discover`, a snapshot) and which of them changed
health since (`health_changes`, a stream). NVML answers them on a GPU node; the fake backend answers them
from a YAML file for tests, demos and GPU-less clusters. Everything downstream (registration, the kubelet
device plugin) sees only these values.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

# Pair scores of `hami.io/node-nvidia-score`, as HAMi computes them (pkg/device/nvidia topology): the PCIe
# distance of a pair gives 10-60, every NVLink between the two adds 100, so NVLink always dominates.
PCIE_SAME_BOARD = 60
PCIE_SINGLE_SWITCH = 50
PCIE_MULTI_SWITCH = 40
PCIE_HOST_BRIDGE = 30
PCIE_SAME_CPU = 20
PCIE_CROSS_CPU = 10
NVLINK_SCORE = 100


class DiscoveryError(Exception):
    """The backend cannot see the node's devices (no driver, unreadable file). The message says what to fix."""


@dataclass(frozen=True, slots=True)
class DiscoveredDevice:
    """One physical device as the hardware reports it: no split count or scaling applied yet.

    `numa` is -1 when the platform does not say (registered as 0, advertised to kubelet without topology).
    """

    uuid: str
    index: int
    model: str
    memory_mib: int
    numa: int = -1
    healthy: bool = True
    mig_capable: bool = False


@dataclass(frozen=True, slots=True)
class Inventory:
    """Every device of the node and the link score of each ordered pair (uuid, peer, score)."""

    devices: tuple[DiscoveredDevice, ...]
    links: tuple[tuple[str, str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A device turned unhealthy (or healthy again); `reason` ends up in logs and the node's registration."""

    uuid: str
    healthy: bool
    reason: str = ""


class Backend(Protocol):
    """A discovery backend. `discover` may block briefly (it is called at start and on re-registration);
    `health_changes` runs for the agent's lifetime and ends only when the backend is closed."""

    name: str

    def discover(self) -> Inventory:
        """The node's devices now; raises DiscoveryError when they cannot be seen at all."""
        ...

    def health_changes(self) -> AsyncIterator[HealthChange]: ...

    def close(self) -> None: ...


def pair_score(pcie: int, nvlinks: int) -> int:
    """HAMi's pair score: the PCIe distance score plus 100 per NVLink."""
    return pcie + NVLINK_SCORE * nvlinks
