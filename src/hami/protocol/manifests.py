"""Kubernetes objects (plain dicts, as `kubectl get -o json|yaml` prints them) → core values.

The edge where Pods and Nodes become `PodRequest`, `Node` and `PodAllocation`; every malformed shape becomes a
`HamiError` naming the field, so the core never sees a half-parsed object.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hami.protocol import annotations as anno
from hami.resources import (
    ContainerAllocation,
    ContainerRequest,
    DeviceSelector,
    HamiError,
    Node,
    PodAllocation,
    PodRequest,
    cpu_milli,
    memory_mib,
)
from hami.vendors.base import Vendor

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
# Containers with device requests one pod may have: real pods have a handful; the bound keeps one pod's
# filter (a vectorised fit per container over every device of the cluster) from stalling the service.
MAX_DEVICE_CONTAINERS = 64


# --- shape helpers: a missing or null field is empty; a field of the wrong type is a HamiError ---------------


def get_map(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise HamiError(f"{where}.{key}", f"expected a mapping, got {type(value).__name__}")
    return value


def map_or_empty(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """obj[key] when it is a mapping, else {}: for watch handlers, which skip what they cannot read
    rather than raise (get_map is for parsing, where a wrong type is the caller's error to report)."""
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


def get_list(obj: Mapping[str, Any], key: str, where: str) -> Sequence[Any]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise HamiError(f"{where}.{key}", f"expected a list, got {type(value).__name__}")
    return value


def get_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HamiError(f"{where}.{key}", f"expected a string, got {type(value).__name__}")
    return value


def _root(obj: Any, kind: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise HamiError(kind, f"expected an object, got {type(obj).__name__}")
    return obj


def annotations_of(obj: Mapping[str, Any]) -> dict[str, str]:
    """metadata.annotations, checked to be strings (the API server ensures it; hand-written YAML may not)."""
    found = get_map(get_map(obj, "metadata", "object"), "annotations", "metadata")
    out: dict[str, str] = {}
    for key, value in found.items():
        if not isinstance(value, str):
            raise HamiError(f"metadata.annotations[{key}]", f"expected a string, got {type(value).__name__}")
        out[str(key)] = value
    return out


def iter_containers(pod: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], str, int]]:
    """(container, `initContainers`|`containers`, index): init containers first, the allocation order."""
    spec = get_map(pod, "spec", "pod")
    for key in ("initContainers", "containers"):
        for i, ctr in enumerate(get_list(spec, key, "spec")):
            if not isinstance(ctr, Mapping):
                raise HamiError(f"spec.{key}[{i}]", f"expected a mapping, got {type(ctr).__name__}")
            yield ctr, key, i


def container_count(pod: Mapping[str, Any]) -> int:
    """Entries an allocation annotation has for this pod: init containers plus app containers."""
    return sum(1 for _ in iter_containers(pod))


# --- pods --------------------------------------------------------------------------------------------------


