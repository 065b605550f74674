"""ClusterState from Kubernetes objects: the one conversion the informer, `hami place`, the demo and
restart recovery share, so "the state equals what the annotations say" holds by construction."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hami.protocol import manifests
from hami.resources import HamiError
from hami.scheduler.state import ClusterState, PodRecord
from hami.vendors.base import Vendor

_log = logging.getLogger(__name__)


def pod_record(pod: Mapping[str, Any], vendors: Sequence[Vendor]) -> PodRecord | None:
    """The usage a pod holds, or None when it holds nothing (no allocation, or finished).

    A pod that requests no managed device holds nothing whatever its annotations say: an allocation
    annotation on it can only be forged (the webhook strips them, this is the second line of defence).
    """
    if manifests.pod_is_terminal(pod):
        return None
    placed = manifests.pod_allocation(pod, vendors)
    if placed is None:
        return None
    node, allocation = placed
    request = manifests.pod_request(pod, vendors)
    if not request.wants_devices:
        return None
    init = tuple(c.init for c in request.containers)
    return PodRecord(request.uid or request.key, request.key, node, allocation, init,
                     request.cpu_milli, request.memory_mib)


def state_from_manifests(nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]],
                         vendors: Sequence[Vendor]) -> ClusterState:
    state = ClusterState()
    for node in nodes:
        state.upsert_node(manifests.node_from_manifest(node, vendors))
    for pod in pods:
        try:
            record = pod_record(pod, vendors)
        except HamiError as exc:
            # One malformed pod must not stop the rebuild; it holds nothing we can account.
            meta = pod.get("metadata") or {}
            _log.warning("pod %s/%s skipped: %s", meta.get("namespace"), meta.get("name"), exc)
            continue
        if record is not None:
            state.add_pod(record)
    return state
