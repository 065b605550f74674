"""AdmissionReview (admission.k8s.io/v1), SPEC §5: the request the API server sends the webhook, and the reply.

The reply echoes `request.uid` and the review's apiVersion/kind (v1 when the request left them out), with
`allowed` and either `patchType: JSONPatch` plus a base64 `patch`, or a `status` {code, message} on denial.
v1beta1 reviews have the same shape and are answered in kind.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from hami.resources import HamiError

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
_REASONS = {400: "BadRequest", 403: "Forbidden", 422: "Invalid"}
_VERSIONS = frozenset({API_VERSION, "admission.k8s.io/v1beta1"})


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    uid: str
    api_version: str
    operation: str  # CREATE | UPDATE | DELETE | CONNECT
    namespace: str
    object: Mapping[str, Any] | None
    resource_kind: str = ""  # request.kind.kind, e.g. "Pod"
    dry_run: bool = False


def parse_review(body: bytes) -> AdmissionRequest:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HamiError("AdmissionReview", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HamiError("AdmissionReview", f"expected a JSON object, got {type(data).__name__}")
    api_version = data.get("apiVersion") or API_VERSION
    if not isinstance(api_version, str) or api_version not in _VERSIONS:
        raise HamiError("AdmissionReview.apiVersion", f"unsupported {api_version!r:.100}")
    kind = data.get("kind") or KIND
    if kind != KIND:
        raise HamiError("AdmissionReview.kind", f"expected {KIND}, got {kind!r:.100}")
    request = data.get("request")
    if not isinstance(request, dict):
        raise HamiError("AdmissionReview.request", "is required")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise HamiError("AdmissionReview.request.uid", "is required")
    obj = request.get("object")
    if obj is not None and not isinstance(obj, dict):
        raise HamiError("AdmissionReview.request.object", f"expected an object, got {type(obj).__name__}")
    operation = request.get("operation") or ""
    namespace = request.get("namespace") or ""
    if not isinstance(operation, str) or not isinstance(namespace, str):
        raise HamiError("AdmissionReview.request", "operation and namespace must be strings")
    kind_ref = request.get("kind")
    resource_kind = kind_ref.get("kind") if isinstance(kind_ref, dict) else ""
    if not isinstance(resource_kind, str):
        raise HamiError("AdmissionReview.request.kind.kind", "must be a string")
    return AdmissionRequest(uid=uid, api_version=api_version, operation=operation, namespace=namespace,
                            object=obj, resource_kind=resource_kind or "", dry_run=request.get("dryRun") is True)


def allow(request: AdmissionRequest, patch: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": request.uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(list(patch))).decode("ascii")
    return {"apiVersion": request.api_version, "kind": KIND, "response": response}


def deny(request: AdmissionRequest, message: str, code: int = 400) -> dict[str, Any]:
    status: dict[str, Any] = {"status": "Failure", "code": code, "message": message}
    reason = _REASONS.get(code)
    if reason:
        status["reason"] = reason
    return {"apiVersion": request.api_version, "kind": KIND,
            "response": {"uid": request.uid, "allowed": False, "status": status}}
