"""Time replay: pods arrive at their creation time and run for (deletion - creation) seconds once started.

A pod that does not fit waits in a FIFO queue and is retried when capacity frees. Retry work per event is
bounded (`retry_budget` attempts, and a shape that failed once in a pass is not tried again in that pass:
capacity only shrinks within a pass), so a replay of a whole trace finishes in minutes.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hami.resources import HamiError
from hami.scheduler.framework import Scheduler
from hami.scheduler.state import ClusterState
from hami.sim import metrics
from hami.sim.engine import make_scheduler, trace_name
from hami.sim.policies import policy
from hami.sim.trace import (
    TaskShape,
    TraceTask,
    check_models,
    cluster_nodes,
    gpu_capacity,
    load_nodes,
    load_pods,
)

DEPART, ARRIVE = 0, 1  # at equal times, departures first: capacity frees before new pods ask for it
RETRY_BUDGET = 64
SAMPLES = 400


@dataclass(frozen=True, slots=True)
class Sample:
    time: int
    allocated_pct: float
    queued: int


@dataclass(frozen=True, slots=True)
class ReplayResult:
    trace: str
    policy: str
    pods: int
    ran: int
    never_ran: int
    waited: int  # pods that could not start at arrival
    delays: tuple[float, ...]  # queueing delay (start - creation) of every pod that ran, seconds
    allocated_mean: float  # time-weighted over the arrival window, % of GPU capacity
    allocated_max: float
    timeline: tuple[Sample, ...]
    wall_seconds: float

    def delay_percentiles(self) -> dict[str, float]:
        p50, p90, p99 = metrics.percentiles(self.delays, (50, 90, 99))
        return {"p50": p50, "p90": p90, "p99": p99}

    def to_json(self) -> dict[str, Any]:
        return {
            "trace": self.trace,
            "policy": self.policy,
            "mode": "replay",
            "pods": self.pods,
            "ran": self.ran,
            "never_ran": self.never_ran,
            "waited": self.waited,
            "queueing_delay_seconds": {k: round(v, 1) for k, v in self.delay_percentiles().items()},
            "allocated_gpu_pct": {"mean": round(self.allocated_mean, 4), "max": round(self.allocated_max, 4)},
            "timeline": [{"t": s.time, "allocated_gpu_pct": round(s.allocated_pct, 4), "queued": s.queued}
                         for s in self.timeline],
            "wall_seconds": round(self.wall_seconds, 2),
        }


class _Replay:
    """The event loop's state; one instance per run."""

    def __init__(self, tasks: list[TraceTask], state: ClusterState, sched: Scheduler, capacity: int,
                 retry_budget: int) -> None:
        self.tasks = tasks
        self.state = state
        self.sched = sched
        self.capacity = capacity
        self.retry_budget = retry_budget
        self.events: list[tuple[int, int, int]] = []  # (time, kind, task index)
        self.queue: deque[int] = deque()
        self.allocated = 0
        self.started: dict[int, int] = {}
        self.waited = 0

    def try_start(self, i: int, now: int) -> bool:
        task = self.tasks[i]
        decision = self.sched.schedule(task.shape.request(task.name, str(i)), self.state)
        if decision.node is None:
            return False
        self.sched.reserve(self.state, decision)
        self.allocated += task.shape.gpu_request
        self.started[i] = now
        assert task.creation_time is not None and task.deletion_time is not None
        heapq.heappush(self.events, (now + task.deletion_time - task.creation_time, DEPART, i))
        return True

    def retry(self, now: int, unbounded: bool = False) -> None:
        """One FIFO pass over the queue, bounded to `retry_budget` scheduling attempts."""
        failed: set[TaskShape] = set()
        attempts = 0
        kept: deque[int] = deque()
        while self.queue and (unbounded or attempts < self.retry_budget):
            i = self.queue.popleft()
            shape = self.tasks[i].shape
            if shape in failed:
                kept.append(i)
                continue
            attempts += 1
            if not self.try_start(i, now):
                failed.add(shape)
                kept.append(i)
        kept.extend(self.queue)
        self.queue = kept

    def depart(self, i: int) -> None:
        self.state.remove_pod(str(i))
        self.allocated -= self.tasks[i].shape.gpu_request


