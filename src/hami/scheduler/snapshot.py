"""Kubernetes objects -> state values: the one conversion the informer (`hami serve`), `hami place`, the demo
and restart recovery share, so both sides hold the same state for the same objects by construction.

A node becomes a `Node` (devices of a stale registration unhealthy, protocol/liveness) or a reason it is
skipped, naming it: one bad node never takes the rest down. A pod becomes the `PodRecord` of what it holds,
believed only as far as protocol/trust allows, with a note saying why when its annotation was not taken as
written, or nothing, with a reason when it cannot be read.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hami.protocol import annotations as anno
from hami.protocol import liveness, manifests, trust
from hami.resources import HamiError, Node
from hami.scheduler.state import ClusterState, PodRecord
from hami.vendors.base import Vendor

_log = logging.getLogger(__name__)

REGISTRATION_EXPIRY_S = 60.0  # a registration this much older than its handshake is stale (protocol/liveness)

NodeLookup = Callable[[str], Node | None]


@dataclass(frozen=True, slots=True)
class NodeState:
    """A Node object as the state takes it: `node`, or None and why it is `skipped`."""

    name: str
    node: Node | None
    skipped: str = ""
    stale: frozenset[str] = frozenset()  # vendors whose devices were marked unhealthy
    recheck_at: float = liveness.NEVER  # when liveness may change without the object changing


@dataclass(frozen=True, slots=True)
class PodState:
    """A Pod object as the state takes it: the usage it holds (None: nothing), `untrusted` when its allocation
    annotation was not taken as written (an UntrustedAllocation Event), `malformed` when it cannot be read."""

    key: str  # namespace/name, for messages
    record: PodRecord | None = None
    untrusted: str = ""
    malformed: str = ""


def node_state(obj: Mapping[str, Any], vendors: Sequence[Vendor], *, now: float,
               expiry_s: float = REGISTRATION_EXPIRY_S) -> NodeState:
    name = str(manifests.map_or_empty(obj, "metadata").get("name") or "")
    try:
        node = manifests.node_from_manifest(obj, vendors)
    except HamiError as exc:
        field = exc.field.removeprefix(f"node/{name} ")
        return NodeState(name, None, skipped=f"node {name or '<unnamed>'} takes no work: {field}: {exc.message}")
    stale, recheck_at = liveness.stale_vendors(obj, vendors, now, expiry_s)
    if stale:
        node = dataclasses.replace(node, devices=tuple(
            dataclasses.replace(d, health=False) if d.vendor in stale else d for d in node.devices))
    return NodeState(name, node, stale=stale, recheck_at=recheck_at)


def pod_state(obj: Mapping[str, Any], vendors: Sequence[Vendor], *, nodes: NodeLookup = lambda _: None,
              trusted: Sequence[str] = (trust.DEFAULT_SCHEDULER,)) -> PodState:
    """What a pod holds. `nodes` finds the pod's node, whose registered device memory a percentage request
    is checked against; `trusted` are the schedulers whose allocations count."""
    meta = manifests.map_or_empty(obj, "metadata")
    key = f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"
    try:
        return _pod_state(obj, key, vendors, nodes, trusted)
    except HamiError as exc:
        return PodState(key, malformed=str(exc))


def _pod_state(obj: Mapping[str, Any], key: str, vendors: Sequence[Vendor], nodes: NodeLookup,
               trusted: Sequence[str]) -> PodState:
    if manifests.pod_is_terminal(obj):
        return PodState(key)
    annotations = manifests.annotations_of(obj)
    written = ", ".join(v.annotations.allocated for v in vendors if v.annotations.allocated in annotations)
    if not written:
        return PodState(key)
    why = trust.untrusted_scheduler(obj, trusted)
    if why:
        return PodState(key, untrusted=f"ignoring {written}: {why}")
    if _failed_unbound(obj, annotations):
        return PodState(key)
    placed = manifests.pod_allocation(obj, vendors)
    if placed is None:
        return PodState(key)
    node, allocation = placed
    request = manifests.pod_request(obj, vendors)
    if not request.wants_devices:
        return PodState(key, untrusted=f"ignoring {written}: the pod requests no devices")
    known = nodes(node)
    # The pod may be seen before its node (the informer lists both at once): a percentage of a device not
    # known yet is taken as annotated, its count and cores still checked; the informer converts the pod
    # again once the node is seen.
    memory = {d.uuid: d.memory_mib for d in (known.devices if known is not None else ())}.get
    counted = []
    differs = []
    for container, devices in zip(request.containers, allocation, strict=True):
        share, exact = trust.as_requested(container.devices, devices, memory)
        counted.append(share)
        if not exact:
            differs.append(container.name)
    record = PodRecord(request.uid or request.key, request.key, node, tuple(counted),
                       tuple(c.init for c in request.containers), request.cpu_milli, request.memory_mib,
                       mutex="mutex" in request.device_policy)
    if not differs:
        return PodState(key, record)
    return PodState(key, record, untrusted=f"{written} does not match the pod's request (container "
                                           f"{', '.join(differs)}); counted as requested")


def _failed_unbound(obj: Mapping[str, Any], annotations: Mapping[str, str]) -> bool:
    """HAMi's own scheduler writes the allocation before binding and marks `bind-phase: failed` when the
    bind fails; such a pod holds nothing until it is scheduled again."""
    return (annotations.get(anno.BIND_PHASE) == anno.BIND_PHASE_FAILED
            and not manifests.map_or_empty(obj, "spec").get("nodeName"))


def node_lookup(state: ClusterState) -> NodeLookup:
    """The state's live nodes by name, for pod_state."""
    def find(name: str) -> Node | None:
        index = state.node_index.get(name)
        return None if index is None else state.nodes[index]
    return find


def state_from_manifests(nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]],
                         vendors: Sequence[Vendor], *, now: float | None = None,
                         expiry_s: float = REGISTRATION_EXPIRY_S,
                         trusted: Sequence[str] = (trust.DEFAULT_SCHEDULER,),
                         report: Callable[[str], None] | None = None) -> ClusterState:
    """The state the objects describe at `now` (default: the current time). Each skipped node, unreadable
    pod and untrusted allocation is one line to `report` (default: a warning in the log)."""
    say = report or (lambda line: _log.warning("%s", line))
    at = time.time() if now is None else now
    state = ClusterState()
    for obj in nodes:
        node = node_state(obj, vendors, now=at, expiry_s=expiry_s)
        if node.node is None:
            say(node.skipped)
        else:
            state.upsert_node(node.node)
    find = node_lookup(state)
    for obj in pods:
        pod = pod_state(obj, vendors, nodes=find, trusted=trusted)
        if pod.malformed:
            say(f"pod {pod.key} holds nothing: {pod.malformed}")
        if pod.untrusted:
            say(f"pod {pod.key}: {pod.untrusted}")
        if pod.record is not None:
            state.add_pod(pod.record)
    return state
