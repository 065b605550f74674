"""HAMi annotation formats (SPEC §1-3): names, encoders and decoders.

Byte-compatibility rules, checked against HAMi's Go source (pkg/device/devices.go, pkg/util/nodelock,
pkg/device/nvidia/device.go, the device plugin's register.go):

- Encoders are exact: they write what SPEC.md shows (and what HAMi's own decoders accept).
- Decoders are lenient where HAMi is lenient (Go zero values for missing JSON keys, case-insensitive JSON
  keys, extra allocation fields, old timestamp layouts) and otherwise raise `HamiError` naming the
  annotation and the device/container position. No other exception escapes a decoder.

Where HAMi's real output differs from SPEC.md, the comment at the function says which one we write and why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal, cast

from hami.resources import ContainerAllocation, ContainerDevice, Device, HamiError, PodAllocation

# --- annotation names -------------------------------------------------------------------------------------

# Node annotations (NVIDIA; other vendors name theirs in their Vendor.annotations).
NODE_NVIDIA_REGISTER = "hami.io/node-nvidia-register"
NODE_HANDSHAKE = "hami.io/node-handshake"
NODE_NVIDIA_SCORE = "hami.io/node-nvidia-score"
NODE_LOCK = "hami.io/mutex.lock"
DEVICE_CORDON = "hami.io/device-cordon"

# Pod annotations written by the scheduler (SPEC §3).
VGPU_DEVICES_ALLOCATED = "hami.io/vgpu-devices-allocated"
VGPU_DEVICES_TO_ALLOCATE = "hami.io/vgpu-devices-to-allocate"
VGPU_NODE = "hami.io/vgpu-node"
VGPU_TIME = "hami.io/vgpu-time"
BIND_PHASE = "hami.io/bind-phase"
BIND_TIME = "hami.io/bind-time"
BIND_PHASE_ALLOCATING = "allocating"
BIND_PHASE_SUCCESS = "success"
BIND_PHASE_FAILED = "failed"

# Pod annotations a user may set (SPEC §1).
NVIDIA_USE_GPUTYPE = "nvidia.com/use-gputype"
NVIDIA_NOUSE_GPUTYPE = "nvidia.com/nouse-gputype"
NVIDIA_USE_GPUUUID = "nvidia.com/use-gpuuuid"
NVIDIA_NOUSE_GPUUUID = "nvidia.com/nouse-gpuuuid"
NVIDIA_NUMA_BIND = "nvidia.com/numa-bind"
NVIDIA_VGPU_MODE = "nvidia.com/vgpu-mode"
NODE_SCHEDULER_POLICY = "hami.io/node-scheduler-policy"
GPU_SCHEDULER_POLICY = "hami.io/gpu-scheduler-policy"

# Pod/namespace label that makes the admission webhook leave a pod alone.
WEBHOOK_LABEL = "hami.io/webhook"
WEBHOOK_IGNORE = "ignore"

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MAX = 2**63 - 1
_DECIMAL = re.compile(r"[+-]?[0-9]+")
_WS = " \t\r\n"  # what YAML block scalars and hand edits add around a value; never Unicode spaces


# --- small parsing helpers (all raise HamiError) -----------------------------------------------------------


def _int(text: str, where: str, *, lo: int = _INT32_MIN, hi: int = _INT32_MAX) -> int:
    """A Go strconv.ParseInt-style decimal: optional sign, digits only, in range."""
    if not _DECIMAL.fullmatch(text):
        raise HamiError(where, f"not an integer: {text!r}")
    if len(text) > 24:  # also keeps int() clear of Python's 4300-digit conversion limit
        raise HamiError(where, f"{text[:24]}… out of range")
    value = int(text)
    if not lo <= value <= hi:
        raise HamiError(where, f"{value} out of range [{lo}, {hi}]")
    return value


_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_bool(text: str, where: str) -> bool:
    """Go's strconv.ParseBool, which HAMi uses for health and `nvidia.com/numa-bind`."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise HamiError(where, f"not a boolean: {text!r}")


