"""`hami simulate`: the openb workload-inflation experiment (or a time replay) from the command line.

Mount on the main app with `app.command("simulate")(hami.sim.cli.simulate)`; `app` here is the same
command as a standalone Typer app (for tests and `python -m hami.sim.cli`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from hami.resources import HamiError

err = Console(stderr=True)
out = Console()


def _fail(exc: HamiError) -> None:
    err.print(Text.assemble(("error: ", "red"), str(exc)), soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def parse_seeds(text: str) -> list[int]:
    """"42-51", "42,43,50" or "42" (ranges and lists may be mixed: "42-44,50")."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if "-" in part.lstrip("-"):
                lo, hi = part.split("-", 1)
                a, b = int(lo), int(hi)
                if b < a:
                    raise HamiError("--seeds", f"empty range {part!r}")
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise HamiError("--seeds", f"not a seed, list or range: {text!r}") from None
    if not seeds:
        raise HamiError("--seeds", "no seeds given")
    return list(dict.fromkeys(seeds))


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr when it is a terminal (and nothing otherwise)."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True,
                   disable=not err.is_terminal)
    task = bar.add_task(label, total=None)
    with bar:
        yield lambda done, total: bar.update(task, completed=done, total=total)


def simulate(
    nodes: Annotated[Path, typer.Option("--nodes", help="node list CSV (sn,cpu_milli,memory_mib,gpu,model)")],
    pods: Annotated[Path, typer.Option("--pods", help="task list CSV (11 or 5 columns)")],
    policy: Annotated[str, typer.Option("--policy", help="random, dotprod, bestfit, packing, clustering, "
                                                         "fgd, frag-aware or hami-default")],
    seeds: Annotated[str, typer.Option("--seeds", help="seeds: 42-51, 42,43 or 42")] = "42-51",
    inflation: Annotated[float, typer.Option("--inflation", help="arrive until this share of GPU capacity")]
    = 1.3,
    output: Annotated[str, typer.Option("-o", "--output", help="json or text")] = "json",
    report: Annotated[Path | None, typer.Option("--report", help="write HTML + CSV curves into this DIR")]
    = None,
    replay: Annotated[bool, typer.Option("--replay", help="replay arrivals and departures in time instead")]
    = False,
) -> None:
    """Run the paper's workload-inflation experiment (or a time replay) through the Hami scheduler."""
    from hami.sim import report as reports
    from hami.sim.engine import simulate as run_inflation
    from hami.sim.replay import replay as run_replay

    if output not in ("json", "text"):
        _fail(HamiError("--output", f"must be json or text, not {output!r}"))
    if not inflation > 0:
        _fail(HamiError("--inflation", f"must be positive, got {inflation}"))
    try:
        seed_list = parse_seeds(seeds)
        if replay:
            with _progress(f"replay {policy}") as tick:
                rr = run_replay(nodes, pods, policy, seed=seed_list[0], progress=tick)
            if report is not None:
                reports.write_replay(report, rr)
            data = rr.to_json()
            if output == "json":
                out.print(orjson.dumps(data).decode(), soft_wrap=True, highlight=False)
            else:
                q = data["queueing_delay_seconds"]
                out.print(f"{data['trace']} / {data['policy']} (replay): {data['ran']}/{data['pods']} ran, "
                          f"{data['never_ran']} never ran, {data['waited']} waited; queueing delay "
                          f"p50 {q['p50']} s, p90 {q['p90']} s, p99 {q['p99']} s; allocated GPU mean "
                          f"{data['allocated_gpu_pct']['mean']}%, max {data['allocated_gpu_pct']['max']}%; "
                          f"{data['wall_seconds']} s", highlight=False, soft_wrap=True)
            return
        with _progress(f"{policy} x {len(seed_list)} seeds") as tick:
            result = run_inflation(nodes, pods, policy, seed_list, inflation, progress=tick)
        if report is not None:
            reports.write_inflation(report, result)
    except HamiError as exc:
        _fail(exc)
        return
    data = result.to_json()
    if output == "json":
        out.print(orjson.dumps(data).decode(), soft_wrap=True, highlight=False)
        return
    med = data["unallocated_gpu_pct"]
    readouts = ", ".join(f"{k}%: {v:.2f}" for k, v in med.items())
    out.print(f"{data['trace']} / {data['policy']}: unallocated GPU % (median of {len(data['seeds'])} seeds) "
              f"at arrival {readouts}; {data['wall_seconds']} s", highlight=False, soft_wrap=True)
    for s in data["per_seed"]:
        vals = ", ".join(f"{v:.2f}" for v in s["unallocated_gpu_pct"].values())
        out.print(f"  seed {s['seed']}: {vals}; failed pods {s['failed_pods']}", highlight=False, soft_wrap=True)


app = typer.Typer(add_completion=False, help="Hami scheduling simulator (openb traces).")
app.command("simulate")(simulate)

if __name__ == "__main__":
    app()
