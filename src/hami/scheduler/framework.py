"""The scheduling framework: filter → score → select → reserve, with pluggable policies.

`Scheduler.schedule(pod, state)` is a pure function of the pod and the state (it never mutates the state;
`reserve` does): the extender, the simulator, `hami place` and the tests all call it. Filtering is
vectorised over every device slot; only the best-scored nodes get an exact, per-container fit, in
order, until one succeeds. Reasons for rejected nodes are computed lazily: the arrays that explain them
are kept, the strings are built only when someone reads them.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from hami.resources import (
    ContainerAllocation,
    ContainerDevice,
    DeviceRequest,
    PodAllocation,
    PodRequest,
)
from hami.scheduler.fit import (
    REASON_NAMES,
    DeviceConstraint,
    DeviceView,
    Reason,
    could_ever_fit,
    device_reasons,
)
from hami.scheduler.state import ClusterState, PodRecord

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

INSUFFICIENT_CPU = "Insufficient cpu"
INSUFFICIENT_MEMORY = "Insufficient memory"
NODE_INSUFFICIENT_DEVICE = "NodeInsufficientDevice"
NUMA_NOT_FIT = "NumaNotFit"
NOT_A_CANDIDATE = "NotACandidate"


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Cluster defaults; a pod's annotations override the policies for that pod."""

    # Hami's own fragmentation-aware placement (scheduler/plugins/frag_aware.py), measured against FGD on
    # the Alibaba trace in bench/RESULTS.md; binpack/spread remain a pod annotation away.
    node_policy: str = "frag-aware"
    device_policy: tuple[str, ...] = ("frag-aware",)
    exact_fit_attempts: int = 64  # nodes tried in score order before giving up on joint fit


@dataclass(slots=True)
class Slot:
    """One (container, device request) pair of the pod, with its resolved constraint and fit codes."""

    container: int
    request: DeviceRequest
    constraint: DeviceConstraint
    codes: IntArray  # per device slot, over the whole cluster


@dataclass(slots=True)
class PlacementContext:
    """Everything the stages and plugins share while placing one pod. `scratch` lets a policy hand
    its node-level computation to its own device-level step (e.g. FGD's best GPU per node)."""

    state: ClusterState
    pod: PodRequest
    slots: list[Slot]
    view: DeviceView
    scratch: dict[str, Any] = field(default_factory=dict)


class NodeScorer(Protocol):
    """Scores feasible nodes; higher is better. Ties go to the lower node slot."""

    name: str

    def score(self, ctx: PlacementContext, nodes: IntArray) -> FloatArray: ...


class DevicePolicy:
    """Ranks and picks devices on one node for one request. `rank` orders candidates (lower first);
    `pick` chooses `count` of the ordered candidates. Subclasses override either or both."""

    name = ""
    picks = False  # whether this policy chooses the device set (numa, topology) rather than ranks

    def rank(self, ctx: PlacementContext, node: int, slot: Slot, view: DeviceView,
             cand: IntArray) -> FloatArray | None:
        return None

    def pick(self, ctx: PlacementContext, node: int, slot: Slot, view: DeviceView,
             ordered: IntArray) -> IntArray | None:
        return ordered[: slot.request.count] if len(ordered) >= slot.request.count else None


_FIRST = DevicePolicy()


def _reason_counts(codes: IntArray) -> list[str]:
    """`n/total Reason` for each reason among a node's devices, the most frequent first."""
    counts = Counter(int(c) for c in codes if c != Reason.FITS)
    return [f"{n}/{len(codes)} {REASON_NAMES[Reason(c)]}" for c, n in counts.most_common()]


