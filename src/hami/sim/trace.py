"""The openb trace (Alibaba cluster-trace-gpu-v2023): CSV loading and its mapping onto the core's values.

Loading is the boundary: a malformed row fails here with the file and line named, so the engine only sees
valid tasks. The mapping (`cluster_nodes`, `TaskShape.request`) is the one the extender also uses, so the
simulator exercises exactly the production scheduling path.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hami.resources import (
    ContainerRequest,
    Device,
    DeviceRequest,
    DeviceSelector,
    HamiError,
    Node,
    PodRequest,
)

MILLI = 1000
DEVICE_SPLIT = 64  # openb has no per-GPU task limit; 64 is far above any packing the trace allows
VENDOR = "NVIDIA"
TYPE_PREFIX = "NVIDIA-"
NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
TIME_COLUMNS = ("creation_time", "deletion_time")

# Card memory in MiB (as nvidia-smi reports it), rounded up to a multiple of 100 so that every whole
# percentage of a card is an integral MiB. G2/G3 are Alibaba-internal models; their size only scales the
# percentages, which is all the trace specifies.
MODEL_MEMORY_MIB = {
    "P100": 16300, "T4": 15200, "V100M16": 16200, "V100M32": 32600, "A10": 22800,
    "G2": 16300, "G3": 32600,
}
DEFAULT_MEMORY_MIB = 16300


class TraceError(HamiError):
    """A bad trace row; `field` is "file:line" so the message points at the culprit."""


@dataclass(frozen=True, slots=True)
class TraceNode:
    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str  # "" on CPU-only nodes

    @property
    def device_type(self) -> str:
        return TYPE_PREFIX + self.model


@dataclass(frozen=True, slots=True)
class TaskShape:
    """What a task asks for, without its identity: the unit policies learn workload statistics over."""

    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int  # per GPU; 1000 = a whole card
    gpu_spec: tuple[str, ...] = ()  # allowed models, empty = any

    @property
    def gpu_request(self) -> int:
        """Total milli-GPU asked for: the unit of the paper's metric."""
        return self.num_gpu * self.gpu_milli

    @property
    def sharing(self) -> bool:
        return self.num_gpu == 1 and self.gpu_milli < MILLI

    def request(self, name: str, uid: str) -> PodRequest:
        """The pod as the scheduling core sees it (one container; the trace has no finer structure)."""
        devices: tuple[DeviceRequest, ...] = ()
        if self.num_gpu:
            pct = self.gpu_milli // 10
            devices = (DeviceRequest(VENDOR, self.num_gpu, memory_pct=pct, cores=pct),)
        selector = DeviceSelector(use_types=tuple(TYPE_PREFIX + m for m in self.gpu_spec))
        container = ContainerRequest("main", devices, cpu_milli=self.cpu_milli, memory_mib=self.memory_mib)
        return PodRequest("openb", name, uid, (container,), selector)


@dataclass(frozen=True, slots=True)
class TraceTask:
    name: str
    shape: TaskShape
    creation_time: int | None = None  # seconds from trace start; None in the 5-column files
    deletion_time: int | None = None


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise TraceError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise TraceError(f"{path}:1", f"missing column(s) {', '.join(missing)} (header: {header})")
        for row in reader:
            line = reader.line_num
            if None in row or any(v is None for v in row.values()):
                raise TraceError(f"{path}:{line}", f"expected {len(header)} fields")
            yield line, row


def _int(row: dict[str, str], column: str, where: str, low: int = 0, high: int | None = None) -> int:
    text = row[column].strip()
    try:
        value = int(text)
    except ValueError:
        raise TraceError(where, f"{column}: not an integer: {text!r}") from None
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise TraceError(where, f"{column}: {value} is not {bound}")
    return value


