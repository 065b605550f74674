"""The `hami` command: wiring only; each subcommand calls into its layer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hami.resources import HamiError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Hami: GPU-sharing scheduling for Kubernetes (HAMi-compatible).")
err = Console(stderr=True)


def _fail(exc: HamiError) -> None:
    # Not markup: field names such as `limits[nvidia.com/gpu]` would read as rich tags.
    err.print(Text.assemble(("error: ", "red"), str(exc)), soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def _warn(line: str) -> None:
    err.print(Text.assemble(("warning: ", "yellow"), line), soft_wrap=True, highlight=False)


def _split(policy: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in policy.split(",") if p.strip())


@app.command()
def place(
    cluster: Annotated[Path, typer.Option(help="nodes and pods, as `kubectl get nodes,pods -A -o yaml`")],
    pod: Annotated[Path, typer.Option(help="one Pod manifest (YAML or JSON)")],
    output: Annotated[str, typer.Option("-o", "--output", help="json or text")] = "text",
    node_policy: Annotated[str | None, typer.Option(help="cluster default node policy")] = None,
    device_policy: Annotated[str | None, typer.Option(help="cluster default device policy chain")] = None,
) -> None:
    """Place one pod on a cluster read from a file. Exit 0 placed, 1 unschedulable, 2 bad input (a node whose
    registration cannot be read is skipped, with a warning on stderr)."""
    from hami.placement import explain
    from hami.placement import place as do_place
    from hami.protocol.manifests import load_manifests
    from hami.scheduler.framework import Scheduler, SchedulerConfig
    from hami.scheduler.snapshot import state_from_manifests
    from hami.vendors.registry import default_vendors

    if output not in ("json", "text"):
        _fail(HamiError("--output", f"must be json or text, not {output!r}"))
    try:
        vendors = default_vendors()
        nodes, pods = load_manifests(cluster)
        _, subject = load_manifests(pod)
        if len(subject) != 1:
            raise HamiError(str(pod), f"expected exactly one Pod, found {len(subject)}")
        config = SchedulerConfig()
        config = SchedulerConfig(node_policy=node_policy or config.node_policy,
                                 device_policy=_split(device_policy) if device_policy else config.device_policy)
        # One line per skipped node or untrusted allocation; the rest of the cluster still decides.
        state = state_from_manifests(nodes, pods, vendors, report=_warn)
        result = do_place(subject[0], state, Scheduler(config), vendors)
    except HamiError as exc:
        _fail(exc)
        return
    if output == "json":
        sys.stdout.buffer.write(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(explain(result))
    raise typer.Exit(0 if result.decision.placed else 1)


@app.command()
def demo() -> None:
    """Place a handful of pods on a built-in mixed-GPU cluster and show who landed where, and why."""
    from hami import demo as sample
    from hami.placement import place as do_place
    from hami.protocol.manifests import annotations_of
    from hami.scheduler.framework import Scheduler
    from hami.scheduler.snapshot import state_from_manifests
    from hami.vendors.registry import default_vendors

    vendors = default_vendors()
    nodes = sample.cluster()
    state = state_from_manifests(nodes, [], vendors)
    scheduler = Scheduler()
    out = Console(width=max(Console().width, 130))
    out.print(f"[bold]Cluster[/bold]: {len(nodes)} nodes, {state.n_dev_slots} GPUs "
              f"(node policy {scheduler.config.node_policy}, device policy "
              f"{','.join(scheduler.config.device_policy)}; one L40S cordoned)")
    table = Table(show_lines=False)
    for col in ("pod", "asks", "node", "GPUs (MiB / cores %)", "why / reason"):
        table.add_column(col)
    pending: list[str] = []
    for manifest in sample.pods():
        limits = manifest["spec"]["containers"][0]["resources"]["limits"]
        asks = " ".join(f"{k.split('/')[1]}={v}" for k, v in limits.items())
        why = annotations_of(manifest).get("demo/why", "")
        result = do_place(manifest, state, scheduler, vendors)
        d = result.decision
        if d.node is None:
            table.add_row(d.pod.name, asks, "[red]pending[/red]", "", why)
            pending.append(f"[bold]{d.pod.name}[/bold] stays Pending; the Event would say:")
            pending.extend(f"  {n}: {r}" for n, r in sorted(d.rejected.items()))
            continue
        scheduler.reserve(state, d)
        gpus = ", ".join(f"{x.uuid.removeprefix('GPU-')} ({x.memory_mib}/{x.cores})"
                         for c in d.allocation for x in c)
        table.add_row(d.pod.name, asks, f"[green]{d.node}[/green]", gpus, why)
    out.print(table)
    for line in pending:
        out.print(line, highlight=False)
    out.print("[bold]Device usage after placement[/bold]")
    usage = Table()
    for col in ("node", "GPU", "memory used", "cores used", "tasks"):
        usage.add_column(col)
    for (node_name, uuid), (mem, cores, tasks) in sorted(state.device_usage().items()):
        usage.add_row(node_name, uuid.removeprefix("GPU-"), str(mem), f"{cores}%", str(tasks))
    out.print(usage)


def _mount() -> None:
    """Sub-apps live with their layer; the top-level command only wires them in."""
    from hami.agent.cli import node_agent_app
    from hami.services.cli import app as serve_app
    from hami.sim.cli import simulate

    app.add_typer(node_agent_app, name="node-agent")
    app.add_typer(serve_app, name="serve")
    app.command("simulate")(simulate)


_mount()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