def _timeline(times: npt.NDArray[np.int64], alloc: npt.NDArray[np.float64], queued: npt.NDArray[np.int64],
              samples: int) -> tuple[Sample, ...]:
    """`samples` points from the first to the last event: each the highest allocation (and longest queue)
    reached since the previous point, so short peaks are not sampled away."""
    if len(times) == 0:
        return ()
    edges = np.linspace(float(times[0]), float(times[-1]), max(2, samples) + 1)[1:]
    bucket = np.minimum(np.searchsorted(edges, times, side="left"), len(edges) - 1)
    out = []
    for b in np.unique(bucket).tolist():
        sel = bucket == b
        out.append(Sample(int(edges[b]), float(alloc[sel].max()), int(queued[sel].max())))
    return tuple(out)


def _compressed(t: TraceTask, speedup: float) -> TraceTask:
    assert t.creation_time is not None and t.deletion_time is not None
    created = int(t.creation_time / speedup)
    return TraceTask(t.name, t.shape, created, created + t.deletion_time - t.creation_time)


def replay(node_csv: str | Path, pod_csv: str | Path, policy_name: str, seed: int = 42,
           retry_budget: int = RETRY_BUDGET, samples: int = SAMPLES, speedup: float = 1.0,
           progress: Callable[[int, int], None] | None = None) -> ReplayResult:
    """Replay the trace in time. Needs the 11-column task list (creation and deletion times).

    `speedup` > 1 compresses the arrival times (not the run times): openb samples 8k pods over five
    months, so in real time it keeps under 1% of the cluster busy; a speedup shows the queueing."""
    p = policy(policy_name)
    nodes, tasks = load_nodes(node_csv), load_pods(pod_csv)
    if speedup <= 0:
        raise HamiError("speedup", f"must be positive, got {speedup}")
    if any(t.creation_time is None or t.deletion_time is None for t in tasks):
        raise HamiError(str(pod_csv), "--replay needs creation_time and deletion_time columns; this task "
                                      "list has none (the multigpu variants are inflation-only)")
    check_models(nodes, tasks)
    if speedup != 1.0:
        tasks = [_compressed(t, speedup) for t in tasks]
    start = time.perf_counter()
    capacity = gpu_capacity(nodes)
    state = ClusterState.build(cluster_nodes(nodes), ())
    run = _Replay(tasks, state, make_scheduler(p, seed, tasks), capacity, retry_budget)
    for i, t in enumerate(tasks):
        assert t.creation_time is not None
        heapq.heappush(run.events, (t.creation_time, ARRIVE, i))
    times: list[int] = []
    allocated: list[int] = []
    queued: list[int] = []
    handled = 0
    while run.events:
        now, kind, i = heapq.heappop(run.events)
        if kind == DEPART:
            run.depart(i)
            if run.queue and (not run.events or run.events[0][0] != now or run.events[0][1] != DEPART):
                run.retry(now)  # once per instant, after every departure at that instant
        elif not run.try_start(i, now):  # a new pod is tried at once, as kube-scheduler does
            run.queue.append(i)
            run.waited += 1
        if not run.events and run.queue:
            run.retry(now, unbounded=True)  # nothing will free capacity later: one last full pass
        times.append(now)
        allocated.append(run.allocated)
        queued.append(len(run.queue))
        handled += 1
        if progress is not None and handled % 500 == 0:
            progress(handled, 2 * len(tasks))
    timeline = _timeline(np.asarray(times, np.int64), np.asarray(allocated, np.int64) * 100.0 / capacity,
                         np.asarray(queued, np.int64), samples)
    delays = tuple(float(run.started[i] - (tasks[i].creation_time or 0)) for i in sorted(run.started))
    if progress is not None:
        progress(2 * len(tasks), 2 * len(tasks))
    window = (min(t.creation_time or 0 for t in tasks), max(t.creation_time or 0 for t in tasks))
    mean = _time_mean(np.asarray(times, np.int64), np.asarray(allocated, np.float64) * 100.0 / capacity,
                      window)
    return ReplayResult(trace_name(pod_csv), p.name, len(tasks), len(run.started), len(run.queue),
                        run.waited, delays, mean, max(allocated, default=0) * 100.0 / capacity, timeline,
                        time.perf_counter() - start)


def _time_mean(times: npt.NDArray[np.int64], values: npt.NDArray[np.float64], window: tuple[int, int]) -> float:
    """Time-weighted mean of a step function (value after each event) over [start, end]."""
    start, end = window
    if end <= start or len(times) == 0:
        return float(values[-1]) if len(values) else 0.0
    t = np.clip(times, start, end).astype(np.float64)
    durations = np.diff(np.append(t, float(end)))
    return float((values * durations).sum() / (end - start))