def _check_token(value: str, where: str, forbidden: str) -> None:
    """Encoders refuse values that would corrupt a separator-delimited format."""
    if not value:
        raise HamiError(where, "must not be empty")
    bad = [c for c in forbidden if c in value]
    if bad:
        raise HamiError(where, f"{value!r} contains separator {bad[0]!r}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_json(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise HamiError(where, f"invalid JSON: {exc}") from None


def _go_json(value: Any) -> str:
    """Compact JSON as Go's encoding/json writes it: UTF-8 kept, HTML-sensitive characters escaped.

    `<`, `>`, `&`, U+2028 and U+2029 can only occur inside strings, so replacing them is safe.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


def go_json_field(obj: Mapping[str, Any], key: str) -> Any:
    """A JSON object field as Go's encoding/json finds it: exact key first, then a case-insensitive match.
    HAMi's annotations and kube-scheduler's extender bodies are both read this way."""
    if key in obj:
        return obj[key]
    folded = key.casefold()
    for k, v in obj.items():
        if isinstance(k, str) and k.casefold() == folded:
            return v
    return None


def _json_int(obj: Mapping[str, Any], key: str, where: str, *, lo: int = _INT32_MIN,
              hi: int = _INT32_MAX) -> int:
    value = go_json_field(obj, key)
    if value is None:  # absent or null: Go leaves the zero value
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise HamiError(f"{where}.{key}", f"not an integer: {value!r}")
    if not lo <= value <= hi:
        raise HamiError(f"{where}.{key}", f"{value} out of range [{lo}, {hi}]")
    return value


def _json_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = go_json_field(obj, key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HamiError(f"{where}.{key}", f"not a string: {value!r}")
    return value


# --- node registration (SPEC §2) ---------------------------------------------------------------------------


def encode_node_devices(devices: Sequence[Device], *, go_omitempty: bool = False) -> str:
    """`hami.io/node-<vendor>-register` in its JSON form.

    By default every field is written, as in the SPEC §2 example. HAMi's Go struct tags all fields
    `omitempty`, so HAMi itself leaves out zeros (`index` 0, `numa` 0, `health` false, …);
    `go_omitempty=True` reproduces those bytes exactly. Both forms decode identically here and in HAMi.
    Key order is the Go struct's: id,index,count,devmem,devcore,type,numa,mode,migProfiles,health — note
    `migProfiles` sits before `health` there, so it does here too.
    """
    out: list[dict[str, Any]] = []
    for d in devices:
        obj: dict[str, Any] = {
            "id": d.uuid, "index": d.index, "count": d.count, "devmem": d.memory_mib,
            "devcore": d.cores, "type": d.type, "numa": d.numa, "mode": d.mode,
        }
        if d.mig_profiles:
            obj["migProfiles"] = [dict(p) for p in d.mig_profiles]
        obj["health"] = d.health
        if go_omitempty:
            obj = {k: v for k, v in obj.items() if v}
        out.append(obj)
    return _go_json(out)


def encode_node_devices_legacy(devices: Sequence[Device]) -> str:
    """The legacy text form, as HAMi's EncodeNodeDevices writes it (9 fields, each device ends in `:`)."""
    parts: list[str] = []
    for i, d in enumerate(devices):
        where = f"device[{i}]"
        _check_token(d.uuid, f"{where}.uuid", ",:")
        if d.uuid[0] in "[{":
            raise HamiError(f"{where}.uuid", f"{d.uuid!r} would be read back as the JSON form")
        if "," in d.type or ":" in d.type:
            raise HamiError(f"{where}.type", f"{d.type!r} contains a separator")
        if "," in d.mode or ":" in d.mode:
            raise HamiError(f"{where}.mode", f"{d.mode!r} contains a separator")
        health = "true" if d.health else "false"
        parts.append(f"{d.uuid},{d.count},{d.memory_mib},{d.cores},{d.type},{d.numa},{health},"
                     f"{d.index},{d.mode}:")
    return "".join(parts)


def decode_node_devices(text: str, vendor: str = "NVIDIA", *,
                        annotation: str = NODE_NVIDIA_REGISTER) -> tuple[Device, ...]:
    """A register annotation in either form: JSON array (current HAMi) or legacy `a,b,…:` text.

    Empty text, `[]` and `null` mean no devices. In the JSON form a missing key is Go's zero value, because
    HAMi writes with `omitempty`: in particular a missing `health` means **unhealthy** (HAMi omits
    `"health":false`), and a missing `count` means 0 (no task fits). A missing or empty `mode` becomes
    "hami-core", matching the legacy 7-field form and HAMi's treatment of "" as matching any mode.
    """
    body = text.strip(_WS)
    if not body:
        return ()
    if body[0] in "[{" or body == "null":
        return _decode_node_devices_json(body, vendor, annotation)
    return _decode_node_devices_legacy(body, vendor, annotation)


def _decode_node_devices_json(body: str, vendor: str, annotation: str) -> tuple[Device, ...]:
    data = _load_json(body, annotation)
    if data is None:
        return ()
    if not isinstance(data, list):
        raise HamiError(annotation, f"expected a JSON array, got {type(data).__name__}")
    devices: list[Device] = []
    for i, obj in enumerate(data):
        where = f"{annotation}[{i}]"
        if not isinstance(obj, dict):
            raise HamiError(where, f"expected a JSON object, got {type(obj).__name__}")
        uuid = _json_str(obj, "id", where)
        if not uuid:
            raise HamiError(f"{where}.id", "missing device id")
        health = go_json_field(obj, "health")
        if health is not None and not isinstance(health, bool):
            raise HamiError(f"{where}.health", f"not a boolean: {health!r}")
        profiles = go_json_field(obj, "migProfiles")
        if profiles is None:
            profiles = []
        if not isinstance(profiles, list) or not all(isinstance(p, dict) for p in profiles):
            raise HamiError(f"{where}.migProfiles", "expected an array of objects")
        devices.append(Device(
            uuid=uuid,
            index=_json_int(obj, "index", where, lo=0, hi=_INT64_MAX),
            count=_json_int(obj, "count", where, lo=0),
            memory_mib=_json_int(obj, "devmem", where, lo=0),
            cores=_json_int(obj, "devcore", where, lo=0),
            type=_json_str(obj, "type", where),
            vendor=vendor,
            numa=_json_int(obj, "numa", where, lo=-_INT64_MAX, hi=_INT64_MAX),
            mode=_json_str(obj, "mode", where) or "hami-core",
            health=bool(health),
            mig_profiles=tuple(dict(p) for p in profiles),
        ))
    return tuple(devices)


def _decode_node_devices_legacy(body: str, vendor: str, annotation: str) -> tuple[Device, ...]:
    devices: list[Device] = []
    # A missing final ':' is tolerated (HAMi requires at least one ':' somewhere).
    for segment in body.split(":"):
        if not segment:
            continue
        where = f"{annotation}[{len(devices)}]"
        items = segment.split(",")
        if len(items) not in (7, 9):
            raise HamiError(where, f"expected 7 or 9 comma-separated fields, got {len(items)}: {segment!r}")
        if not items[0]:
            raise HamiError(f"{where}.id", "missing device id")
        index, mode = 0, "hami-core"
        if len(items) == 9:
            index = _int(items[7], f"{where}.index", lo=0, hi=_INT64_MAX)
            mode = items[8] or "hami-core"
        devices.append(Device(
            uuid=items[0],
            index=index,
            count=_int(items[1], f"{where}.count", lo=0),
            memory_mib=_int(items[2], f"{where}.devmem", lo=0),
            cores=_int(items[3], f"{where}.devcore", lo=0),
            type=items[4],
            vendor=vendor,
            numa=_int(items[5], f"{where}.numa", lo=-_INT64_MAX, hi=_INT64_MAX),
            mode=mode,
            health=parse_go_bool(items[6], f"{where}.health"),
        ))
    return tuple(devices)


# --- topology score (SPEC §2) ------------------------------------------------------------------------------


def encode_topology(scores: Sequence[tuple[str, str, int]]) -> str:
    """`hami.io/node-nvidia-score`: one object per source device (first-seen order), its peers sorted by
    UUID as Go's encoding/json sorts map keys. A repeated (a, b) pair keeps the last score."""
    grouped: dict[str, dict[str, int]] = {}
    for a, b, score in scores:
        grouped.setdefault(a, {})[b] = score
    return _go_json([{"uuid": a, "score": dict(sorted(peers.items()))} for a, peers in grouped.items()])


def decode_topology(text: str, *, annotation: str = NODE_NVIDIA_SCORE) -> tuple[tuple[str, str, int], ...]:
    """The `Node.topology` triples (uuid, peer, score); empty text or `null` means no topology."""
    body = text.strip(_WS)
    if not body:
        return ()
    data = _load_json(body, annotation)
    if data is None:
        return ()
    if not isinstance(data, list):
        raise HamiError(annotation, f"expected a JSON array, got {type(data).__name__}")
    out: list[tuple[str, str, int]] = []
    for i, obj in enumerate(data):
        where = f"{annotation}[{i}]"
        if not isinstance(obj, dict):
            raise HamiError(where, f"expected a JSON object, got {type(obj).__name__}")
        uuid = _json_str(obj, "uuid", where)
        peers = go_json_field(obj, "score")
        if peers is None:
            continue
        if not isinstance(peers, dict):
            raise HamiError(f"{where}.score", "expected a JSON object")
        if peers and not uuid:
            raise HamiError(f"{where}.uuid", "missing device uuid")
        for peer, score in peers.items():
            if isinstance(score, bool) or not isinstance(score, int):
                raise HamiError(f"{where}.score[{peer}]", f"not an integer: {score!r}")
            out.append((uuid, peer, score))
    return tuple(out)


# --- pod allocation (SPEC §3) ------------------------------------------------------------------------------


def encode_pod_allocation(alloc: PodAllocation) -> str:
    """`UUID,Vendor,mem,cores:` per device, `;` after every container (so n containers → n `;`)."""
    out: list[str] = []
    for c, container in enumerate(alloc):
        for d, dev in enumerate(container):
            where = f"container[{c}].device[{d}]"
            _check_token(dev.uuid, f"{where}.uuid", ",:;")
            _check_token(dev.vendor, f"{where}.vendor", ",:;")
            if dev.memory_mib < 0 or dev.cores < 0:
                raise HamiError(where, "memory and cores must not be negative")
            out.append(f"{dev.uuid},{dev.vendor},{dev.memory_mib},{dev.cores}:")
        out.append(";")
    return "".join(out)


def decode_pod_allocation(text: str, *, annotation: str = VGPU_DEVICES_ALLOCATED) -> PodAllocation:
    """Inverse of encode_pod_allocation, lenient like HAMi's DecodePodDevices.

    - "" → () (no containers). Otherwise one entry per `;`-terminated segment; a final segment without
      its `;` still counts ("a:" is one container), and the empty remainder after a final `;` does not.
      (Go's strings.Split yields that remainder as an extra empty container; we drop it, so HAMi's extra
      trailing empty entries after a device-plugin rewrite show up here as trailing empty containers.)
    - Empty device segments are skipped (a missing final `:` is fine); fields after the 4th are ignored,
      as HAMi does. Memory and cores are non-negative int32.
    """
    body = text.strip(_WS)
    if not body:
        return ()
    entries = body.split(";")
    if entries[-1] == "":
        entries.pop()
    containers: list[ContainerAllocation] = []
    for c, entry in enumerate(entries):
        devices: list[ContainerDevice] = []
        for segment in entry.split(":"):
            if not segment:
                continue
            where = f"{annotation}[container {c}][device {len(devices)}]"
            fields = segment.split(",")
            if len(fields) < 4:
                raise HamiError(where, f"expected UUID,Vendor,mem,cores, got {segment!r}")
            if not fields[0]:
                raise HamiError(where, "missing device UUID")
            if not fields[1]:
                raise HamiError(where, "missing device vendor")
            devices.append(ContainerDevice(
                uuid=fields[0],
                vendor=fields[1],
                memory_mib=_int(fields[2], f"{where}.mem", lo=0),
                cores=_int(fields[3], f"{where}.cores", lo=0),
            ))
        containers.append(tuple(devices))
    return tuple(containers)


def blank_container(text: str, container_index: int, *,
                    annotation: str = VGPU_DEVICES_TO_ALLOCATE) -> str:
    """The to-allocate annotation with one container's entry emptied (the device plugin has served it).

    Re-encoded canonically, so a trailing `;` is always present.
    """
    alloc = decode_pod_allocation(text, annotation=annotation)
    if not 0 <= container_index < len(alloc):
        raise HamiError(annotation, f"no container {container_index} (annotation has {len(alloc)})")
    return encode_pod_allocation((*alloc[:container_index], (), *alloc[container_index + 1:]))


def first_pending_container(text: str, *, annotation: str = VGPU_DEVICES_TO_ALLOCATE) -> int | None:
    """Index of the first container still waiting for devices, as HAMi's device plugin picks it."""
    for i, container in enumerate(decode_pod_allocation(text, annotation=annotation)):
        if container:
            return i
    return None


# --- node lock (SPEC §3) -----------------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:(Z)|([+-])(\d{2}):(\d{2}))"
)


