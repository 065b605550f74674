"""kube-scheduler's extender wire format (k8s.io/kube-scheduler/extender/v1), SPEC §5.

The Go structs carry no JSON tags, so keys are the PascalCase field names and absent pointers are `null`.
Go's decoder matches keys case-insensitively, so reading does too; writing always uses the exact names,
and writes `null` (never omits) wherever Go would, because that is what kube-scheduler's own tests send.
Every malformed shape becomes a HamiError naming the field (the service answers 400, never 500).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from hami.protocol.annotations import go_json_field
from hami.resources import HamiError

MAX_SCORE = 10  # extenderv1.MaxExtenderPriority


def _load(body: bytes, what: str) -> Mapping[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HamiError(what, f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HamiError(what, f"expected a JSON object, got {type(data).__name__}")
    return data


def _str(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = go_json_field(obj, key)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise HamiError(f"{where}.{key}", f"expected a string, got {type(value).__name__}")
    if required and not value:
        raise HamiError(f"{where}.{key}", "is required")
    return value


def _object(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> Mapping[str, Any]:
    value = go_json_field(obj, key)
    if value is None:
        if required:
            raise HamiError(f"{where}.{key}", "is required")
        return {}
    if not isinstance(value, dict):
        raise HamiError(f"{where}.{key}", f"expected an object, got {type(value).__name__}")
    return value


def _names(value: Any, where: str) -> tuple[str, ...]:
    # set(map(type, ...)) runs in C: this list has every node of the cluster, on every call.
    if not isinstance(value, list) or not set(map(type, value)) <= {str}:
        raise HamiError(where, "expected a list of node names")
    return tuple(value)


# --- filter / prioritize -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExtenderArgs:
    """ExtenderArgs: the pod and its candidate nodes. `nodes` holds the NodeList items when kube-scheduler
    is not nodeCacheCapable (then the reply must carry `Nodes`), else None and only `node_names` came."""

    pod: Mapping[str, Any]
    node_names: tuple[str, ...]
    nodes: tuple[Mapping[str, Any], ...] | None

    @property
    def cache_capable(self) -> bool:
        return self.nodes is None


def parse_extender_args(body: bytes) -> ExtenderArgs:
    data = _load(body, "ExtenderArgs")
    pod = _object(data, "Pod", "ExtenderArgs", required=True)
    raw_names = go_json_field(data, "NodeNames")
    raw_nodes = go_json_field(data, "Nodes")
    if raw_names is not None:
        return ExtenderArgs(pod, _names(raw_names, "ExtenderArgs.NodeNames"), None)
    if raw_nodes is None:
        # Both null: kube-scheduler never sends this, but "no candidates" is the only sane reading.
        return ExtenderArgs(pod, (), None)
    if not isinstance(raw_nodes, dict):
        raise HamiError("ExtenderArgs.Nodes", f"expected a NodeList, got {type(raw_nodes).__name__}")
    items = raw_nodes.get("items") or []
    if not isinstance(items, list):
        raise HamiError("ExtenderArgs.Nodes.items", "expected a list")
    names = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise HamiError(f"ExtenderArgs.Nodes.items[{i}]", "expected a Node object")
        meta = item.get("metadata") or {}
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            raise HamiError(f"ExtenderArgs.Nodes.items[{i}].metadata.name", "is required")
        names.append(name)
    return ExtenderArgs(pod, tuple(names), tuple(items))


def filter_result(args: ExtenderArgs, passed: Sequence[str], failed: Mapping[str, str],
                  unresolvable: Mapping[str, str], error: str = "") -> dict[str, Any]:
    """ExtenderFilterResult in the form the request came in: `NodeNames` for nodeCacheCapable, else
    `Nodes` with the very node objects kube-scheduler sent (it maps them back by metadata.name)."""
    result: dict[str, Any] = {"Nodes": None, "NodeNames": None, "FailedNodes": dict(failed),
                              "FailedAndUnresolvableNodes": dict(unresolvable), "Error": error}
    if args.nodes is None:
        result["NodeNames"] = list(passed)
    else:
        keep = set(passed)
        items = [n for n, name in zip(args.nodes, args.node_names, strict=True) if name in keep]
        result["Nodes"] = {"metadata": {}, "items": items}
    return result


def filter_error(message: str) -> dict[str, Any]:
    """A filter reply that fails the call: kube-scheduler reports `Error` and retries the pod later."""
    return {"Nodes": None, "NodeNames": None, "FailedNodes": {}, "FailedAndUnresolvableNodes": {},
            "Error": message}


def host_priorities(scores: Mapping[str, int]) -> list[dict[str, Any]]:
    """HostPriorityList, scores clamped to 0-MAX_SCORE (kube-scheduler multiplies by weight)."""
    return [{"Host": host, "Score": max(0, min(MAX_SCORE, int(score)))} for host, score in scores.items()]


# --- bind --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BindingArgs:
    pod_name: str
    namespace: str
    uid: str
    node: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod_name}"


def parse_binding_args(body: bytes) -> BindingArgs:
    data = _load(body, "ExtenderBindingArgs")
    where = "ExtenderBindingArgs"
    return BindingArgs(
        pod_name=_str(data, "PodName", where, required=True),
        namespace=_str(data, "PodNamespace", where) or "default",
        uid=_str(data, "PodUID", where),
        node=_str(data, "Node", where, required=True),
    )


def binding_result(error: str = "") -> dict[str, Any]:
    return {"Error": error}


# --- preempt -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Victims:
    """The pods kube-scheduler would evict on one node (by UID) and how many PDBs that violates."""

    uids: tuple[str, ...]
    pdb_violations: int = 0


@dataclass(frozen=True, slots=True)
class PreemptionArgs:
    pod: Mapping[str, Any]
    victims: Mapping[str, Victims]


def _victims(value: Any, where: str, *, meta: bool) -> Victims:
    if value is None:
        return Victims(())
    if not isinstance(value, dict):
        raise HamiError(where, f"expected an object, got {type(value).__name__}")
    pods = go_json_field(value, "Pods") or []
    if not isinstance(pods, list):
        raise HamiError(f"{where}.Pods", "expected a list")
    uids = []
    for i, pod in enumerate(pods):
        if not isinstance(pod, dict):
            raise HamiError(f"{where}.Pods[{i}]", "expected an object")
        if meta:
            uid = _str(pod, "UID", f"{where}.Pods[{i}]", required=True)
        else:
            uid = _str(_object(pod, "metadata", f"{where}.Pods[{i}]"), "uid", f"{where}.Pods[{i}].metadata",
                       required=True)
        uids.append(uid)
    pdb = go_json_field(value, "NumPDBViolations") or 0
    if isinstance(pdb, bool) or not isinstance(pdb, int):
        raise HamiError(f"{where}.NumPDBViolations", "expected an integer")
    return Victims(tuple(uids), pdb)


def parse_preemption_args(body: bytes) -> PreemptionArgs:
    """ExtenderPreemptionArgs: `NodeNameToMetaVictims` (nodeCacheCapable) or `NodeNameToVictims` with full
    pods. Both reduce to victim UIDs per node; the reply is always the meta form, as kube-scheduler expects."""
    data = _load(body, "ExtenderPreemptionArgs")
    where = "ExtenderPreemptionArgs"
    pod = _object(data, "Pod", where, required=True)
    meta = go_json_field(data, "NodeNameToMetaVictims")
    full = go_json_field(data, "NodeNameToVictims")
    source, key, is_meta = (meta, "NodeNameToMetaVictims", True) if meta is not None else (
        full, "NodeNameToVictims", False)
    if source is None:
        return PreemptionArgs(pod, {})
    if not isinstance(source, dict):
        raise HamiError(f"{where}.{key}", "expected an object keyed by node name")
    return PreemptionArgs(pod, {str(node): _victims(v, f"{where}.{key}[{node}]", meta=is_meta)
                                for node, v in source.items()})


def preemption_result(victims: Mapping[str, Victims]) -> dict[str, Any]:
    return {"NodeNameToMetaVictims": {
        node: {"Pods": [{"UID": uid} for uid in v.uids], "NumPDBViolations": v.pdb_violations}
        for node, v in victims.items()
    }}
