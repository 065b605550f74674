"""An in-memory API server: the `KubeApi` seam without Kubernetes.

It backs `hami serve --cluster-file` (a static cluster, binding in memory) and is the fake API of the
unit tests. It keeps the semantics the callers rely on: resourceVersions, conditional patches that
answer 409, binding an already bound pod answers 409, watches that resume from a resourceVersion and
answer 410 once it has been compacted away, bookmarks.
"""

from __future__ import annotations

import asyncio
import bisect
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from hami.kube.api import ApiError, KubeObject, ObjectList, WatchEvent

CLUSTER_SCOPED = frozenset({"nodes", "namespaces"})
KINDS = {"nodes": "Node", "pods": "Pod", "events": "Event", "leases": "Lease", "namespaces": "Namespace"}


def _copy(obj: KubeObject) -> KubeObject:
    result: KubeObject = orjson.loads(orjson.dumps(obj))
    return result


def _merge(current: dict[str, str], patch: Mapping[str, str | None]) -> None:
    """A JSON merge patch of one string map: None deletes the key."""
    for key, value in patch.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value


def _matches(obj: KubeObject, field_selector: str | None, label_selector: str | None) -> bool:
    for selector, getter in ((field_selector, _field), (label_selector, _label)):
        if not selector:
            continue
        for term in selector.split(","):
            if "!=" in term:
                key, value = term.split("!=", 1)
                if getter(obj, key) == value:
                    return False
            else:
                key, value = term.split("=", 1)
                if getter(obj, key.rstrip("=")) != value:
                    return False
    return True


