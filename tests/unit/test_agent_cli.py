"""`hami node-agent --registration-only`: what a node would register, without a cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from hami.agent.cli import node_agent_app
from hami.protocol import annotations as anno
from tests.agent_support import DEVICES_YAML, GPU0, GPU2, NODE

root = typer.Typer()


@root.command()
def version() -> None:  # a second command, so node-agent is mounted as in the real `hami`
    pass


root.add_typer(node_agent_app, name="node-agent")
runner = CliRunner()


def devices_file(tmp_path: Path) -> Path:
    path = tmp_path / "devices.yaml"
    path.write_text(DEVICES_YAML)
    return path


def test_registration_only_prints_the_annotations(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"nodeconfig": [{"name": NODE, "devicesplitcount": 4,
                                                  "filterdevices": {"uuid": [GPU2]}}]}))
    result = runner.invoke(root, ["node-agent", "--backend", "fake", "--devices", str(devices_file(tmp_path)),
                                  "--node-name", NODE, "--config", str(config), "--registration-only", "-o", "json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == {anno.NODE_NVIDIA_REGISTER, anno.NODE_NVIDIA_SCORE}
    devices = json.loads(out[anno.NODE_NVIDIA_REGISTER])
    assert [(d["id"], d["count"]) for d in devices] == [(GPU0, 4), (devices[1]["id"], 4)]
    assert GPU2 not in out[anno.NODE_NVIDIA_SCORE]


def test_registration_only_yaml_and_other_nodes_use_defaults(tmp_path: Path) -> None:
    result = runner.invoke(root, ["node-agent", "--backend", "fake", "--devices", str(devices_file(tmp_path)),
                                  "--node-name", "other", "--split-count", "7", "--registration-only", "-o", "yaml"])
    assert result.exit_code == 0, result.output
    out = yaml.safe_load(result.stdout)
    assert {d["count"] for d in json.loads(out[anno.NODE_NVIDIA_REGISTER])} == {7}


def test_bad_input_exits_2_and_no_driver_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices: [{uuid: GPU-a}]")
    result = runner.invoke(root, ["node-agent", "--backend", "fake", "--devices", str(bad), "--registration-only"])
    assert result.exit_code == 2
    assert "devices[0].model" in result.output
    result = runner.invoke(root, ["node-agent", "--backend", "fake", "--registration-only"])
    assert result.exit_code == 2 and "--devices" in result.output
    result = runner.invoke(root, ["node-agent", "--backend", "cuda", "--registration-only"])
    assert result.exit_code == 2
    result = runner.invoke(root, ["node-agent", "--backend", "fake", "--devices", str(tmp_path / "none.yaml"),
                                  "--registration-only"])
    assert result.exit_code == 1 and "cannot read" in result.output


def test_trusted_schedulers_repeat_or_comma_list_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hami.agent.cli as cli
    from hami.agent.allocate import AllocationSettings

    seen: list[AllocationSettings] = []

    async def serve(backend: Any, config: Any, settings: Any, allocation: AllocationSettings, kubeconfig: Any) -> None:
        seen.append(allocation)

    monkeypatch.setattr(cli, "_serve", serve)
    args = ["node-agent", "--backend", "fake", "--devices", str(devices_file(tmp_path))]
    assert runner.invoke(root, args).exit_code == 0
    result = runner.invoke(root, [*args, "--trusted-scheduler", "hami-scheduler",
                                  "--trusted-scheduler", "volcano, kai"])
    assert result.exit_code == 0, result.output
    assert [s.trusted_schedulers for s in seen] == [("hami-scheduler",), ("hami-scheduler", "volcano", "kai")]
