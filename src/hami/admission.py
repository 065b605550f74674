"""Pod admission: the pure decision the webhook serves and `hami place` applies before placing.

The webhook turns the returned JSON Patch into an AdmissionReview reply and a raised `HamiError` into a
denial; nothing here knows HTTP. Mirrors HAMi's pkg/scheduler/webhook.go: pods that already belong to
another scheduler are left alone, a privileged container anywhere in a device pod is refused (it would see
every device on the node, defeating the sharing), and so is a preset spec.nodeName (it would bypass us).

Beyond HAMi: a device pod is parsed exactly as the extender's filter parses it, so whatever filter would
refuse (an unreadable quantity, an absurd CPU request, a bad selector annotation) is denied here with the
field named, instead of reaching the scheduler. And no pod may carry env that turns the limiter off or
exposes GPUs behind the scheduler's back (LIMITER_BYPASS_ENV); that check ignores the tenant-controlled
`hami.io/webhook: ignore` label, which only opts a pod out of being mutated.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hami.protocol import annotations as anno
from hami.protocol.manifests import get_list, get_map, get_str, iter_containers, pod_request
from hami.resources import HamiError, PodRequest
from hami.vendors.base import Vendor

DEFAULT_SCHEDULER = "default-scheduler"

# Annotations only the scheduler and device plugins may write: a user setting them could forge an allocation.
FORGEABLE_ANNOTATIONS = frozenset({
    anno.VGPU_DEVICES_ALLOCATED, anno.VGPU_DEVICES_TO_ALLOCATE, anno.VGPU_NODE, anno.VGPU_TIME,
    anno.BIND_PHASE, anno.BIND_TIME,
})
# Other vendors' pairs, including vendors not installed here (`hami.io/<vendor>-devices-allocated` …).
_VENDOR_ALLOCATION = re.compile(r"hami\.io/[^/]+-devices-(?:allocated|to-allocate)")


# Env a tenant could use to run a GPU without HAMi-core's limits: CUDA_DISABLE_CONTROL turns the limiter off
# inside the container, NVIDIA_VISIBLE_DEVICES makes the NVIDIA container runtime expose GPUs (e.g. `all`)
# to a pod the scheduler never gave any. Values that expose nothing are allowed for the latter.
LIMITER_BYPASS_ENV = ("CUDA_DISABLE_CONTROL", "NVIDIA_VISIBLE_DEVICES")
_HARMLESS_VISIBLE_DEVICES = frozenset({"", "void", "none"})


def check_env(pod: Mapping[str, Any]) -> None:
    """Refuse env that bypasses the limiter (LIMITER_BYPASS_ENV) in any container, ephemeral ones too."""
    spec = get_map(pod, "spec", "pod")
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for index, ctr in enumerate(get_list(spec, key, "spec")):
            if not isinstance(ctr, Mapping):
                continue  # iter_containers reports the shape error
            for j, item in enumerate(get_list(ctr, "env", f"spec.{key}[{index}]")):
                if not isinstance(item, Mapping) or item.get("name") not in LIMITER_BYPASS_ENV:
                    continue
                name = item["name"]
                value = item.get("value")
                harmless = (name == "NVIDIA_VISIBLE_DEVICES" and "valueFrom" not in item
                            and (value is None or (isinstance(value, str) and value.strip().lower()
                                                   in _HARMLESS_VISIBLE_DEVICES)))
                if not harmless:
                    raise HamiError(f"spec.{key}[{index}].env[{j}]",
                                    f"{name} is not allowed: it would bypass the GPU limiter "
                                    "(devices are assigned by the scheduler and the node agent)")


def escape_pointer(token: str) -> str:
    """One JSON Pointer reference token (RFC 6901): `~` → `~0`, `/` → `~1`."""
    return token.replace("~", "~0").replace("/", "~1")


def _forgeable(name: str, vendors: Sequence[Vendor]) -> bool:
    return (name in FORGEABLE_ANNOTATIONS or _VENDOR_ALLOCATION.fullmatch(name) is not None
            or any(name in (v.annotations.allocated, v.annotations.to_allocate) for v in vendors))


def admit(pod: Mapping[str, Any], vendors: Sequence[Vendor], scheduler_name: str = "hami-scheduler",
          check: Callable[[PodRequest], None] | None = None) -> list[dict[str, Any]]:
    """RFC 6902 operations that make a device pod ours and its request explicit; [] when none apply.

    Allocation annotations a user supplied are removed from every pod (they could only be forged). For a pod
    requesting any vendor's resource: set spec.schedulerName and add each vendor's default limits; not for
    pods without managed resources, pods labelled `hami.io/webhook: ignore`, and pods already assigned to a
    scheduler other than the default one. Raises HamiError for invalid requests (anything the extender's
    filter would refuse), a privileged container in a device pod, a preset nodeName, and limiter-bypassing
    env in any pod.
    `check` sees the parsed request of a device pod and raises HamiError for what the caller refuses besides.
    Idempotent: admitting the patched pod gives [].
    """
    if not isinstance(pod, Mapping):
        raise HamiError("pod", f"expected an object, got {type(pod).__name__}")
    check_env(pod)
    meta = get_map(pod, "metadata", "pod")
    strip: list[dict[str, Any]] = [
        {"op": "remove", "path": f"/metadata/annotations/{escape_pointer(name)}"}
        for name in sorted(get_map(meta, "annotations", "metadata"))
        if _forgeable(name, vendors)
    ]
    if get_map(meta, "labels", "metadata").get(anno.WEBHOOK_LABEL) == anno.WEBHOOK_IGNORE:
        return strip
    spec = get_map(pod, "spec", "pod")
    current_scheduler = get_str(spec, "schedulerName", "spec")
    if current_scheduler not in ("", DEFAULT_SCHEDULER, scheduler_name):
        return strip

    wants_devices = False
    privileged: str | None = None
    limit_ops: list[dict[str, Any]] = []
    for ctr, key, index in iter_containers(pod):
        where = f"spec.{key}[{index}]"
        resources = get_map(ctr, "resources", where)
        defaults: dict[str, str] = {}
        for vendor in vendors:
            if vendor.container_request(resources, f"{where}.resources") is not None:
                wants_devices = True
            defaults.update(vendor.default_resources(resources, f"{where}.resources"))
        security = get_map(ctr, "securityContext", where)
        if privileged is None and security.get("privileged") is True:
            privileged = f"{where}.securityContext.privileged"
        if defaults:
            limit_ops.extend(_limit_ops(f"/spec/{key}/{index}/resources", resources, defaults))

    if not wants_devices:
        return strip
    if privileged is not None:
        raise HamiError(privileged, "a pod using shared devices must not run privileged containers "
                                    "(they see every device on the node)")
    if get_str(spec, "nodeName", "spec"):
        raise HamiError("spec.nodeName", "a pod requesting devices must not preset its node; "
                                         "the scheduler has to allocate its devices")
    request = pod_request(pod, vendors)  # what the extender's filter would refuse is refused here
    if check is not None:
        check(request)  # e.g. policy names the scheduler does not know

    ops = strip
    if current_scheduler != scheduler_name:
        op = "replace" if "schedulerName" in spec else "add"
        ops.append({"op": op, "path": "/spec/schedulerName", "value": scheduler_name})
    ops.extend(limit_ops)
    return ops


def _limit_ops(path: str, resources: Mapping[str, Any], defaults: dict[str, str]) -> list[dict[str, Any]]:
    """Add defaults to a container's limits, creating `resources` or `limits` when absent (or null)."""
    if not resources:
        return [{"op": "add", "path": path, "value": {"limits": dict(defaults)}}]
    if not resources.get("limits"):
        return [{"op": "add", "path": f"{path}/limits", "value": dict(defaults)}]
    return [{"op": "add", "path": f"{path}/limits/{escape_pointer(name)}", "value": value}
            for name, value in defaults.items()]


