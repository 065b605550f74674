"""`hami place`: admission defaults, then one placement decision, as data a person or a script reads.

Shared by the CLI and the demo so both show exactly what the webhook and the extender would do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from hami.admission import admit, apply_patch
from hami.protocol import manifests
from hami.protocol.allocation import allocation_annotations
from hami.scheduler.framework import Decision, Scheduler
from hami.scheduler.state import ClusterState
from hami.vendors.base import Vendor


@dataclass(frozen=True, slots=True)
class Placement:
    decision: Decision
    annotations: dict[str, str]
    admitted_pod: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        d = self.decision
        return {
            "node": d.node,
            "containers": [[{"uuid": x.uuid, "vendor": x.vendor, "memory": x.memory_mib, "cores": x.cores}
                            for x in c] for c in d.allocation],
            "annotations": self.annotations,
            "rejected": dict(d.rejected),
        }


def place(pod: Mapping[str, Any], state: ClusterState, scheduler: Scheduler, vendors: Sequence[Vendor],
          now: datetime | None = None) -> Placement:
    """Apply the webhook's mutation, then decide. Raises HamiError for a pod the webhook would deny."""
    admitted = apply_patch(pod, admit(pod, vendors))
    request = manifests.pod_request(admitted, vendors)
    if not request.uid:  # a manifest not yet created has no uid; the key identifies it in the state
        request = replace(request, uid=request.key)
    decision = scheduler.schedule(request, state)
    annotations = {}
    if decision.node is not None:
        annotations = allocation_annotations(decision.allocation, decision.node, vendors,
                                             now or datetime.now(UTC))
    return Placement(decision, annotations, admitted)


def explain(p: Placement) -> str:
    """The decision in words: where the pod goes and on which devices, or why no node fits."""
    d = p.decision
    lines = []
    if d.node is None:
        lines.append(f"{d.pod.key}: unschedulable, no node fits")
    else:
        lines.append(f"{d.pod.key} -> {d.node}")
        for container, devices in zip(d.pod.containers, d.allocation, strict=True):
            if devices:
                shares = ", ".join(f"{x.uuid} ({x.memory_mib} MiB, {x.cores}% cores)" for x in devices)
                lines.append(f"  {'init ' if container.init else ''}container {container.name}: {shares}")
    if d.rejected:
        lines.append("rejected nodes:")
        lines.extend(f"  {name}: {reason}" for name, reason in sorted(d.rejected.items()))
    return "\n".join(lines)
