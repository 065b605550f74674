"""The inflation experiment: place every arrival through the scheduling framework, seed by seed.

Each seed is independent (fresh ClusterState, fresh Scheduler, so learning policies start blank), which
is what lets seeds run in parallel processes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hami.scheduler.framework import Scheduler
from hami.scheduler.plugins.fragmodel import Workload
from hami.scheduler.plugins.gpushare import pod_shape
from hami.scheduler.state import ClusterState
from hami.sim import metrics
from hami.sim.inflation import inflate
from hami.sim.metrics import Curve
from hami.sim.policies import Policy, policy
from hami.sim.trace import (
    TraceNode,
    TraceTask,
    check_models,
    cluster_nodes,
    gpu_capacity,
    load_nodes,
    load_pods,
)

Progress = Callable[[int], None]
PROGRESS_EVERY = 200
ORACLE_COVERAGE = 0.95


@dataclass(frozen=True, slots=True)
class SeedRun:
    seed: int
    curve: Curve
    failed_pods: int
    placements: int
    wall_seconds: float

    def unallocated(self, ratio: float) -> dict[str, float]:
        return {metrics.label(t): self.curve.unallocated_at(t) for t in metrics.thresholds(ratio)}


@dataclass(frozen=True, slots=True)
class SimResult:
    trace: str
    policy: str
    ratio: float
    runs: tuple[SeedRun, ...]
    wall_seconds: float

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def unallocated(self) -> dict[str, float]:
        """Median over seeds at each reported arrival point."""
        per = [r.unallocated(self.ratio) for r in self.runs]
        return {k: metrics.median([p[k] for p in per]) for k in per[0]} if per else {}

    def to_json(self) -> dict[str, Any]:
        return {
            "trace": self.trace,
            "policy": self.policy,
            "seeds": self.seeds,
            "unallocated_gpu_pct": _rounded(self.unallocated()),
            "per_seed": [{"seed": r.seed, "unallocated_gpu_pct": _rounded(r.unallocated(self.ratio)),
                          "failed_pods": r.failed_pods} for r in self.runs],
            "wall_seconds": round(self.wall_seconds, 2),
        }


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in d.items()}


def trace_name(pod_csv: str | Path) -> str:
    """`openb_pod_list_gpuspec10.csv` -> `gpuspec10`: the name the README's table uses."""
    stem = Path(pod_csv).stem
    return stem.removeprefix("openb_pod_list_")


def target_workload(tasks: list[TraceTask]) -> Workload:
    """The paper's FGD target: the trace's task shapes covering 95% of its tasks."""
    shapes = [pod_shape(t.shape.request(t.name, t.name)) for t in tasks]
    return Workload.from_shapes(shapes, ORACLE_COVERAGE)


def make_scheduler(p: Policy, seed: int, tasks: list[TraceTask]) -> Scheduler:
    """A fresh scheduler. Policies that draw random numbers are seeded so a seed's run is reproducible;
    only an `oracle` policy is told the trace's workload."""
    sched = Scheduler(p.config())
    instances: list[object] = [sched.node_scorer(p.node_policy)]
    instances += [sched.device_policy(name) for name in p.device_policy]
    for obj in instances:
        reseed = getattr(obj, "reseed", None)
        if callable(reseed):
            reseed(seed)
        set_workload = getattr(obj, "set_workload", None)
        if p.oracle and callable(set_workload):
            set_workload(target_workload(tasks))
    return sched


def run_seed(nodes: list[TraceNode], tasks: list[TraceTask], p: Policy, seed: int, ratio: float,
             progress: Progress | None = None) -> SeedRun:
    """One seed of the inflation protocol: arrivals in order, no departures, a misfit is dropped."""
    start = time.perf_counter()
    capacity = gpu_capacity(nodes)
    order = inflate(tasks, capacity, ratio, seed)
    state = ClusterState.build(cluster_nodes(nodes), ())
    sched = make_scheduler(p, seed, tasks)
    arrived = np.zeros(len(order), np.int64)
    allocated = np.zeros(len(order), np.int64)
    got = want = failed = 0
    for i, task in enumerate(order):
        shape = task.shape
        want += shape.gpu_request
        decision = sched.schedule(shape.request(task.name, f"s{seed}-{i}"), state)
        if decision.node is not None:
            sched.reserve(state, decision)
            got += shape.gpu_request
        else:
            failed += 1
        arrived[i] = want
        allocated[i] = got
        if progress is not None and (i + 1) % PROGRESS_EVERY == 0:
            progress(PROGRESS_EVERY)
    if progress is not None:
        progress(len(order) % PROGRESS_EVERY)
    return SeedRun(seed, Curve.from_milli(arrived, allocated, capacity), failed, len(order),
                   time.perf_counter() - start)


def expected_placements(tasks: list[TraceTask], capacity: int, ratio: float) -> int:
    """Arrivals one seed makes (for a progress bar's total); exact up to the last drawn task."""
    total = sum(t.shape.gpu_request for t in tasks)
    if total >= ratio * capacity or total == 0:
        return len(tasks)
    return round(len(tasks) * ratio * capacity / total)


# -- parallel seeds ---------------------------------------------------------------------------------
_shared: dict[str, Any] = {}


def _init_worker(counter: Any, nodes: list[TraceNode], tasks: list[TraceTask]) -> None:
    _shared.update(counter=counter, nodes=nodes, tasks=tasks)


def _bump(n: int) -> None:
    counter = _shared["counter"]
    with counter.get_lock():
        counter.value += n


def _worker(name: str, seed: int, ratio: float) -> SeedRun:
    return run_seed(_shared["nodes"], _shared["tasks"], policy(name), seed, ratio, _bump)


def default_jobs(n_seeds: int) -> int:
    return max(1, min(n_seeds, os.cpu_count() or 1))


def simulate(node_csv: str | Path, pod_csv: str | Path, policy_name: str, seeds: Sequence[int],
             ratio: float = 1.3, jobs: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> SimResult:
    """Run the inflation protocol for every seed; `progress(done, total)` is called from this process."""
    p = policy(policy_name)
    nodes, tasks = load_nodes(node_csv), load_pods(pod_csv)
    check_models(nodes, tasks)
    start = time.perf_counter()
    jobs = default_jobs(len(seeds)) if jobs is None else max(1, jobs)
    total = expected_placements(tasks, gpu_capacity(nodes), ratio) * len(seeds)
    runs: list[SeedRun] = []
    if jobs == 1 or len(seeds) == 1:
        done = 0

        def bump(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total)

        runs = [run_seed(nodes, tasks, p, s, ratio, bump) for s in seeds]
    else:
        ctx = mp.get_context("fork")
        counter = ctx.Value("q", 0)
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(counter, nodes, tasks)) as pool:
            futures = [pool.submit(_worker, p.name, s, ratio) for s in seeds]
            while not all(f.done() for f in futures):
                time.sleep(0.2)
                if progress is not None:
                    progress(int(counter.value), total)
            runs = [f.result() for f in futures]
    if progress is not None:
        progress(total, total)
    return SimResult(trace_name(pod_csv), p.name, ratio, tuple(runs), time.perf_counter() - start)