def format_rfc3339(at: datetime) -> str:
    """Go's time.RFC3339 (`2006-01-02T15:04:05Z07:00`) in UTC; a naive datetime is taken as UTC."""
    utc = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str, where: str) -> datetime:
    """Go's time.Parse(time.RFC3339, …): offset required, fractional seconds accepted."""
    m = _RFC3339.fullmatch(text)
    if not m:
        raise HamiError(where, f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    micro = int((m.group(7) or "0").ljust(9, "0")[:6])
    if m.group(8):
        tz: timezone = UTC
    else:
        hours, minutes = int(m.group(10)), int(m.group(11))
        if hours > 23 or minutes > 59:
            raise HamiError(where, f"bad UTC offset in {text!r}")
        sign = -1 if m.group(9) == "-" else 1
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError as exc:
        raise HamiError(where, f"{text!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class NodeLock:
    """Who holds a node's `hami.io/mutex.lock` and since when.

    HAMi writes a bare RFC 3339 time (no pod) when it locks without a pod; then namespace and pod are "".
    """

    at: datetime
    namespace: str = ""
    pod: str = ""


def encode_node_lock(at: datetime, namespace: str, pod: str) -> str:
    """`<RFC3339>,<namespace>,<pod>`. HAMi formats its local time with an offset; we always write UTC (`Z`),
    which HAMi's time.Parse(time.RFC3339) reads the same way."""
    _check_token(namespace, "namespace", ",")
    _check_token(pod, "pod", ",")
    return f"{format_rfc3339(at)},{namespace},{pod}"


def decode_node_lock(text: str, *, annotation: str = NODE_LOCK) -> NodeLock:
    """Either `<RFC3339>,<ns>,<pod>` or HAMi's pod-less `<RFC3339>` (exactly as HAMi's ParseNodeLock)."""
    body = text.strip(_WS)
    if "," not in body:
        return NodeLock(at=parse_rfc3339(body, annotation))
    parts = body.split(",")
    if len(parts) != 3:
        raise HamiError(annotation, f"expected <time>,<namespace>,<pod>, got {len(parts)} parts: {text!r}")
    return NodeLock(at=parse_rfc3339(parts[0], annotation), namespace=parts[1], pod=parts[2])


# --- handshake (SPEC §2) -----------------------------------------------------------------------------------

HandshakeState = Literal["Requesting", "Reported", "Deleted"]


@dataclass(frozen=True, slots=True)
class Handshake:
    """`hami.io/node-handshake`: the scheduler's request, the agent's report, or HAMi's deletion mark.

    `at` is aware; None only when the value carries no time at all (e.g. a bare "Deleted").
    """

    state: HandshakeState
    at: datetime | None


_DATETIME = "%Y-%m-%d %H:%M:%S"  # Go time.DateTime, current HAMi
_DATETIME_DOTTED = "%Y.%m.%d %H:%M:%S"  # "2006.01.02 15:04:05", HAMi before v2.4
# Go's time.Time.String(): "2006-01-02 15:04:05.999999999 -0700 MST" plus " m=+1.5" when monotonic.
_GO_TIME_STRING = re.compile(
    r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))? ([+-])(\d{2})(\d{2})"
    r"(?: [A-Za-z0-9+-]+)?(?: m=[+-]?\d+(?:\.\d+)?)?"
)
_HANDSHAKE = re.compile(r"(Requesting|Reported|Deleted)(?:[_ ](.*))?", re.DOTALL)