# --- applying our own patches ------------------------------------------------------------------------------


def _tokens(path: str, where: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise HamiError(where, f"path must start with '/': {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(container: list[Any], token: str, where: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise HamiError(where, f"bad array index {token!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not allow_end):
        raise HamiError(where, f"array index {index} out of range")
    return index


def apply_patch(obj: Mapping[str, Any], ops: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A patched deep copy of `obj`: RFC 6902 `add`, `replace` and `remove`, enough for our own patches."""
    doc: Any = copy.deepcopy(dict(obj))
    for i, op in enumerate(ops):
        where = f"patch[{i}]"
        kind, path = op.get("op"), op.get("path")
        if not isinstance(path, str):
            raise HamiError(where, "missing path")
        tokens = _tokens(path, where)
        if not tokens:
            raise HamiError(where, "operations on the whole document are not supported")
        parent: Any = doc
        for token in tokens[:-1]:
            if isinstance(parent, dict) and token in parent:
                parent = parent[token]
            elif isinstance(parent, list):
                parent = parent[_index(parent, token, where, allow_end=False)]
            else:
                raise HamiError(where, f"path {path!r} does not exist")
        last = tokens[-1]
        if kind in ("add", "replace"):
            if "value" not in op:
                raise HamiError(where, "missing value")
            value = copy.deepcopy(op["value"])
            if isinstance(parent, dict):
                if kind == "replace" and last not in parent:
                    raise HamiError(where, f"cannot replace missing {path!r}")
                parent[last] = value
            elif isinstance(parent, list):
                at = _index(parent, last, where, allow_end=kind == "add")
                if kind == "add":
                    parent.insert(at, value)
                else:
                    parent[at] = value
            else:
                raise HamiError(where, f"parent of {path!r} is not a container")
        elif kind == "remove":
            if isinstance(parent, dict) and last in parent:
                del parent[last]
            elif isinstance(parent, list):
                del parent[_index(parent, last, where, allow_end=False)]
            else:
                raise HamiError(where, f"cannot remove missing {path!r}")
        else:
            raise HamiError(where, f"unsupported op {kind!r}")
    return dict(doc)