def _field(obj: KubeObject, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def _label(obj: KubeObject, key: str) -> str | None:
    labels = obj.get("metadata", {}).get("labels") or {}
    value = labels.get(key)
    return None if value is None else str(value)


class MemoryKubeApi:
    """Objects by kind and namespace/name, a global resourceVersion, and an event log for watches."""

    def __init__(self, history: int = 100_000) -> None:
        self._objects: dict[str, dict[str, KubeObject]] = {kind: {} for kind in KINDS}
        self._rv = 0
        self._log: list[tuple[int, str, WatchEvent]] = []
        self._history = history
        self._oldest = 0  # resourceVersions at or below this have been compacted
        self._changed = asyncio.Event()
        self.bind_calls = 0

    @classmethod
    def from_objects(cls, nodes: Iterable[KubeObject], pods: Iterable[KubeObject]) -> MemoryKubeApi:
        api = cls()
        for node in nodes:
            api.put("nodes", node)
        for pod in pods:
            api.put("pods", pod)
        return api

    # -- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _key(kind: str, name: str, namespace: str | None) -> str:
        return name if kind in CLUSTER_SCOPED else f"{namespace or 'default'}/{name}"

    def _store(self, kind: str) -> dict[str, KubeObject]:
        if kind not in self._objects:
            raise ApiError(404, f"the server could not find the requested resource {kind!r}", "NotFound")
        return self._objects[kind]

    def _record(self, kind: str, type_: str, obj: KubeObject) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._log.append((self._rv, kind, WatchEvent(type_, _copy(obj))))
        if len(self._log) > self._history:
            drop = len(self._log) - self._history
            self._oldest = self._log[drop - 1][0]
            del self._log[:drop]
        self._changed.set()
        self._changed = asyncio.Event()

    def put(self, kind: str, obj: KubeObject) -> KubeObject:
        """Create or overwrite without checks (seeding a cluster, or a test playing kubelet)."""
        obj = _copy(obj)
        obj.setdefault("kind", KINDS.get(kind, ""))
        obj.setdefault("apiVersion", "coordination.k8s.io/v1" if kind == "leases" else "v1")
        meta = obj.setdefault("metadata", {})
        if kind not in CLUSTER_SCOPED:
            meta.setdefault("namespace", "default")
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        key = self._key(kind, meta["name"], meta.get("namespace"))
        store = self._store(kind)
        existed = key in store
        store[key] = obj
        self._record(kind, "MODIFIED" if existed else "ADDED", obj)
        return _copy(obj)

    def compact(self) -> None:
        """Forget the event history, so watches from an old resourceVersion get 410 Gone."""
        self._oldest = self._rv
        self._log.clear()

    # -- KubeApi ------------------------------------------------------------------------------------
    async def list(self, kind: str, *, namespace: str | None = None, field_selector: str | None = None,
                   label_selector: str | None = None) -> ObjectList:
        items = [
            _copy(o) for o in self._store(kind).values()
            if (namespace is None or o["metadata"].get("namespace") == namespace)
            and _matches(o, field_selector, label_selector)
        ]
        return ObjectList(items, str(self._rv))

    async def watch(self, kind: str, *, resource_version: str, namespace: str | None = None,
                    field_selector: str | None = None, timeout_s: int = 300) -> AsyncIterator[WatchEvent]:
        self._store(kind)
        rv = int(resource_version or 0)
        if rv < self._oldest:
            raise ApiError(410, f"too old resource version: {rv} ({self._oldest})", "Expired")
        deadline = time.monotonic() + timeout_s
        while True:
            # The log is ordered by resourceVersion: start after what this watcher has seen.
            start = bisect.bisect_right(self._log, rv, key=lambda entry: entry[0])
            batch = self._log[start:]
            for seen, k, event in batch:
                rv = seen
                if k != kind:
                    continue
                obj = event.object
                if namespace is not None and obj["metadata"].get("namespace") != namespace:
                    continue
                if not _matches(obj, field_selector, None):
                    continue
                yield WatchEvent(event.type, _copy(obj))
            if self._log and self._log[-1][0] > rv:
                continue  # written while we were yielding: no need to wait for it
            rv = max(rv, self._oldest)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            changed = self._changed
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that lands
                # as the wait completes, and a cancelled watcher must stop.
                async with asyncio.timeout(min(remaining, 1.0)):
                    await changed.wait()
            except TimeoutError:
                yield WatchEvent("BOOKMARK", {"kind": KINDS.get(kind, ""),
                                              "metadata": {"resourceVersion": str(rv)}})

    async def get(self, kind: str, name: str, *, namespace: str | None = None) -> KubeObject:
        obj = self._store(kind).get(self._key(kind, name, namespace))
        if obj is None:
            raise ApiError(404, f'{kind} "{name}" not found', "NotFound")
        return _copy(obj)

    async def patch_annotations(self, kind: str, name: str, annotations: Mapping[str, str | None], *,
                                namespace: str | None = None, resource_version: str | None = None
                                ) -> KubeObject:
        obj = self._store(kind).get(self._key(kind, name, namespace))
        if obj is None:
            raise ApiError(404, f'{kind} "{name}" not found', "NotFound")
        if resource_version is not None and obj["metadata"]["resourceVersion"] != resource_version:
            raise ApiError(409, f'Operation cannot be fulfilled on {kind} "{name}": the object has been '
                                "modified; please apply your changes to the latest version", "Conflict")
        _merge(obj["metadata"].setdefault("annotations", {}), annotations)
        self._record(kind, "MODIFIED", obj)
        return _copy(obj)

    async def patch_labels(self, kind: str, name: str, labels: Mapping[str, str | None], *,
                           namespace: str | None = None) -> KubeObject:
        obj = self._store(kind).get(self._key(kind, name, namespace))
        if obj is None:
            raise ApiError(404, f'{kind} "{name}" not found', "NotFound")
        _merge(obj["metadata"].setdefault("labels", {}), labels)
        self._record(kind, "MODIFIED", obj)
        return _copy(obj)

    async def bind(self, namespace: str, name: str, uid: str, node: str,
                   annotations: Mapping[str, str]) -> None:
        self.bind_calls += 1
        obj = self._store("pods").get(self._key("pods", name, namespace))
        if obj is None or (uid and obj["metadata"].get("uid") != uid):
            raise ApiError(404, f'pods "{name}" not found', "NotFound")
        spec = obj.setdefault("spec", {})
        if spec.get("nodeName"):
            raise ApiError(409, f'pod {name} is already assigned to node "{spec["nodeName"]}"', "Conflict")
        spec["nodeName"] = node
        obj["metadata"].setdefault("annotations", {}).update(annotations)
        self._record("pods", "MODIFIED", obj)

    async def create(self, kind: str, obj: KubeObject, *, namespace: str | None = None) -> KubeObject:
        obj = _copy(obj)
        meta = obj.setdefault("metadata", {})
        if namespace is not None:
            meta["namespace"] = namespace
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "name or generateName is required", "Invalid")
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        if self._key(kind, meta["name"], meta.get("namespace")) in self._store(kind):
            raise ApiError(409, f'{kind} "{meta["name"]}" already exists', "AlreadyExists")
        return self.put(kind, obj)

    async def replace(self, kind: str, name: str, obj: KubeObject, *,
                      namespace: str | None = None) -> KubeObject:
        store = self._store(kind)
        key = self._key(kind, name, namespace)
        current = store.get(key)
        if current is None:
            raise ApiError(404, f'{kind} "{name}" not found', "NotFound")
        want = obj.get("metadata", {}).get("resourceVersion")
        if want is not None and want != current["metadata"]["resourceVersion"]:
            raise ApiError(409, f'Operation cannot be fulfilled on {kind} "{name}": the object has been '
                                "modified", "Conflict")
        obj = _copy(obj)
        obj["metadata"]["uid"] = current["metadata"]["uid"]
        if kind not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = current["metadata"]["namespace"]
        store[key] = obj
        self._record(kind, "MODIFIED", obj)
        return _copy(obj)

    async def delete(self, kind: str, name: str, *, namespace: str | None = None) -> None:
        obj = self._store(kind).pop(self._key(kind, name, namespace), None)
        if obj is None:
            raise ApiError(404, f'{kind} "{name}" not found', "NotFound")
        self._record(kind, "DELETED", obj)
