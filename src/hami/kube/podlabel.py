"""The `hami.io/vgpu-node` pod label (SPEC §3: the chosen node, "also a label").

HAMi's vGPU monitor finds the pods of its node by this label and treats the containers of any other pod
as gone, so a pod we placed must carry it. A Binding can only merge annotations, so the label is a
separate patch after the bind. It is driven by what the informer sees rather than by the bind itself:
every pod that carries our allocation on a node (`hami.io/vgpu-node` annotation equal to spec.nodeName)
and lacks the label is labelled, so a restart between bind and label (or pods bound by an older
version) is mended from the API server's state. Only the leader writes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from hami.kube.api import ApiError, KubeApi, KubeObject
from hami.protocol import annotations as anno
from hami.protocol import manifests
from hami.protocol.manifests import map_or_empty

log = logging.getLogger(__name__)

RETRY = frozenset({409, 429, 500, 502, 503, 504})  # the API server is busy or down: try again later


class VgpuNodeLabeler:
    """`observe` every pod event; `run` labels the pods that need it while this replica leads."""

    def __init__(self, api: KubeApi, is_leader: Callable[[], bool] = lambda: True, *,
                 retry_s: float = 1.0, concurrency: int = 8) -> None:
        self.api = api
        self.is_leader = is_leader
        self.retry_s = retry_s
        self.concurrency = concurrency
        self.pending: dict[tuple[str, str], str] = {}  # (namespace, name) -> node the label must name
        # Labelled by us, the watch not yet showing it: events from before the patch must not queue it again.
        self._written: dict[tuple[str, str], str] = {}
        self._wake = asyncio.Event()
        self.labelled = 0

    def observe(self, event_type: str, pod: KubeObject) -> None:
        meta = map_or_empty(pod, "metadata")
        key = (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        node = map_or_empty(pod, "spec").get("nodeName")
        wanted = map_or_empty(meta, "annotations").get(anno.VGPU_NODE)
        labelled = map_or_empty(meta, "labels").get(anno.VGPU_NODE) == node
        if labelled or event_type == "DELETED":
            self._written.pop(key, None)
        if (event_type == "DELETED" or not key[1] or not node or wanted != node
                or manifests.pod_is_terminal(pod) or labelled or self._written.get(key) == node):
            self.pending.pop(key, None)
            return
        self.pending[key] = node
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.is_leader():
                await asyncio.sleep(self.retry_s)  # a follower keeps the list; it writes once it leads
                if self.pending:
                    self._wake.set()
                continue
            batch = list(self.pending.items())[: self.concurrency]
            results = await asyncio.gather(*(self._label(ns, name, node) for (ns, name), node in batch))
            if not all(results):
                await asyncio.sleep(self.retry_s)
            if self.pending:
                self._wake.set()

    async def _label(self, namespace: str, name: str, node: str) -> bool:
        """Label one pod; False when it should be tried again later (it then goes to the back of the line,
        so one pod the API server keeps refusing does not hold up the others)."""
        key = (namespace, name)
        try:
            await self.api.patch_labels("pods", name, {anno.VGPU_NODE: node}, namespace=namespace)
            self._written[key] = node
            self.labelled += 1
        except ApiError as exc:
            if exc.status in RETRY:
                log.warning("pod %s/%s: cannot set label %s=%s yet: %s", namespace, name, anno.VGPU_NODE, node, exc)
                if self.pending.pop(key, None) == node:
                    self.pending[key] = node
                return False
            if exc.status != 404:  # 404: the pod is gone; anything else will not change by retrying
                log.warning("pod %s/%s: label %s=%s refused, not retried: %s", namespace, name, anno.VGPU_NODE,
                            node, exc)
        if self.pending.get(key) == node:
            del self.pending[key]
        return True
