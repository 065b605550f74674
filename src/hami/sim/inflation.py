"""The paper's "workload inflation": one seeded arrival sequence per seed (README of the openb trace).

Shuffle the task list; append copies drawn uniformly with replacement until the cumulative GPU request
reaches `ratio` of the cluster's GPU capacity (or remove random tasks while it exceeds it). Tasks then
arrive one by one and never leave.
"""

from __future__ import annotations

import numpy as np

from hami.sim.trace import TraceTask


def inflate(tasks: list[TraceTask], capacity_milli: int, ratio: float, seed: int) -> list[TraceTask]:
    """The arrival order for one seed. Deterministic in (tasks, capacity, ratio, seed)."""
    if not tasks:
        return []
    if not any(t.shape.gpu_request for t in tasks):
        raise ValueError("the task list asks for no GPU: workload inflation has no target to reach")
    rng = np.random.default_rng(seed)
    order = [tasks[i] for i in rng.permutation(len(tasks)).tolist()]
    target = ratio * capacity_milli
    total = sum(t.shape.gpu_request for t in order)
    if total < target:
        # Draw in batches (same stream as one-at-a-time draws would not be, but still one seeded stream).
        while total < target:
            for i in rng.integers(0, len(tasks), size=256).tolist():
                task = tasks[i]
                order.append(task)
                total += task.shape.gpu_request
                if total >= target:
                    break
    elif total > target:
        keep = np.ones(len(order), np.bool_)
        for i in rng.permutation(len(order)).tolist():
            if total <= target:
                break
            keep[i] = False
            total -= order[i].shape.gpu_request
        order = [t for t, k in zip(order, keep.tolist(), strict=True) if k]
    return order
