"""`hami node-agent`: the DaemonSet process of every accelerator node (wiring only).

Mounted by the root command with `app.add_typer(node_agent_app, name="node-agent")`.
`--registration-only` prints the node annotations the agent would write and exits, so a node's registration
can be checked without a cluster: `hami node-agent --backend fake --devices devices.yaml --registration-only`.
Exit codes: 0 fine, 1 the devices cannot be seen (no driver, unreadable file), 2 bad input.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated, Literal, cast

import orjson
import typer
import yaml

from hami.agent.allocate import AllocationSettings, Limiter
from hami.agent.config import NodeConfig, load_node_config
from hami.agent.deviceplugin import DEFAULT_SOCKET_DIR
from hami.agent.discovery import Backend, DiscoveryError
from hami.agent.registration import node_annotations
from hami.agent.service import AgentSettings, NodeAgent
from hami.protocol.trust import DEFAULT_SCHEDULER
from hami.resources import HamiError

node_agent_app = typer.Typer(add_completion=False, help="Node agent: discover devices, register them, serve kubelet.")
_log = logging.getLogger("hami.agent")


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _names(values: list[str] | None) -> tuple[str, ...]:
    """Repeated options and comma lists alike: `--x a --x b,c` -> (a, b, c)."""
    return tuple(n.strip() for v in values or () for n in v.split(",") if n.strip())


def make_backend(kind: str, devices: Path | None, config: NodeConfig) -> Backend:
    if kind == "fake":
        if devices is None:
            raise HamiError("--devices", "the fake backend needs --devices FILE")
        from hami.agent.fake import FakeBackend

        return FakeBackend.from_file(devices)
    if kind == "nvml":
        from hami.agent.nvml import NvmlBackend

        return NvmlBackend(preconfigured_memory_mib=config.preconfigured_memory_mib)
    raise HamiError("--backend", f"must be nvml or fake, not {kind!r}")


@node_agent_app.callback(invoke_without_command=True)
def node_agent(
    backend: Annotated[str, typer.Option(help="device discovery: nvml (the driver) or fake (--devices file)")]
    = "nvml",
    devices: Annotated[Path | None, typer.Option(help="fake backend: devices YAML file")] = None,
    node_name: Annotated[str | None, typer.Option(envvar="NODE_NAME", help="this node (default: hostname)")]
    = None,
    config: Annotated[Path | None, typer.Option(help="HAMi device plugin config.json (`nodeconfig` entries)")]
    = None,
    registration_only: Annotated[bool, typer.Option(help="print the node annotations and exit")] = False,
    output: Annotated[str, typer.Option("-o", "--output", help="registration-only format: json or yaml")]
    = "json",
    split_count: Annotated[int, typer.Option(help="default tasks per device (devicesplitcount)")] = 10,
    memory_scaling: Annotated[float, typer.Option(help="default devicememoryscaling")] = 1.0,
    core_scaling: Annotated[float, typer.Option(help="default devicecorescaling")] = 1.0,
    numa_topology: Annotated[bool, typer.Option(help="default enablenumatopology: NUMA node of each replica "
                                                "in ListAndWatch")] = True,
    resource_name: Annotated[str, typer.Option(help="extended resource kubelet counts")] = "nvidia.com/gpu",
    socket_dir: Annotated[Path, typer.Option(help="kubelet device plugin directory")] = DEFAULT_SOCKET_DIR,
    endpoint: Annotated[str | None, typer.Option(help="plugin socket name (default hami-<resource>.sock)")]
    = None,
    hook_path: Annotated[str, typer.Option(envvar="HOOK_PATH", help="HAMi-core root; containers see "
                                           "<hook>/vgpu")] = "/usr/local",
    libvgpu: Annotated[str | None, typer.Option(help="host path of libvgpu.so (default <hook>/vgpu/libvgpu.so)")]
    = None,
    cache_dir: Annotated[str | None, typer.Option(help="host dir for per-container limiter caches "
                                                  "(default <hook>/vgpu/containers)")] = None,
    limiter: Annotated[str, typer.Option(help="mount HAMi-core: auto (if libvgpu.so exists), on, off")] = "auto",
    core_policy: Annotated[str, typer.Option(help="GPU_CORE_UTILIZATION_POLICY: default, force, disable")]
    = "default",
    trusted_scheduler: Annotated[list[str] | None, typer.Option(
        help="schedulerName whose allocations are served (repeat or comma list) [default: hami-scheduler]")]
    = None,
    kubeconfig: Annotated[Path | None, typer.Option(help="kubeconfig (default: in-cluster, then ~/.kube/config)")]
    = None,
    register_interval: Annotated[float, typer.Option(help="seconds between registration checks")] = 30.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Run the node agent, or with --registration-only print what it would register."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = node_name or socket.gethostname()
    try:
        if output not in ("json", "yaml"):
            raise HamiError("--output", f"must be json or yaml, not {output!r}")
        if limiter not in ("auto", "on", "off"):
            raise HamiError("--limiter", f"must be auto, on or off, not {limiter!r}")
        base = NodeConfig(split_count=split_count, memory_scaling=memory_scaling, core_scaling=core_scaling,
                          numa_topology=numa_topology)
        node_config = load_node_config(config, node, base)
        found = make_backend(backend, devices, node_config)
        if registration_only:
            try:
                inventory = found.discover()
            finally:
                found.close()
            annotations = node_annotations(inventory, node_config)
            if output == "json":
                sys.stdout.buffer.write(orjson.dumps(annotations, option=orjson.OPT_INDENT_2) + b"\n")
            else:
                sys.stdout.write(yaml.safe_dump(annotations, sort_keys=False, width=1 << 20))
            return
        allocation = AllocationSettings(
            limiter=Limiter(hook_path=hook_path, lib_host_path=libvgpu or "", cache_host_dir=cache_dir or "",
                            install=cast(Literal["auto", "on", "off"], limiter)),
            core_policy=core_policy,
            oversubscribed=node_config.memory_scaling > 1,
            libcuda_log_level=node_config.libcuda_log_level,
            mig_mode=node_config.mode == "mig",
            trusted_schedulers=_names(trusted_scheduler) or (DEFAULT_SCHEDULER,),
        )
        settings = AgentSettings(node_name=node, resource_name=resource_name, socket_dir=socket_dir,
                                 endpoint=endpoint, register_interval_s=register_interval)
        asyncio.run(_serve(found, node_config, settings, allocation, kubeconfig))
    except HamiError as exc:
        _fail(str(exc), 2)
    except DiscoveryError as exc:
        _fail(str(exc), 1)


async def _serve(backend: Backend, config: NodeConfig, settings: AgentSettings, allocation: AllocationSettings,
                 kubeconfig: Path | None) -> None:
    from hami.kube.client import HttpKubeApi, in_cluster_config, load_kubeconfig

    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kube = in_cluster_config()
    else:
        kube = load_kubeconfig(kubeconfig)
    api = HttpKubeApi(kube)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
    try:
        await NodeAgent(backend, api, config, settings, allocation).run()
    except asyncio.CancelledError:
        _log.info("node agent stopped")
    finally:
        await api.aclose()