def requesting_handshake(now: datetime) -> str:
    """`Requesting_<YYYY-MM-DD HH:MM:SS>` (SPEC; HAMi's time.DateTime layout).

    HAMi writes the scheduler's local wall clock without a zone and reads it back in the same zone; we write
    UTC (naive = UTC) and decode zone-less times as UTC, which is the same thing in UTC containers.
    """
    utc = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    return f"Requesting_{utc.strftime(_DATETIME)}"


def reported_handshake(now: datetime) -> str:
    """What HAMi's device plugin writes: `Reported ` + Go's time.String() (space, not underscore), in UTC."""
    utc = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    frac = f".{utc.microsecond:06d}".rstrip("0") if utc.microsecond else ""
    return f"Reported {utc.strftime(_DATETIME)}{frac} +0000 UTC"


def _parse_handshake_time(text: str, where: str) -> datetime:
    for layout in (_DATETIME, _DATETIME_DOTTED):
        try:
            return datetime.strptime(text, layout).replace(tzinfo=UTC)
        except ValueError:
            pass
    m = _GO_TIME_STRING.fullmatch(text)
    if m:
        try:
            base = datetime.strptime(m.group(1), _DATETIME)
        except ValueError:
            raise HamiError(where, f"bad time {text!r}") from None
        micro = int((m.group(2) or "0").ljust(9, "0")[:6])
        hours, minutes = int(m.group(4)), int(m.group(5))
        if hours > 23 or minutes > 59:
            raise HamiError(where, f"bad UTC offset in {text!r}")
        sign = -1 if m.group(3) == "-" else 1
        offset = timezone(sign * timedelta(hours=hours, minutes=minutes))
        return base.replace(microsecond=micro, tzinfo=offset)
    if "T" in text:
        return parse_rfc3339(text, where)
    raise HamiError(where, f"unrecognised time {text!r}")


def decode_handshake(text: str, *, annotation: str = NODE_HANDSHAKE) -> Handshake:
    """Every form HAMi writes: `Requesting_2006-01-02 15:04:05` (and the older `2006.01.02` layout),
    `Reported 2024-01-23 04:30:04.43 +0000 UTC m=+1.7` (device plugin, Go time.String()),
    `Deleted_<time>`. Zone-less times are taken as UTC."""
    m = _HANDSHAKE.fullmatch(text.strip(_WS))
    if not m:
        raise HamiError(annotation, f"expected Requesting_/Reported/Deleted_<time>, got {text!r}")
    state = cast(HandshakeState, m.group(1))  # the regex admits only the three states
    stamp = (m.group(2) or "").strip(_WS)
    return Handshake(state=state, at=_parse_handshake_time(stamp, annotation) if stamp else None)


# --- small shared decoders ---------------------------------------------------------------------------------


def split_list(text: str) -> tuple[str, ...]:
    """A comma list annotation: items stripped, empties dropped (HAMi treats "" as no constraint)."""
    return tuple(item.strip() for item in text.split(",") if item.strip())