def load_nodes(path: str | Path) -> list[TraceNode]:
    """Read `sn,cpu_milli,memory_mib,gpu,model`. GPU nodes must name a model; CPU nodes must not have GPUs."""
    path = Path(path)
    nodes: list[TraceNode] = []
    seen: set[str] = set()
    for line, row in _rows(path, NODE_COLUMNS):
        where = f"{path}:{line}"
        name = row["sn"].strip()
        if not name:
            raise TraceError(where, "sn: empty node name")
        if name in seen:
            raise TraceError(where, f"sn: duplicate node {name!r}")
        seen.add(name)
        gpus = _int(row, "gpu", where, 0, 64)
        model = row["model"].strip()
        if gpus and not model:
            raise TraceError(where, f"model: node {name} has {gpus} GPU(s) but no model")
        if "|" in model:
            raise TraceError(where, f"model: {model!r} must be one model")
        nodes.append(TraceNode(name, _int(row, "cpu_milli", where), _int(row, "memory_mib", where), gpus,
                               model if gpus else ""))
    if not nodes:
        raise TraceError(str(path), "no nodes")
    return nodes


def load_pods(path: str | Path) -> list[TraceTask]:
    """Read the 11-column task list or the 5-column multigpu variant (no spec, no times)."""
    path = Path(path)
    tasks: list[TraceTask] = []
    for line, row in _rows(path, POD_COLUMNS):
        where = f"{path}:{line}"
        num_gpu = _int(row, "num_gpu", where, 0, 64)
        gpu_milli = _int(row, "gpu_milli", where, 0, MILLI)
        if num_gpu == 0 and gpu_milli:
            raise TraceError(where, f"gpu_milli: {gpu_milli} on a task without GPUs")
        if num_gpu and gpu_milli == 0:
            raise TraceError(where, f"gpu_milli: 0 on a task asking for {num_gpu} GPU(s)")
        if num_gpu > 1 and gpu_milli != MILLI:
            raise TraceError(where, f"gpu_milli: multi-GPU task must take whole GPUs, got {gpu_milli}")
        if gpu_milli % 10:
            raise TraceError(where, f"gpu_milli: {gpu_milli} is not a whole percentage of a GPU")
        spec_text = (row.get("gpu_spec") or "").strip()
        spec = tuple(dict.fromkeys(m.strip() for m in spec_text.split("|") if m.strip()))
        if spec and not num_gpu:
            raise TraceError(where, f"gpu_spec: {spec_text!r} on a task without GPUs")
        created = deleted = None
        if all(c in row for c in TIME_COLUMNS):
            created = _int(row, "creation_time", where)
            deleted = _int(row, "deletion_time", where)
            if deleted < created:
                raise TraceError(where, f"deletion_time {deleted} is before creation_time {created}")
        shape = TaskShape(_int(row, "cpu_milli", where), _int(row, "memory_mib", where), num_gpu, gpu_milli,
                          spec)
        tasks.append(TraceTask(row["name"].strip() or f"task-{line}", shape, created, deleted))
    if not tasks:
        raise TraceError(str(path), "no tasks")
    return tasks


def cluster_nodes(nodes: list[TraceNode]) -> list[Node]:
    """Core nodes: CPU and memory as hard limits, one device per GPU typed `NVIDIA-<model>`. In name
    order: the framework breaks score ties by node slot, and the paper's artifact by node name."""
    out = []
    for n in sorted(nodes, key=lambda n: n.name):
        memory = MODEL_MEMORY_MIB.get(n.model, DEFAULT_MEMORY_MIB)
        devices = tuple(Device(uuid=f"{n.name}-gpu{i}", index=i, count=DEVICE_SPLIT, memory_mib=memory,
                               cores=100, type=n.device_type, vendor=VENDOR) for i in range(n.gpus))
        out.append(Node(n.name, devices, n.cpu_milli, n.memory_mib))
    return out


def gpu_capacity(nodes: list[TraceNode]) -> int:
    """Cluster GPU capacity in milli-GPU (the denominator of every percentage the paper reports)."""
    return sum(n.gpus for n in nodes) * MILLI


def check_models(nodes: list[TraceNode], tasks: list[TraceTask]) -> None:
    """Type constraints match by case-insensitive substring (SPEC); refuse a trace where one model name
    would silently admit another (e.g. "A10" inside "A100")."""
    models = {n.model for n in nodes if n.model} | {m for t in tasks for m in t.shape.gpu_spec}
    for a in models:
        for b in models:
            if a != b and (TYPE_PREFIX + a).lower() in (TYPE_PREFIX + b).lower():
                raise TraceError("gpu_spec", f"model {a!r} would also match {b!r}; rename one of them")
