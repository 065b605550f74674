"""`--report DIR`: every run leaves its data in DIR (CSV + the JSON summary) and the HTML index is rebuilt
from everything found there, so running policies one after another into one DIR builds the comparison.

The plots are inline SVG written here (no plotting dependency): unallocated GPU % against arrived GPU %,
median over seeds with the interquartile band, one chart per trace; replays get allocation over time.
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from hami.sim import metrics
from hami.sim.engine import SimResult
from hami.sim.replay import ReplayResult

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#17becf", "#bcbd22")
X_FROM = 80.0  # arrival %: below this nothing fails, and the curve is just 100 - arrival
W, H, PAD = 720, 340, 48


def _stem(trace: str, policy: str, replay: bool = False) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{trace}__{policy}")
    return safe + ("__replay" if replay else "")


def write_inflation(directory: str | Path, result: SimResult) -> Path:
    """Write this run's curves (CSV) and summary (JSON), then rebuild DIR/index.html."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    grid = metrics.grid_for(result.ratio)
    curves = [r.curve for r in result.runs]
    med, q25, q75 = metrics.band(curves, grid)
    per_seed = [c.on_grid(grid) for c in curves]
    stem = _stem(result.trace, result.policy)
    with (out / f"{stem}.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arrival_pct", "unallocated_median", "unallocated_q25", "unallocated_q75",
                    *[f"seed_{r.seed}" for r in result.runs]])
        for i, x in enumerate(grid.tolist()):
            w.writerow([_num(x), _num(med[i]), _num(q25[i]), _num(q75[i]), *[_num(s[i]) for s in per_seed]])
    summary = result.to_json() | {"inflation": result.ratio}
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    return build_index(out)


def write_replay(directory: str | Path, result: ReplayResult) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    stem = _stem(result.trace, result.policy, replay=True)
    with (out / f"{stem}.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time_s", "allocated_gpu_pct", "queued"])
        for s in result.timeline:
            w.writerow([s.time, _num(s.allocated_pct), s.queued])
    data = result.to_json()
    data.pop("timeline")
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    return build_index(out)


def _num(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.4f}"


