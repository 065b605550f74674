"""The paper's workload-inflation protocol and the metric read off it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from hami.sim.inflation import inflate
from hami.sim.metrics import Curve, band, grid_for, thresholds
from hami.sim.trace import TaskShape, TraceTask


def tasks() -> list[TraceTask]:
    shapes = [TaskShape(1000, 1, 1, 1000), TaskShape(1000, 1, 1, 250), TaskShape(1000, 1, 0, 0),
              TaskShape(1000, 1, 2, 1000)]
    return [TraceTask(f"t{i}", shapes[i % 4]) for i in range(40)]


def total(ts: list[TraceTask]) -> int:
    return sum(t.shape.gpu_request for t in ts)


def test_resample_reaches_the_target_and_stops_there() -> None:
    base = tasks()
    capacity = 40_000  # the list asks for 32,500: below the 52,000 target
    out = inflate(base, capacity, 1.3, seed=42)
    assert total(out) >= 1.3 * capacity
    assert total(out[:-1]) < 1.3 * capacity
    head = out[: len(base)]
    assert Counter(t.name for t in head) == Counter(t.name for t in base)  # a shuffle of the list
    assert [t.name for t in head] != [t.name for t in base]


def test_deterministic_per_seed() -> None:
    a = [t.name for t in inflate(tasks(), 40_000, 1.3, seed=7)]
    assert a == [t.name for t in inflate(tasks(), 40_000, 1.3, seed=7)]
    assert a != [t.name for t in inflate(tasks(), 40_000, 1.3, seed=8)]


def test_an_oversized_list_is_trimmed() -> None:
    out = inflate(tasks(), 10_000, 1.3, seed=1)
    assert total(out) <= 13_000
    assert len(out) < 40


def test_needs_gpu_demand() -> None:
    with pytest.raises(ValueError, match="no GPU"):
        inflate([TraceTask("c", TaskShape(1, 1, 0, 0))], 1000, 1.3, seed=1)


def test_curve_readouts() -> None:
    # capacity 1000: arrivals of 400, 400, 400 milli; the second fails
    curve = Curve.from_milli(np.array([400, 800, 1200]), np.array([400, 400, 800]), 1000)
    assert curve.unallocated_at(80) == pytest.approx(60.0)  # first arrival reaching 80%
    assert curve.unallocated_at(100) == pytest.approx(20.0)
    assert curve.unallocated_at(200) == pytest.approx(20.0)  # never reached: the last arrival
    grid = np.array([0.0, 40.0, 79.0, 120.0, 130.0])
    np.testing.assert_allclose(curve.on_grid(grid), [100.0, 60.0, 60.0, 20.0, np.nan])
    med, lo, hi = band([curve, curve], grid)
    np.testing.assert_allclose(lo[:4], med[:4])
    np.testing.assert_allclose(hi[:4], med[:4])
    np.testing.assert_allclose(med[:4], [100.0, 60.0, 60.0, 20.0])
    assert thresholds(1.3) == (90.0, 95.0, 100.0, 130.0)
    assert grid_for(1.3)[-1] == pytest.approx(130.0)
