"""The seam between Hami and the Kubernetes API server.

Everything that talks to the API server goes through `KubeApi`. The real implementation
(`hami.kube.client.HttpKubeApi`) speaks raw JSON over httpx; tests use an in-memory fake with the same
methods. Objects are plain dicts exactly as the API server returns them (parsing into core values
happens in hami.protocol.manifests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

KubeObject = dict[str, Any]


class ApiError(Exception):
    """A non-2xx answer from the API server. `status` is the HTTP code (409 conflict, 404 gone, 410
    expired resourceVersion...)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK | ERROR
    object: KubeObject


@dataclass(frozen=True, slots=True)
class ObjectList:
    items: list[KubeObject]
    resource_version: str


class KubeApi(Protocol):
    """The API calls Hami makes. Paths follow the core/v1 and coordination/v1 REST API."""

    async def list(self, kind: str, *, namespace: str | None = None, field_selector: str | None = None,
                   label_selector: str | None = None) -> ObjectList:
        """kind: "nodes" | "pods" | "leases" | "events"."""
        ...

    def watch(self, kind: str, *, resource_version: str, namespace: str | None = None,
              field_selector: str | None = None, timeout_s: int = 300) -> AsyncIterator[WatchEvent]:
        """Streams events after resource_version with bookmarks; raises ApiError(410) when expired."""
        ...

    async def get(self, kind: str, name: str, *, namespace: str | None = None) -> KubeObject: ...

    async def patch_annotations(self, kind: str, name: str, annotations: Mapping[str, str | None], *,
                                namespace: str | None = None, resource_version: str | None = None
                                ) -> KubeObject:
        """Merge-patch metadata.annotations (None deletes a key). With resource_version the patch is
        conditional (409 if the object changed): that is how node locks are taken safely."""
        ...

    async def patch_labels(self, kind: str, name: str, labels: Mapping[str, str | None], *,
                           namespace: str | None = None) -> KubeObject:
        """Merge-patch metadata.labels (None deletes a key)."""
        ...

    async def bind(self, namespace: str, name: str, uid: str, node: str,
                   annotations: Mapping[str, str]) -> None:
        """POST pods/{name}/binding; the annotations are merged into the pod in the same write."""
        ...

    async def create(self, kind: str, obj: KubeObject, *, namespace: str | None = None) -> KubeObject: ...

    async def replace(self, kind: str, name: str, obj: KubeObject, *,
                      namespace: str | None = None) -> KubeObject:
        """PUT (optimistic concurrency on metadata.resourceVersion): leases use it."""
        ...

    async def delete(self, kind: str, name: str, *, namespace: str | None = None) -> None: ...
