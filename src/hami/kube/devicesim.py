"""A stand-in for HAMi's device plugins on a cluster without kubelets (`hami serve --cluster-file`, tests).

After a bind, a real device plugin serves the pod's containers, blanks `vgpu-devices-to-allocate`, sets
`bind-phase: success` and releases the node lock. Without one, every node lock would be held until it
expires. This does the same protocol steps as soon as it sees a bound pod in `allocating` phase, so the
scheduler side (locks, phases, annotations) runs exactly as it would in a cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from hami.kube.api import ApiError, KubeApi, WatchEvent
from hami.kube.nodelock import release_node_lock
from hami.protocol import annotations as anno
from hami.vendors.base import Vendor

log = logging.getLogger(__name__)

ACKNOWLEDGED_KEPT = 10_000


class DevicePluginSimulator:
    """Every node has its own device plugin, so pods are acknowledged concurrently (bounded), not one
    after another: a single sequential loop would hold every node's lock behind a cluster-wide queue."""

    def __init__(self, api: KubeApi, vendors: Sequence[Vendor], concurrency: int = 32) -> None:
        self.api = api
        self.vendors = tuple(vendors)
        self.allocated = 0
        self._slots = asyncio.Semaphore(concurrency)
        # pod -> the newest event not yet handled, while a task works on that pod
        self._in_flight: dict[tuple[str, str], WatchEvent] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # uids acknowledged lately: an event from before our own patch must not acknowledge a pod twice
        self._acknowledged: OrderedDict[str, None] = OrderedDict()

    async def run(self) -> None:
        try:
            await self._watch()
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def _watch(self) -> None:
        rv = ""
        while True:
            try:
                if not rv:
                    listed = await self.api.list("pods")
                    rv = listed.resource_version
                    for pod in listed.items:
                        self._spawn(WatchEvent("ADDED", pod))
                async for event in self.api.watch("pods", resource_version=rv):
                    new_rv = (event.object.get("metadata") or {}).get("resourceVersion")
                    if new_rv:
                        rv = new_rv
                    self._spawn(event)
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():  # see informer._check_cancelled
                        raise asyncio.CancelledError
            except ApiError as exc:
                if exc.status == 410:
                    rv = ""
                    continue
                log.warning("device plugin simulator: %s", exc)
                await asyncio.sleep(1.0)

    def _spawn(self, event: WatchEvent) -> None:
        meta = event.object.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if key in self._in_flight:
            # That pod is being handled from an older event, which may predate its bind: keep the newest
            # one for the same task (dropping it left bound pods unacknowledged, their node locked).
            self._in_flight[key] = event
            return
        self._in_flight[key] = event

        async def one() -> None:
            try:
                async with self._slots:
                    while True:
                        current = self._in_flight[key]
                        await self.handle(current)
                        if self._in_flight[key] is current:
                            break
            finally:
                del self._in_flight[key]

        task = asyncio.create_task(one())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, event: WatchEvent) -> None:
        if event.type not in ("ADDED", "MODIFIED"):
            return
        pod = event.object
        meta: Mapping[str, Any] = pod.get("metadata") or {}
        annotations: Mapping[str, str] = meta.get("annotations") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        uid = str(meta.get("uid", ""))
        if not node or annotations.get(anno.BIND_PHASE) != anno.BIND_PHASE_ALLOCATING or uid in self._acknowledged:
            return
        namespace, name = meta.get("namespace", "default"), meta.get("name", "")
        patch: dict[str, str | None] = {anno.BIND_PHASE: anno.BIND_PHASE_SUCCESS}
        for vendor in self.vendors:
            pending = annotations.get(vendor.annotations.to_allocate)
            if pending:
                count = len(anno.decode_pod_allocation(pending, annotation=vendor.annotations.to_allocate))
                patch[vendor.annotations.to_allocate] = ";" * count
        try:
            await self.api.patch_annotations("pods", name, patch, namespace=namespace)
            await release_node_lock(self.api, node, namespace, name)
            self.allocated += 1
            self._acknowledged[uid] = None
            if len(self._acknowledged) > ACKNOWLEDGED_KEPT:
                self._acknowledged.popitem(last=False)
        except ApiError as exc:
            log.warning("device plugin simulator: %s/%s on %s: %s", namespace, name, node, exc)
