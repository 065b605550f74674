"""The paper's metric: unallocated GPU % read when the arrived GPU request reaches a share of capacity.

A seed's run is two cumulative series over arrivals (arrived and allocated milli-GPU); everything the
simulator reports is read off them, so the JSON, the CSV and the plots cannot disagree.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

GRID_STEP = 0.5  # arrival-% resolution of the curves in the report


@dataclass(frozen=True, slots=True)
class Curve:
    """One seed's cumulative series, one entry per arrival, as % of cluster GPU capacity."""

    arrived_pct: FloatArray
    allocated_pct: FloatArray

    @classmethod
    def from_milli(cls, arrived: IntArray, allocated: IntArray, capacity_milli: int) -> Curve:
        return cls(arrived * 100.0 / capacity_milli, allocated * 100.0 / capacity_milli)

    def unallocated_at(self, arrival_pct: float) -> float:
        """100 - allocated % at the first arrival where the arrived request reaches `arrival_pct`
        (the last arrival if it never does, e.g. when inflation had to trim an oversized list)."""
        if len(self.arrived_pct) == 0:
            return 100.0
        i = int(np.searchsorted(self.arrived_pct, arrival_pct - 1e-9, side="left"))
        i = min(i, len(self.arrived_pct) - 1)
        return float(100.0 - self.allocated_pct[i])

    def on_grid(self, grid: FloatArray) -> FloatArray:
        """Unallocated % at each grid arrival (step-wise: the state after the last arrival not beyond it).
        NaN past the end of the series."""
        idx = np.searchsorted(self.arrived_pct, grid, side="right") - 1
        alloc = np.where(idx >= 0, self.allocated_pct[np.clip(idx, 0, None)], 0.0)
        out: FloatArray = 100.0 - alloc
        out[grid > self.arrived_pct[-1] + 1e-9] = np.nan
        return out


def thresholds(ratio: float) -> tuple[float, ...]:
    """Arrival points the JSON reports: 90, 95, 100 and the inflation target (130 by default)."""
    points = [90.0, 95.0, 100.0, round(ratio * 100, 6)]
    return tuple(sorted(set(points)))


def label(pct: float) -> str:
    return f"{pct:g}"


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, np.float64))) if len(values) else float("nan")


def grid_for(ratio: float) -> FloatArray:
    top = ratio * 100
    return np.arange(0.0, top + GRID_STEP / 2, GRID_STEP)


def band(curves: Sequence[Curve], grid: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Median and interquartile range over seeds of the unallocated-% curve on `grid`."""
    stack = np.vstack([c.on_grid(grid) for c in curves])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # grid points no seed reached: NaN on purpose
        q25, q50, q75 = np.nanpercentile(stack, [25, 50, 75], axis=0)
    return q50, q25, q75


def percentiles(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    if not len(values):
        return [float("nan")] * len(qs)
    return [float(x) for x in np.percentile(np.asarray(values, np.float64), list(qs))]
