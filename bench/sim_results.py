"""Every openb trace x every policy through `hami.sim`, as a markdown table beside the published figures.

    python bench/sim_results.py --seeds 42-51 -o bench/SIM_RESULTS.md --report /tmp/sim-report

Runs the paper's workload-inflation protocol (hami.sim.engine.simulate) and prints median unallocated GPU %
at 100% arrival (and 130% for default), the difference to the FGD paper's published figure for the
reference policies, and wall time per run. Results are also appended as JSON lines (--jsonl) so a long run
can be resumed with --resume.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hami.sim import report as reports
from hami.sim.cli import parse_seeds
from hami.sim.engine import simulate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "openb"
TRACES = ("default", "cpu050", "cpu200", "gpushare40", "gpushare80", "gpuspec10", "gpuspec25", "multigpu20",
          "multigpu40")
POLICIES = ("random", "dotprod", "clustering", "packing", "bestfit", "fgd", "hami-default", "frag-aware")
# Median unallocated GPU % published with the openb data (README of the trace; FGD paper artifact).
PUBLISHED: dict[tuple[str, str], dict[str, float]] = {
    ("default", "100"): {"random": 13.75, "dotprod": 9.45, "clustering": 8.42, "packing": 8.20,
                         "bestfit": 7.09, "fgd": 4.77},
    ("default", "130"): {"random": 12.62, "dotprod": 9.20, "clustering": 8.21, "packing": 7.94,
                         "bestfit": 6.89, "fgd": 4.60},
    ("cpu050", "100"): {"random": 11.02, "dotprod": 6.94, "clustering": 6.52, "packing": 6.47, "bestfit": 6.42,
                        "fgd": 5.01},
    ("cpu200", "100"): {"random": 17.01, "dotprod": 12.24, "clustering": 10.25, "packing": 9.87,
                        "bestfit": 7.86, "fgd": 5.18},
    ("gpushare40", "100"): {"random": 15.04, "dotprod": 10.67, "clustering": 10.18, "packing": 10.20,
                            "bestfit": 8.53, "fgd": 6.05},
    ("gpushare80", "100"): {"random": 19.36, "dotprod": 15.89, "clustering": 15.46, "packing": 15.28,
                            "bestfit": 13.27, "fgd": 10.91},
    ("gpuspec10", "100"): {"random": 13.69, "dotprod": 9.75, "clustering": 8.06, "packing": 7.77,
                           "bestfit": 6.89, "fgd": 5.30},
    ("gpuspec25", "100"): {"random": 14.59, "dotprod": 14.55, "clustering": 13.59, "packing": 13.22,
                           "bestfit": 14.30, "fgd": 6.08},
    ("multigpu20", "100"): {"random": 13.17, "dotprod": 8.19, "clustering": 6.62, "packing": 6.49,
                            "bestfit": 6.27, "fgd": 4.47},
    ("multigpu40", "100"): {"random": 14.77, "dotprod": 5.91, "clustering": 4.54, "packing": 4.44,
                            "bestfit": 4.91, "fgd": 3.11},
}


def run(data: Path, traces: list[str], policies: list[str], seeds: list[int], jobs: int,
        report: Path | None, jsonl: Path | None, resume: bool) -> list[dict[str, Any]]:
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if resume and jsonl is not None and jsonl.exists():
        for line in jsonl.read_text().splitlines():
            row = json.loads(line)
            done[(row["trace"], row["policy"])] = row
    rows = []
    for trace in traces:
        for policy in policies:
            row = done.get((trace, policy))
            if row is None:
                result = simulate(data / "openb_node_list_gpu_node.csv", data / f"openb_pod_list_{trace}.csv",
                                  policy, seeds, 1.3, jobs=jobs)
                if report is not None:
                    reports.write_inflation(report, result)
                row = result.to_json()
                if jsonl is not None:
                    with jsonl.open("a") as f:
                        f.write(json.dumps(row) + "\n")
            u = row["unallocated_gpu_pct"]
            print(f"{trace:11s} {policy:13s} 100%: {u['100']:6.2f}  130%: {u['130']:6.2f}  "
                  f"{row['wall_seconds']:6.1f} s", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], policies: list[str]) -> str:
    by = {(r["trace"], r["policy"]): r for r in rows}
    traces = list(dict.fromkeys(r["trace"] for r in rows))
    out = ["| trace | arrival | " + " | ".join(policies) + " |",
           "|---|---:|" + "---:|" * len(policies)]
    for trace in traces:
        for arrival in ("100", "130") if trace == "default" else ("100",):
            cells = []
            for p in policies:
                r = by.get((trace, p))
                if r is None:
                    cells.append("")
                    continue
                ours = r["unallocated_gpu_pct"][arrival]
                pub = PUBLISHED.get((trace, arrival), {}).get(p)
                cells.append(f"{ours:.2f}" + (f" ({pub:.2f}, {ours - pub:+.2f})" if pub is not None else ""))
            out.append(f"| {trace} | {arrival}% | " + " | ".join(cells) + " |")
    out.append("")
    out.append("Cells: our median over seeds (published median, difference). Wall seconds per run:")
    out.append("")
    out.append("| trace | " + " | ".join(policies) + " |")
    out.append("|---|" + "---:|" * len(policies))
    for trace in traces:
        out.append(f"| {trace} | " + " | ".join(
            f"{by[(trace, p)]['wall_seconds']:.1f}" if (trace, p) in by else "" for p in policies) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--traces", default=",".join(TRACES))
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--seeds", default="42-51")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--report", type=Path)
    ap.add_argument("--jsonl", type=Path, help="append each finished run here as a JSON line")
    ap.add_argument("--resume", action="store_true", help="reuse finished runs found in --jsonl")
    ap.add_argument("-o", "--output", type=Path, help="write the markdown table here (default: stdout)")
    args = ap.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    rows = run(args.data, [t for t in args.traces.split(",") if t], policies, parse_seeds(args.seeds),
               args.jobs, args.report, args.jsonl, args.resume)
    text = table(rows, policies)
    if args.output:
        args.output.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