def pod_request(pod: Mapping[str, Any], vendors: Sequence[Vendor]) -> PodRequest:
    """The pod as the core sees it.

    CPU/memory are the container's requests, falling back to its limits (as API-server defaulting does for
    a manifest not yet applied). A native sidecar (init container with `restartPolicy: Always`) runs beside
    the app containers, so it is marked `init=False` and summed with them; it still keeps its position among
    the init containers, which is what the allocation annotation's order follows.
    """
    pod = _root(pod, "pod")
    meta = get_map(pod, "metadata", "pod")
    spec = get_map(pod, "spec", "pod")
    annotations = annotations_of(pod)
    containers: list[ContainerRequest] = []
    for ctr, key, index in iter_containers(pod):
        where, init = f"spec.{key}[{index}]", key == "initContainers"
        resources = get_map(ctr, "resources", where)
        res_where = f"{where}.resources"
        sections = [(get_map(resources, key, res_where), f"{res_where}.{key}") for key in ("requests", "limits")]
        devices = []
        for vendor in vendors:
            request = vendor.container_request(resources, res_where)
            if request is not None:
                devices.append(request)
        sidecar = init and ctr.get("restartPolicy") == "Always"
        containers.append(ContainerRequest(
            name=get_str(ctr, "name", where),
            devices=tuple(devices),
            init=init and not sidecar,
            cpu_milli=_quantity(sections, "cpu", cpu_milli),
            memory_mib=_quantity(sections, "memory", memory_mib),
        ))

    with_devices = sum(1 for c in containers if c.devices)
    if with_devices > MAX_DEVICE_CONTAINERS:
        raise HamiError("spec.containers", f"{with_devices} containers request devices; at most "
                                           f"{MAX_DEVICE_CONTAINERS} may")
    # Policy names are checked by the framework against its plugin registry (third parties may add some).
    node_policy = annotations.get(anno.NODE_SCHEDULER_POLICY, "").strip().lower() or None
    device_policy = tuple(p.lower() for p in anno.split_list(annotations.get(anno.GPU_SCHEDULER_POLICY, "")))
    return PodRequest(
        namespace=get_str(meta, "namespace", "metadata") or "default",
        name=get_str(meta, "name", "metadata") or get_str(meta, "generateName", "metadata"),
        uid=get_str(meta, "uid", "metadata"),
        containers=tuple(containers),
        selector=_merge_selectors([v.selector(annotations) for v in vendors]),
        node_policy=node_policy,
        device_policy=device_policy,
        node_name=get_str(spec, "nodeName", "spec") or None,
    )


def first_quantity(sections: Sequence[tuple[Mapping[str, Any], str]], name: str,
                   parse: Callable[[str | int | float, str], int]) -> int | None:
    """`name` from the first of the (section, where) pairs that holds it, parsed; None when none does."""
    for section, where in sections:
        if name in section:
            value = section[name]
            field = f"{where}[{name}]"
            if not isinstance(value, str | int | float):
                raise HamiError(field, f"not a quantity: {value!r}")
            return parse(value, field)
    return None


def _quantity(sections: Sequence[tuple[Mapping[str, Any], str]], name: str,
              parse: Callable[[str | int | float, str], int]) -> int:
    """As first_quantity, 0 when no section holds it (CPU and memory nobody asked for)."""
    return first_quantity(sections, name, parse) or 0


def _merge_selectors(selectors: Sequence[DeviceSelector]) -> DeviceSelector:
    """One selector for the pod: each vendor reads only its own annotations, so concatenation is lossless."""
    if len(selectors) == 1:
        return selectors[0]
    return DeviceSelector(
        use_types=tuple(t for s in selectors for t in s.use_types),
        nouse_types=tuple(t for s in selectors for t in s.nouse_types),
        use_uuids=tuple(u for s in selectors for u in s.use_uuids),
        nouse_uuids=tuple(u for s in selectors for u in s.nouse_uuids),
        numa_bind=any(s.numa_bind for s in selectors),
        mode=next((s.mode for s in selectors if s.mode is not None), None),
    )


def pod_allocation(pod: Mapping[str, Any], vendors: Sequence[Vendor]) -> tuple[str, PodAllocation] | None:
    """(node, allocation) for a pod that carries an allocation annotation of any vendor, else None.

    The node is spec.nodeName, else `hami.io/vgpu-node` (allocated but not yet bound); a pod with neither
    is None too, as it holds nothing anywhere. Vendors' entries are merged by container position. Trailing
    empty entries beyond the pod's containers are dropped (HAMi's device plugin leaves extra `;`s); a
    non-empty entry beyond them is an error, because it cannot be attributed to a container.
    """
    pod = _root(pod, "pod")
    annotations = annotations_of(pod)
    merged: list[ContainerAllocation] = []
    found = False
    for vendor in vendors:
        name = vendor.annotations.allocated
        if name not in annotations:
            continue
        found = True
        decoded = anno.decode_pod_allocation(annotations[name], annotation=name)
        merged.extend(() for _ in range(len(decoded) - len(merged)))
        for i, devices in enumerate(decoded):
            merged[i] = merged[i] + devices
    if not found:
        return None
    node = get_str(get_map(pod, "spec", "pod"), "nodeName", "spec") or annotations.get(anno.VGPU_NODE, "")
    if not node:
        return None
    count = container_count(pod)
    while len(merged) > count and not merged[-1]:
        merged.pop()
    if len(merged) > count:
        raise HamiError(f"metadata.annotations[{vendors[0].annotations.allocated}]",
                        f"allocation has {len(merged)} container entries, the pod has {count} containers")
    merged.extend(() for _ in range(count - len(merged)))
    return node, tuple(merged)