def _read_csv(path: Path) -> dict[str, list[float]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    head, body = rows[0], rows[1:]
    return {h: [float(r[i]) if r[i] else math.nan for r in body] for i, h in enumerate(head)}


def build_index(directory: Path) -> Path:
    """Rebuild DIR/index.html from every run summary in DIR."""
    runs: list[tuple[dict[str, Any], dict[str, list[float]]]] = []
    for js in sorted(directory.glob("*.json")):
        data = json.loads(js.read_text())
        curves = js.with_suffix(".csv")
        if curves.exists() and "policy" in data:
            runs.append((data, _read_csv(curves)))
    inflation = [r for r in runs if r[0].get("mode") != "replay"]
    replays = [r for r in runs if r[0].get("mode") == "replay"]
    parts = ["<!doctype html><meta charset='utf-8'><title>hami simulate</title>",
             "<style>body{font:14px sans-serif;margin:24px}table{border-collapse:collapse;margin:8px 0 24px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}"
             "td:first-child{text-align:left}</style>",
             "<h1>hami simulate</h1><p>Unallocated GPU % (100 - allocated, as % of cluster GPU capacity) "
             "against arrived GPU request, openb workload-inflation protocol; median over seeds, the band "
             "is the interquartile range.</p>"]
    for trace in sorted({d["trace"] for d, _ in inflation}):
        these = sorted((r for r in inflation if r[0]["trace"] == trace), key=lambda r: str(r[0]["policy"]))
        parts.append(f"<h2>{html.escape(trace)}</h2>")
        parts.append(_inflation_chart(these))
        parts.append(_inflation_table(these))
    for data, table in replays:
        parts.append(f"<h2>replay: {html.escape(data['trace'])} / {html.escape(data['policy'])}</h2>")
        parts.append(_replay_chart(table))
        q = data["queueing_delay_seconds"]
        parts.append(f"<p>pods {data['pods']}, ran {data['ran']}, never ran {data['never_ran']}, waited "
                     f"{data['waited']}; queueing delay p50/p90/p99 {q['p50']}/{q['p90']}/{q['p99']} s; "
                     f"allocated GPU mean {data['allocated_gpu_pct']['mean']}%, "
                     f"max {data['allocated_gpu_pct']['max']}%</p>")
    index = directory / "index.html"
    index.write_text("\n".join(parts))
    return index


def _inflation_table(runs: list[tuple[dict[str, Any], dict[str, list[float]]]]) -> str:
    keys = sorted({k for d, _ in runs for k in d["unallocated_gpu_pct"]}, key=float)
    head = "".join(f"<th>{html.escape(k)}%</th>" for k in keys)
    rows = [f"<table><tr><th>policy</th>{head}<th>seeds</th><th>wall s</th></tr>"]
    for d, _ in runs:
        cells = "".join(f"<td>{d['unallocated_gpu_pct'].get(k, math.nan):.2f}</td>" for k in keys)
        rows.append(f"<tr><td>{html.escape(d['policy'])}</td>{cells}<td>{len(d['seeds'])}</td>"
                    f"<td>{d['wall_seconds']}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _scale(lo: float, hi: float, a: float, b: float) -> Any:
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _axes(x0: float, x1: float, y0: float, y1: float, xlabel: str, ylabel: str) -> list[str]:
    sx, sy = _scale(x0, x1, PAD, W - 12), _scale(y0, y1, H - PAD, 12)
    out = [f"<line x1='{PAD}' y1='{H - PAD}' x2='{W - 12}' y2='{H - PAD}' stroke='#333'/>",
           f"<line x1='{PAD}' y1='12' x2='{PAD}' y2='{H - PAD}' stroke='#333'/>"]
    for v in np.linspace(x0, x1, 6).tolist():
        out.append(f"<text x='{sx(v):.1f}' y='{H - PAD + 16}' font-size='11' text-anchor='middle'>{v:g}</text>")
    for v in np.linspace(y0, y1, 6).tolist():
        out.append(f"<line x1='{PAD}' x2='{W - 12}' y1='{sy(v):.1f}' y2='{sy(v):.1f}' stroke='#eee'/>"
                   f"<text x='{PAD - 6}' y='{sy(v) + 4:.1f}' font-size='11' text-anchor='end'>{v:.3g}</text>")
    out.append(f"<text x='{(PAD + W) / 2}' y='{H - 8}' font-size='12' text-anchor='middle'>"
               f"{html.escape(xlabel)}</text>")
    out.append(f"<text x='14' y='{H / 2}' font-size='12' text-anchor='middle' "
               f"transform='rotate(-90 14 {H / 2})'>{html.escape(ylabel)}</text>")
    return out


def _inflation_chart(runs: list[tuple[dict[str, Any], dict[str, list[float]]]]) -> str:
    x_hi = max(max(t["arrival_pct"]) for _, t in runs)
    ys = [v for _, t in runs for x, v in zip(t["arrival_pct"], t["unallocated_q75"], strict=True)
          if x >= X_FROM and not math.isnan(v)]
    y_hi = max([*ys, 1.0]) * 1.05
    sx, sy = _scale(X_FROM, x_hi, PAD, W - 12), _scale(0.0, y_hi, H - PAD, 12)
    svg = [f"<svg width='{W}' height='{H}' xmlns='http://www.w3.org/2000/svg'>",
           *_axes(X_FROM, x_hi, 0.0, y_hi, "arrived GPU request, % of capacity", "unallocated GPU %")]
    for k, (d, t) in enumerate(runs):
        color = PALETTE[k % len(PALETTE)]
        pts = [(x, m, lo, hi) for x, m, lo, hi in zip(t["arrival_pct"], t["unallocated_median"],
                                                      t["unallocated_q25"], t["unallocated_q75"], strict=True)
               if x >= X_FROM and not math.isnan(m)]
        if not pts:
            continue
        upper = " ".join(f"{sx(x):.1f},{sy(min(hi, y_hi)):.1f}" for x, _, _, hi in pts)
        lower = " ".join(f"{sx(x):.1f},{sy(min(lo, y_hi)):.1f}" for x, _, lo, _ in reversed(pts))
        line = " ".join(f"{sx(x):.1f},{sy(min(m, y_hi)):.1f}" for x, m, _, _ in pts)
        svg.append(f"<polygon points='{upper} {lower}' fill='{color}' fill-opacity='0.18' stroke='none'/>")
        svg.append(f"<polyline points='{line}' fill='none' stroke='{color}' stroke-width='1.6'/>")
        svg.append(f"<rect x='{W - 170}' y='{16 + 16 * k}' width='10' height='10' fill='{color}'/>"
                   f"<text x='{W - 155}' y='{25 + 16 * k}' font-size='12'>{html.escape(d['policy'])}</text>")
    svg.append("</svg>")
    return "".join(svg)


def _replay_chart(table: dict[str, list[float]]) -> str:
    t, a = table["time_s"], table["allocated_gpu_pct"]
    if not t:
        return "<p>(no events)</p>"
    x0, x1 = min(t), max(t)
    y1 = max([*a, 1.0]) * 1.05
    sx, sy = _scale(x0, x1, PAD, W - 12), _scale(0.0, y1, H - PAD, 12)
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(t, a, strict=True))
    return (f"<svg width='{W}' height='{H}' xmlns='http://www.w3.org/2000/svg'>"
            + "".join(_axes(x0, x1, 0.0, y1, "time, s", "allocated GPU % (max per interval)"))
            + f"<polyline points='{line}' fill='none' stroke='{PALETTE[0]}' stroke-width='1.4'/></svg>")