def _view(state: ClusterState, sel: slice | IntArray) -> DeviceView:
    return DeviceView(
        valid=state.dev_valid[sel], health=state.dev_health[sel], cordoned=state.dev_cordoned[sel],
        type=state.dev_type[sel], mode=state.dev_mode[sel], vendor=state.dev_vendor[sel],
        mem_total=state.dev_mem_total[sel], mem_used=state.dev_mem_used[sel],
        core_total=state.dev_core_total[sel], core_used=state.dev_core_used[sel],
        count_total=state.dev_count_total[sel], count_used=state.dev_count_used[sel],
    )


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one pod: where it goes (or None) and why every other node was rejected."""

    pod: PodRequest
    node: str | None
    allocation: PodAllocation
    rejected: Rejections

    @property
    def placed(self) -> bool:
        return self.node is not None

    def record(self) -> PodRecord:
        """The state entry that reserving this decision adds."""
        assert self.node is not None
        init = tuple(c.init for c in self.pod.containers)
        return PodRecord(self.pod.uid, self.pod.key, self.node, self.allocation, init,
                         self.pod.cpu_milli, self.pod.memory_mib)


class Rejections(Mapping[str, str]):
    """node name -> reason, built lazily from the filter's arrays (a filter over 5,000 nodes must not
    format 5,000 strings that nobody reads)."""

    def __init__(self, ctx: PlacementContext | None, node_fail: dict[int, str],
                 cpu_fail: BoolArray, mem_fail: BoolArray, short_of: IntArray,
                 numa_fail: BoolArray, candidates: BoolArray) -> None:
        self._ctx = ctx
        self._explicit = node_fail  # reasons set by exact fit, by node slot
        self._cpu = cpu_fail
        self._mem = mem_fail
        self._short = short_of  # per node slot: index into ctx.slots of the first short request, or -1
        self._numa = numa_fail
        self._cand = candidates
        self._names: list[str] | None = None

    @classmethod
    def empty(cls) -> Rejections:
        z = np.zeros(0, np.bool_)
        return cls(None, {}, z, z, np.zeros(0, np.int64), z, z)

    def _rejected_slots(self) -> list[int]:
        bad = (self._cpu | self._mem | self._numa | (self._short >= 0)) & self._cand
        out = set(np.flatnonzero(bad).tolist()) | set(self._explicit)
        return sorted(out)

    def _node_names(self) -> list[str]:
        if self._names is None:
            names = self._ctx.state.node_names if self._ctx else []
            self._names = [names[i] for i in self._rejected_slots()]
        return self._names

    def __len__(self) -> int:
        return len(self._node_names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._node_names())

    def __getitem__(self, name: str) -> str:
        if self._ctx is None:
            raise KeyError(name)
        idx = self._ctx.state.node_index.get(name)
        if idx is None:
            raise KeyError(name)
        if idx in self._explicit:
            return self._explicit[idx]
        parts = []
        if idx < len(self._cpu) and self._cpu[idx]:
            parts.append(INSUFFICIENT_CPU)
        if idx < len(self._mem) and self._mem[idx]:
            parts.append(INSUFFICIENT_MEMORY)
        if idx < len(self._short) and self._short[idx] >= 0:
            parts.append(self._device_reason(idx, self._ctx.slots[int(self._short[idx])]))
        elif idx < len(self._numa) and self._numa[idx]:
            parts.append(NUMA_NOT_FIT)
        if not parts:
            raise KeyError(name)
        return "; ".join(parts)

    def _device_reason(self, idx: int, slot: Slot) -> str:
        state = self._ctx.state if self._ctx else None
        assert state is not None
        dev = state.node_devices[idx]
        if len(dev) == 0:
            return f"{NODE_INSUFFICIENT_DEVICE}: no {slot.request.vendor} device"
        codes = slot.codes[dev]
        fit = int((codes == Reason.FITS).sum())
        detail = [f"need {slot.request.count}, {fit}/{len(dev)} fit", *_reason_counts(codes)]
        return f"{NODE_INSUFFICIENT_DEVICE}: {', '.join(detail)}"

    def unresolvable(self) -> set[str]:
        """Nodes where even evicting every pod would not help (wrong types, too small, unhealthy...)."""
        if self._ctx is None:
            return set()
        ctx = self._ctx
        names = ctx.state.node_names
        n_nodes = ctx.state.n_node_slots
        never = np.zeros(n_nodes, np.bool_)
        nd = ctx.state.n_dev_slots
        for slot in ctx.slots:
            ok = could_ever_fit(slot.request, slot.constraint, ctx.view)
            per_node = np.bincount(ctx.state.dev_node[:nd][ok], minlength=n_nodes)
            never |= per_node < slot.request.count
        st = ctx.state
        never |= (st.node_cpu_total[:n_nodes] > 0) & (st.node_cpu_total[:n_nodes] < ctx.pod.cpu_milli)
        never |= (st.node_mem_total[:n_nodes] > 0) & (st.node_mem_total[:n_nodes] < ctx.pod.memory_mib)
        return {names[i] for i in self._rejected_slots() if never[i]}


def _constraint(state: ClusterState, pod: PodRequest, req: DeviceRequest, mutex: bool) -> DeviceConstraint:
    sel = pod.selector
    type_ok = np.fromiter((sel.type_allowed(t) for t in state.types.names), np.bool_,
                          count=len(state.types.names))
    if len(type_ok) == 0:
        type_ok = np.zeros(1, np.bool_)
    uuid_ok = None
    if sel.use_uuids or sel.nouse_uuids:
        nd = state.n_dev_slots
        if sel.use_uuids:
            uuid_ok = np.zeros(nd, np.bool_)
            for u in sel.use_uuids:
                for s in state.uuid_slots.get(u, ()):
                    uuid_ok[s] = True
        else:
            uuid_ok = np.ones(nd, np.bool_)
        for u in sel.nouse_uuids:
            for s in state.uuid_slots.get(u, ()):
                uuid_ok[s] = False
    mode = None
    if sel.mode:
        mode = state.modes.ids.get(sel.mode, -1)
    return DeviceConstraint(state.vendors.ids.get(req.vendor, -1), type_ok, uuid_ok, mode, mutex)


class Scheduler:
    """Holds the configuration and the policy instances (some learn from what they see)."""

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        from hami.scheduler import plugins

        self.config = config or SchedulerConfig()
        self._plugins = plugins
        self._node_scorers: dict[str, NodeScorer] = {}
        self._device_policies: dict[str, DevicePolicy] = {}
        self.node_scorer(self.config.node_policy)  # fail fast on an unknown default
        for name in self.config.device_policy:
            self.device_policy(name)

    def node_scorer(self, name: str) -> NodeScorer:
        scorer = self._node_scorers.get(name)
        if scorer is None:
            scorer = self._node_scorers[name] = self._plugins.make_node_scorer(name)
        return scorer

    def device_policy(self, name: str) -> DevicePolicy:
        policy = self._device_policies.get(name)
        if policy is None:
            policy = self._device_policies[name] = self._plugins.make_device_policy(name)
        return policy

    # -- filter -------------------------------------------------------------------------------------
    def _context(self, pod: PodRequest, state: ClusterState) -> PlacementContext:
        nd = state.n_dev_slots
        view = _view(state, slice(0, nd))
        chain = pod.device_policy or self.config.device_policy
        mutex = "mutex" in chain
        slots = []
        for ci, container in enumerate(pod.containers):
            for req in container.devices:
                c = _constraint(state, pod, req, mutex)
                slots.append(Slot(ci, req, c, device_reasons(req, c, view)))
        return PlacementContext(state, pod, slots, view)

    def schedule(self, pod: PodRequest, state: ClusterState, candidates: Iterable[str] | None = None,
                 exclude: Iterable[str] = ()) -> Decision:
        """Place `pod` on one of `candidates` (None: every node) other than `exclude` (a few names the
        caller wants avoided, cheaper than a candidate list of all the others)."""
        ctx = self._context(pod, state)
        n_nodes = state.n_node_slots
        feasible = state.node_valid[:n_nodes].copy()
        cand = feasible.copy()
        if candidates is not None:
            cand = np.zeros(n_nodes, np.bool_)
            for name in candidates:
                i = state.node_index.get(name)
                if i is not None:
                    cand[i] = True
            cand &= feasible
        for name in exclude:
            i = state.node_index.get(name)
            if i is not None:
                cand[i] = False
        cpu_total = state.node_cpu_total[:n_nodes]
        mem_total = state.node_mem_total[:n_nodes]
        cpu_fail = (cpu_total > 0) & (cpu_total - state.node_cpu_used[:n_nodes] < pod.cpu_milli)
        mem_fail = (mem_total > 0) & (mem_total - state.node_mem_used[:n_nodes] < pod.memory_mib)
        ok = cand & ~cpu_fail & ~mem_fail
        dev_node = state.dev_node[: state.n_dev_slots]
        short_of = np.full(n_nodes, -1, np.int64)
        numa_fail = np.zeros(n_nodes, np.bool_)
        for si, slot in enumerate(ctx.slots):
            fits = slot.codes == Reason.FITS
            per_node = np.bincount(dev_node[fits], minlength=n_nodes)[:n_nodes]
            short = cand & (per_node < slot.request.count)
            short_of[short & (short_of < 0)] = si
            ok &= ~short
            if pod.selector.numa_bind and slot.request.count > 1:
                numa = state.dev_numa[: state.n_dev_slots]
                width = int(numa.max(initial=0)) + 1
                per_group = np.bincount(dev_node[fits] * width + numa[fits], minlength=n_nodes * width)
                best = per_group[: n_nodes * width].reshape(n_nodes, width).max(axis=1)
                bad = ok & (best < slot.request.count)
                numa_fail |= bad
                ok &= ~bad
        feasible_nodes = np.flatnonzero(ok)
        node_fail: dict[int, str] = {}
        rejections = Rejections(ctx, node_fail, cpu_fail & cand, mem_fail & cand, short_of,
                                numa_fail, cand)
        if len(feasible_nodes) == 0:
            return Decision(pod, None, (), rejections)
        # -- score and select ---------------------------------------------------------------------
        scorer = self.node_scorer(pod.node_policy or self.config.node_policy)
        scores = scorer.score(ctx, feasible_nodes)
        for idx in best_first(feasible_nodes, scores, self.config.exact_fit_attempts).tolist():
            allocation, why = self._fit_node(ctx, idx)
            if allocation is not None:
                return Decision(pod, state.node_names[idx], allocation, rejections)
            node_fail[idx] = why
        return Decision(pod, None, (), rejections)

    def score_nodes(self, pod: PodRequest, state: ClusterState, nodes: IntArray) -> FloatArray:
        """The pod's node policy scores for these node slots (higher is better), without placing it:
        the extender's prioritize verb."""
        scorer = self.node_scorer(pod.node_policy or self.config.node_policy)
        return scorer.score(self._context(pod, state), nodes)

    # -- exact fit on one node ----------------------------------------------------------------------
    def _fit_node(self, ctx: PlacementContext, idx: int) -> tuple[PodAllocation | None, str]:
        state, pod = ctx.state, ctx.pod
        slots_idx = state.node_devices[idx]
        base = _view(state, slots_idx)
        work = dataclasses.replace(base, mem_used=base.mem_used.copy(), core_used=base.core_used.copy(),
                                   count_used=base.count_used.copy())
        chain = pod.device_policy or self.config.device_policy
        policies = [self.device_policy(name) for name in chain]
        rankers = [p for p in policies if not p.picks]
        pickers = [p for p in policies if p.picks]
        if pod.selector.numa_bind:
            pickers.insert(0, self.device_policy("numa-bind"))
        per_container: list[list[ContainerDevice]] = [[] for _ in pod.containers]
        for slot in ctx.slots:
            init = pod.containers[slot.container].init
            view = base if init else work
            c = slot.constraint
            if c.uuid_ok is not None:
                c = dataclasses.replace(c, uuid_ok=c.uuid_ok[slots_idx])
            codes = device_reasons(slot.request, c, view)
            taken = {d.uuid for d in per_container[slot.container]}
            cand = np.array([i for i in np.flatnonzero(codes == Reason.FITS).tolist()
                             if state.dev_uuid[slots_idx[i]] not in taken], np.int64)
            if len(cand) < slot.request.count:
                detail = ", ".join(_reason_counts(codes))
                return None, f"{NODE_INSUFFICIENT_DEVICE}: {detail or 'devices taken by this pod'}"
            ordered = self._order(ctx, idx, slot, view, cand, rankers)
            picker = pickers[0] if pickers else _FIRST
            chosen = picker.pick(ctx, idx, slot, view, ordered)
            if chosen is None:
                return None, NUMA_NOT_FIT
            for i in chosen.tolist():
                mem = slot.request.memory_for(int(view.mem_total[i]))
                per_container[slot.container].append(ContainerDevice(
                    state.dev_uuid[slots_idx[i]], slot.request.vendor, mem, slot.request.cores))
                if not init:
                    work.mem_used[i] += mem
                    work.core_used[i] += slot.request.cores
                    work.count_used[i] += 1
        allocation: PodAllocation = tuple(tuple(c) for c in per_container)
        return allocation, ""

    def _order(self, ctx: PlacementContext, idx: int, slot: Slot, view: DeviceView, cand: IntArray,
               rankers: Sequence[DevicePolicy]) -> IntArray:
        keys = []
        for policy in rankers:
            key = policy.rank(ctx, idx, slot, view, cand)
            if key is not None:
                keys.append(key)
        if not keys:
            return cand
        # lexsort sorts by the last key first: the first policy of the chain is the primary key.
        return cand[np.lexsort((cand, *reversed(keys)))]

    # -- reserve ------------------------------------------------------------------------------------
    @staticmethod
    def reserve(state: ClusterState, decision: Decision) -> None:
        """Account a placed decision in the state (the cache, until the API server confirms it)."""
        if decision.node is None:
            raise ValueError(f"{decision.pod.key}: cannot reserve an unplaced pod")
        state.add_pod(decision.record())


def best_first(nodes: IntArray, scores: FloatArray, k: int) -> IntArray:
    """The `k` best nodes, highest score first and ties to the lower slot: a full sort's first `k`, at the
    cost of a partition (sorting 5,000 scores per pod to try the first one or two is most of a filter)."""
    if len(nodes) > k > 0:
        key = -scores
        kth = np.partition(key, k - 1)[k - 1]
        if not np.isnan(kth):
            keep = key <= kth  # every tie at the boundary too, so the lower slots among them win
            nodes, scores = nodes[keep], scores[keep]
    out: IntArray = nodes[np.lexsort((nodes, -scores))][:k]
    return out


def container_allocation_by_vendor(allocation: PodAllocation, vendor: str) -> PodAllocation:
    """One vendor's part of an allocation, every container kept (empty where it has none)."""
    return tuple(tuple(d for d in c if d.vendor == vendor) for c in allocation)


def empty_allocation(n: int) -> PodAllocation:
    empty: ContainerAllocation = ()
    return (empty,) * n