def pod_is_terminal(pod: Mapping[str, Any]) -> bool:
    """Phase Succeeded or Failed: its devices are free.

    A deletionTimestamp alone does not free them: containers keep running through the grace period and
    kubelet has not released the devices; the pod stops counting when the object itself is gone.
    """
    return get_str(get_map(pod, "status", "pod"), "phase", "status") in TERMINAL_PHASES


# --- nodes -------------------------------------------------------------------------------------------------


def node_from_manifest(node: Mapping[str, Any], vendors: Sequence[Vendor]) -> Node:
    """Devices from every vendor's register annotation, allocatable CPU/memory, cordons and topology."""
    node = _root(node, "node")
    name = get_str(get_map(node, "metadata", "node"), "name", "metadata")
    if not name:
        raise HamiError("metadata.name", "node has no name")
    annotations = annotations_of(node)
    allocatable = get_map(get_map(node, "status", "node"), "allocatable", "status")
    try:
        topology = anno.decode_topology(annotations.get(anno.NODE_NVIDIA_SCORE, ""))
    except HamiError as exc:
        raise HamiError(f"node/{name} {exc.field}", exc.message) from None
    return Node(
        name=name,
        devices=tuple(d for v in vendors for d in v.node_devices(annotations, name)),
        cpu_milli=_quantity([(allocatable, "status.allocatable")], "cpu", cpu_milli),
        memory_mib=_quantity([(allocatable, "status.allocatable")], "memory", memory_mib),
        cordoned=frozenset(anno.split_list(annotations.get(anno.DEVICE_CORDON, ""))),
        topology=topology,
    )


# --- files -------------------------------------------------------------------------------------------------

_LIST_KINDS = frozenset({"List", "NodeList", "PodList"})


def load_manifests(source: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(nodes, pods) from a file path or from YAML/JSON text.

    Accepts a `List`/`NodeList`/`PodList` (`items`, nested lists too), a single object, or several `---`
    documents. Other kinds are skipped. A str is a path when it names an existing file, else text.
    """
    if isinstance(source, Path) or ("\n" not in source and os.path.isfile(source)):
        origin = str(source)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HamiError(origin, f"cannot read: {exc}") from None
    else:
        origin, text = "<text>", source

    try:
        stripped = text.lstrip()
        if stripped.startswith(("{", "[")):
            docs: list[Any] = [json.loads(text)]
        else:
            docs = list(yaml.safe_load_all(text))
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        raise HamiError(origin, f"not valid YAML/JSON: {exc}") from None

    nodes: list[dict[str, Any]] = []
    pods: list[dict[str, Any]] = []
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        _collect(doc, f"{origin}[document {index}]", None, nodes, pods)
    return nodes, pods


def _collect(obj: Any, where: str, implied_kind: str | None,
             nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
    if isinstance(obj, list):  # a bare JSON array of objects
        for i, item in enumerate(obj):
            _collect(item, f"{where}[{i}]", implied_kind, nodes, pods)
        return
    if not isinstance(obj, dict):
        raise HamiError(where, f"expected an object, got {type(obj).__name__}")
    kind = obj.get("kind") or implied_kind
    if not isinstance(kind, str) or not kind:
        raise HamiError(where, "object has no kind")
    if kind in _LIST_KINDS:
        items = obj.get("items") or []
        if not isinstance(items, list):
            raise HamiError(f"{where}.items", "expected a list")
        item_kind = kind.removesuffix("List") or None
        for i, item in enumerate(items):
            _collect(item, f"{where}.items[{i}]", item_kind, nodes, pods)
    elif kind == "Node":
        nodes.append(obj)
    elif kind == "Pod":
        pods.append(obj)
