"""Node config (HAMi nodeconfig keys), the registration annotations (SPEC §2) and the Registrar's writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hami.agent.config import NodeConfig, apply_node_entries, load_node_config
from hami.agent.registration import Registrar, device_type, node_annotations, registered_devices
from hami.kube.memory import MemoryKubeApi
from hami.protocol import annotations as anno
from hami.resources import HamiError
from tests.agent_support import GPU0, GPU1, GPU2, NODE, node_manifest, spec

# --- config ------------------------------------------------------------------------------------------------

HAMI_CONFIG = {
    "nodeconfig": [
        {"name": "other", "devicesplitcount": 3},
        {"name": NODE, "operatingmode": "hami-core", "devicememoryscaling": 1.5, "devicesplitcount": 20,
         "migstrategy": "none", "filterdevices": {"uuid": [GPU2], "index": []}},
        {"Name": NODE, "DeviceCoreScaling": 2, "enableNumaTopology": False},  # Go matches keys in any case
    ]
}


def test_nodeconfig_entries_for_this_node_override_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(HAMI_CONFIG))
    config = load_node_config(path, NODE, NodeConfig(split_count=5))
    assert config == NodeConfig(split_count=20, memory_scaling=1.5, core_scaling=2.0, hide_uuids=frozenset({GPU2}),
                                numa_topology=False)
    assert load_node_config(path, "unlisted", NodeConfig(split_count=5)) == NodeConfig(split_count=5)
    assert load_node_config(None, NODE) == NodeConfig()


@pytest.mark.parametrize(("entry", "field"), [
    ({"devicesplitcount": 0}, "devicesplitcount"),
    ({"devicesplitcount": "ten"}, "devicesplitcount"),
    ({"devicememoryscaling": -1}, "devicememoryscaling"),
    ({"operatingmode": "turbo"}, "operatingmode"),
    ({"filterdevices": {"uuid": "GPU-a"}}, "filterdevices.uuid"),
    ({"enablenumatopology": "yes"}, "enablenumatopology"),
])
def test_nodeconfig_errors_name_the_entry(entry: dict[str, object], field: str) -> None:
    with pytest.raises(HamiError) as info:
        apply_node_entries({"nodeconfig": [{"name": NODE, **entry}]}, NODE, NodeConfig())
    assert info.value.field.startswith("config.nodeconfig[0]")
    assert field in info.value.field


def test_nodeconfig_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text("{nodeconfig")
    with pytest.raises(HamiError, match="not valid JSON"):
        load_node_config(bad, NODE)
    with pytest.raises(HamiError, match="cannot read"):
        load_node_config(tmp_path / "missing.json", NODE)


# --- annotations -------------------------------------------------------------------------------------------


def test_device_type_follows_hami() -> None:
    assert device_type("Tesla V100-PCIE-32GB") == "NVIDIA-Tesla V100-PCIE-32GB"
    assert device_type("NVIDIA H100 80GB HBM3") == "NVIDIA H100 80GB HBM3"


def test_registration_content_is_spec_json() -> None:
    out = node_annotations(spec().inventory, NodeConfig())
    assert json.loads(out[anno.NODE_NVIDIA_REGISTER]) == [
        {"id": GPU0, "index": 0, "count": 10, "devmem": 32768, "devcore": 100, "type": "NVIDIA-Tesla V100-PCIE-32GB",
         "numa": 0, "mode": "hami-core", "health": True},
        {"id": GPU1, "index": 1, "count": 10, "devmem": 32768, "devcore": 100, "type": "NVIDIA-Tesla V100-PCIE-32GB",
         "numa": 0, "mode": "hami-core", "health": True},
        {"id": GPU2, "index": 2, "count": 10, "devmem": 81920, "devcore": 100, "type": "NVIDIA A100-SXM4-80GB",
         "numa": 1, "mode": "hami-core", "health": True},
    ]
    # exactly what HAMi's JSON form looks like on the wire: compact, keys in HAMi's order
    assert out[anno.NODE_NVIDIA_REGISTER].startswith(f'[{{"id":"{GPU0}","index":0,"count":10,"devmem":32768,')
    assert anno.decode_node_devices(out[anno.NODE_NVIDIA_REGISTER]) == registered_devices(spec().inventory,
                                                                                           NodeConfig())
    scores = json.loads(out[anno.NODE_NVIDIA_SCORE])
    assert scores[0] == {"uuid": GPU0, "score": {GPU1: 220, GPU2: 10}}


def test_scaling_hiding_and_health() -> None:
    config = NodeConfig(split_count=4, memory_scaling=1.5, core_scaling=0.5, hide_indices=frozenset({1}))
    devices = registered_devices(spec().inventory, config, {GPU0: False})
    assert [(d.uuid, d.count, d.memory_mib, d.cores, d.health) for d in devices] == [
        (GPU0, 4, 49152, 50, False), (GPU2, 4, 122880, 50, True)]
    out = node_annotations(spec().inventory, config, {GPU0: False})
    assert [s for s in anno.decode_topology(out[anno.NODE_NVIDIA_SCORE])] == [(GPU0, GPU2, 10), (GPU2, GPU0, 10)]


def test_mig_mode_is_not_scaled_and_one_device_has_no_score() -> None:
    one = spec(f"devices: [{{uuid: {GPU0}, model: A100, memory_mib: 40960}}]").inventory
    out = node_annotations(one, NodeConfig(mode="mig", memory_scaling=2, core_scaling=2))
    assert json.loads(out[anno.NODE_NVIDIA_REGISTER])[0]["devmem"] == 40960
    assert json.loads(out[anno.NODE_NVIDIA_REGISTER])[0]["devcore"] == 100
    assert json.loads(out[anno.NODE_NVIDIA_REGISTER])[0]["mode"] == "mig"
    assert anno.NODE_NVIDIA_SCORE not in out


# --- Registrar ---------------------------------------------------------------------------------------------


async def test_registrar_writes_only_changes_and_answers_the_handshake() -> None:
    api = MemoryKubeApi()
    api.put("nodes", node_manifest())
    clock = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    registrar = Registrar(api, NODE, clock=lambda: clock)
    wanted = node_annotations(spec().inventory, NodeConfig())

    first = await registrar.sync(wanted)
    assert set(first) == {anno.NODE_NVIDIA_REGISTER, anno.NODE_NVIDIA_SCORE, anno.NODE_HANDSHAKE}
    node = await api.get("nodes", NODE)
    assert node["metadata"]["annotations"][anno.NODE_HANDSHAKE] == "Reported 2025-01-02 03:04:05 +0000 UTC"
    assert await registrar.sync(wanted) == {}
    assert registrar.writes == 1

    # the scheduler asks; only the handshake is answered
    await api.patch_annotations("nodes", NODE, {anno.NODE_HANDSHAKE: "Requesting_2025-01-02 03:05:00"})
    assert set(await registrar.sync(wanted)) == {anno.NODE_HANDSHAKE}

    # a health change rewrites the registration; someone deleting it gets it back
    unhealthy = node_annotations(spec().inventory, NodeConfig(), {GPU1: False})
    assert set(await registrar.sync(unhealthy)) == {anno.NODE_NVIDIA_REGISTER, anno.NODE_HANDSHAKE}
    await api.patch_annotations("nodes", NODE, {anno.NODE_NVIDIA_REGISTER: None})
    assert anno.NODE_NVIDIA_REGISTER in await registrar.sync(unhealthy)

    # no topology any more: the stale score goes
    one = spec(f"devices: [{{uuid: {GPU0}, model: T4, memory_mib: 1}}]").inventory
    assert (await registrar.sync(node_annotations(one, NodeConfig())))[anno.NODE_NVIDIA_SCORE] is None
