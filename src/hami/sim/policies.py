"""Named placement policies for the simulator: each is a node scorer plus a device ranking chain, i.e.
exactly the SchedulerConfig the extender would run with."""

from __future__ import annotations

from dataclasses import dataclass

from hami.resources import HamiError
from hami.scheduler.framework import SchedulerConfig


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    node_policy: str
    device_policy: tuple[str, ...]
    about: str
    oracle: bool = False  # handed the whole trace's task shapes up front (the paper's FGD setting)

    def config(self) -> SchedulerConfig:
        return SchedulerConfig(node_policy=self.node_policy, device_policy=self.device_policy)


POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("random", "random", ("random",), "a uniformly random feasible node and GPU (paper baseline)"),
    Policy("dotprod", "dotprod", ("bestfit",), "Tetris dot product of free and requested (CPU, GPU)"),
    Policy("bestfit", "bestfit", ("bestfit",), "least (CPU, GPU) left over after placement"),
    Policy("packing", "packing", ("bestfit",), "shared GPUs first, then used nodes, then idle nodes"),
    Policy("clustering", "clustering", ("bestfit",), "nodes already running tasks of the same GPU shape"),
    Policy("fgd", "fgd", ("fgd",), "fragmentation gradient descent, target workload from the whole trace",
           oracle=True),
    Policy("frag-aware", "frag-aware", ("frag-aware",), "Hami: learned-workload fragmentation + stranding"),
    Policy("hami-default", "binpack", ("spread",), "HAMi's defaults: node binpack, GPU spread"),
)}


def policy(name: str) -> Policy:
    found = POLICIES.get(name)
    if found is None:
        raise HamiError("policy", f"unknown policy {name!r} (known: {', '.join(POLICIES)})")
    return found
