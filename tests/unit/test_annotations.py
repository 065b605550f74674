"""HAMi annotation formats: literal wire examples (SPEC and HAMi's own output), round trips, fuzzing."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hami.protocol import annotations as anno
from hami.protocol.annotations import (
    Handshake,
    NodeLock,
    blank_container,
    decode_handshake,
    decode_node_devices,
    decode_node_lock,
    decode_pod_allocation,
    decode_topology,
    encode_node_devices,
    encode_node_devices_legacy,
    encode_node_lock,
    encode_pod_allocation,
    encode_topology,
    first_pending_container,
    reported_handshake,
    requesting_handshake,
)
from hami.resources import ContainerDevice, Device, HamiError

V100_A = "GPU-00552014-5c87-89ac-b1a6-7b53aa24b0ec"
V100_B = "GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448"


def h100(uuid: str = "GPU-8a1f", index: int = 0, numa: int = 0, health: bool = True) -> Device:
    return Device(uuid, index, 10, 81920, 100, "NVIDIA-H100", numa=numa, health=health)


# --- node registration: literal examples ----------------------------------------------------------------


def test_encode_json_matches_spec_example() -> None:
    assert encode_node_devices([h100()]) == (
        '[{"id":"GPU-8a1f","index":0,"count":10,"devmem":81920,"devcore":100,'
        '"type":"NVIDIA-H100","numa":0,"mode":"hami-core","health":true}]'
    )


def test_encode_json_go_omitempty_matches_hami_bytes() -> None:
    devices = [h100("GPU-a"), h100("GPU-b", index=1, numa=1, health=False)]
    assert encode_node_devices(devices, go_omitempty=True) == (
        '[{"id":"GPU-a","count":10,"devmem":81920,"devcore":100,"type":"NVIDIA-H100","mode":"hami-core",'
        '"health":true},'
        '{"id":"GPU-b","index":1,"count":10,"devmem":81920,"devcore":100,"type":"NVIDIA-H100","numa":1,'
        '"mode":"hami-core"}]'
    )


def test_decode_hami_json_with_omitted_zeros() -> None:
    text = ('[{"id":"GPU-a","count":10,"devmem":81920,"devcore":100,"type":"NVIDIA-H100","mode":"hami-core",'
            '"health":true},{"id":"GPU-b","index":1,"count":10,"devmem":81920,"devcore":100,'
            '"type":"NVIDIA-H100","numa":1,"mode":"hami-core"}]')
    assert decode_node_devices(text) == (h100("GPU-a"), h100("GPU-b", index=1, numa=1, health=False))


def test_encode_json_mig_profiles_sit_before_health_as_in_go_struct() -> None:
    profile = {"name": "1g.10gb", "memoryMB": 9856, "core": 14, "sliceCount": 1,
               "placements": [{"start": 0, "size": 1}]}
    dev = Device("GPU-m", 0, 7, 40960, 100, "NVIDIA-A100-SXM4-40GB", mode="mig", mig_profiles=(profile,))
    text = encode_node_devices([dev])
    assert text == (
        '[{"id":"GPU-m","index":0,"count":7,"devmem":40960,"devcore":100,"type":"NVIDIA-A100-SXM4-40GB",'
        '"numa":0,"mode":"mig","migProfiles":[{"name":"1g.10gb","memoryMB":9856,"core":14,"sliceCount":1,'
        '"placements":[{"start":0,"size":1}]}],"health":true}]'
    )
    assert decode_node_devices(text) == (dev,)


def test_encode_json_escapes_like_go() -> None:
    dev = Device("GPU-x", 0, 1, 1, 1, "A<B>&C\u2028é")
    assert '"type":"A\\u003cB\\u003e\\u0026C\\u2028é"' in encode_node_devices([dev])
    assert decode_node_devices(encode_node_devices([dev])) == (dev,)


def test_decode_json_defaults_and_case_insensitive_keys() -> None:
    (dev,) = decode_node_devices('[{"ID":"GPU-a","DevMem":1024,"mode":""}]', vendor="ACME")
    assert dev == Device("GPU-a", 0, 0, 1024, 0, "", vendor="ACME", mode="hami-core", health=False)


@pytest.mark.parametrize("text", ["", "  ", "[]", "null", "\n[]\n"])
def test_decode_empty_registration(text: str) -> None:
    assert decode_node_devices(text) == ()


def test_decode_legacy_seven_fields_from_hami_docs() -> None:
    text = (f"{V100_A},10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,0,true:"
            f"{V100_B},10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,0,true:")
    assert decode_node_devices(text) == (
        Device(V100_A, 0, 10, 32768, 100, "NVIDIA-Tesla V100-PCIE-32GB"),
        Device(V100_B, 0, 10, 32768, 100, "NVIDIA-Tesla V100-PCIE-32GB"),
    )


def test_decode_legacy_nine_fields_and_go_bools() -> None:
    text = "DCU-1,4,16384,100,DCU-Z100,1,False,3,hami-core:DCU-2,4,16384,100,DCU-Z100,1,1,4,mig"
    assert decode_node_devices(text, vendor="DCU") == (
        Device("DCU-1", 3, 4, 16384, 100, "DCU-Z100", vendor="DCU", numa=1, health=False),
        Device("DCU-2", 4, 4, 16384, 100, "DCU-Z100", vendor="DCU", numa=1, mode="mig"),
    )


def test_encode_legacy_writes_nine_fields_like_hami() -> None:
    devices = [Device(V100_A, 0, 10, 32768, 100, "NVIDIA-Tesla V100-PCIE-32GB"),
               Device(V100_B, 1, 10, 32768, 100, "NVIDIA-Tesla V100-PCIE-32GB", numa=1, health=False)]
    assert encode_node_devices_legacy(devices) == (
        f"{V100_A},10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,0,true,0,hami-core:"
        f"{V100_B},10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,1,false,1,hami-core:"
    )


@pytest.mark.parametrize(("text", "field"), [
    ('[{"id":"GPU-a","devmem":"lots"}]', "hami.io/node-nvidia-register[0].devmem"),
    ('[{"id":"GPU-a"},{"count":1}]', "hami.io/node-nvidia-register[1].id"),
    ('[{"id":"GPU-a","health":"yes"}]', "hami.io/node-nvidia-register[0].health"),
    ('[{"id":"GPU-a","count":-1}]', "hami.io/node-nvidia-register[0].count"),
    ('[{"id":"GPU-a","devmem":3000000000}]', "hami.io/node-nvidia-register[0].devmem"),
    ('[{"id":"GPU-a","migProfiles":[1]}]', "hami.io/node-nvidia-register[0].migProfiles"),
    ('[{"id":"GPU-a"}', "hami.io/node-nvidia-register"),
    ('{"id":"GPU-a"}', "hami.io/node-nvidia-register"),
    ("[1]", "hami.io/node-nvidia-register[0]"),
    ("GPU-a,10,32768,100,T4,0:", "hami.io/node-nvidia-register[0]"),
    ("GPU-a,10,32768,100,T4,0,true:GPU-b,x,1,1,T4,0,true:", "hami.io/node-nvidia-register[1].count"),
    ("GPU-a,10,32768,100,T4,0,maybe:", "hami.io/node-nvidia-register[0].health"),
    ("GPU-a,10,32768,100,T4,0,true,-1,hami-core:", "hami.io/node-nvidia-register[0].index"),
    (",10,32768,100,T4,0,true:", "hami.io/node-nvidia-register[0].id"),
])
def test_decode_registration_errors_name_the_field(text: str, field: str) -> None:
    with pytest.raises(HamiError) as err:
        decode_node_devices(text)
    assert err.value.field == field


def test_encode_legacy_refuses_separators() -> None:
    with pytest.raises(HamiError):
        encode_node_devices_legacy([Device("GPU:a", 0, 1, 1, 1, "T4")])
    with pytest.raises(HamiError):
        encode_node_devices_legacy([Device("GPU-a", 0, 1, 1, 1, "T4,x")])


# --- topology ---------------------------------------------------------------------------------------------


def test_topology_literal() -> None:
    triples = (("GPU-a", "GPU-c", 100), ("GPU-a", "GPU-b", 200), ("GPU-b", "GPU-a", 200))
    text = encode_topology(triples)
    assert text == '[{"uuid":"GPU-a","score":{"GPU-b":200,"GPU-c":100}},{"uuid":"GPU-b","score":{"GPU-a":200}}]'
    assert decode_topology(text) == (("GPU-a", "GPU-b", 200), ("GPU-a", "GPU-c", 100), ("GPU-b", "GPU-a", 200))


def test_topology_empty_and_scoreless() -> None:
    assert decode_topology("") == ()
    assert decode_topology("null") == ()
    assert decode_topology('[{"uuid":"GPU-a"}]') == ()
    assert encode_topology(()) == "[]"


@pytest.mark.parametrize("text", ['{"uuid":"a"}', '[{"uuid":"a","score":{"b":"x"}}]', '[{"score":{"b":1}}]',
                                  '[{"uuid":"a","score":[1]}]', "[1]", "nope"])
def test_topology_errors(text: str) -> None:
    with pytest.raises(HamiError) as err:
        decode_topology(text)
    assert err.value.field.startswith("hami.io/node-nvidia-score")


# --- pod allocation ---------------------------------------------------------------------------------------


def cd(uuid: str, mem: int, cores: int = 0, vendor: str = "NVIDIA") -> ContainerDevice:
    return ContainerDevice(uuid, vendor, mem, cores)


def test_allocation_spec_example_two_containers_one_gpu() -> None:
    text = f"{V100_B},NVIDIA,3000,0:;{V100_B},NVIDIA,5000,0:;"
    alloc = ((cd(V100_B, 3000),), (cd(V100_B, 5000),))
    assert encode_pod_allocation(alloc) == text
    assert decode_pod_allocation(text) == alloc


def test_allocation_multi_device_and_empty_entries() -> None:
    alloc = ((), (cd("GPU-a", 1000, 30), cd("GPU-b", 1000, 30)), ())
    text = ";GPU-a,NVIDIA,1000,30:GPU-b,NVIDIA,1000,30:;;"
    assert encode_pod_allocation(alloc) == text
    assert decode_pod_allocation(text) == alloc


@pytest.mark.parametrize(("text", "expected"), [
    ("", ()),
    (";", ((),)),
    (";;", ((), ())),
    ("GPU-a,NVIDIA,1,0:", ((cd("GPU-a", 1),),)),  # last entry without its ';'
    ("GPU-a,NVIDIA,1,0", ((cd("GPU-a", 1),),)),  # ... and without its ':'
    ("GPU-a,NVIDIA,1,0::GPU-b,NVIDIA,2,0:;", ((cd("GPU-a", 1), cd("GPU-b", 2)),)),
    ("GPU-a,NVIDIA,1,0,future-field:;", ((cd("GPU-a", 1),),)),  # HAMi ignores extra fields
    ("GPU-a,NVIDIA,1,0:;\n", ((cd("GPU-a", 1),),)),
    (";GPU-a,NVIDIA,1,0:;;", ((), (cd("GPU-a", 1),), ())),  # what HAMi's device plugin leaves after a blank
])
def test_allocation_lenient_decode(text: str, expected: object) -> None:
    assert decode_pod_allocation(text) == expected


@pytest.mark.parametrize(("text", "field"), [
    ("GPU-a,NVIDIA,1:;", "hami.io/vgpu-devices-allocated[container 0][device 0]"),
    ("GPU-a,NVIDIA,1,0:;GPU-b,NVIDIA,x,0:;", "hami.io/vgpu-devices-allocated[container 1][device 0].mem"),
    ("GPU-a,NVIDIA,1,0:GPU-b,NVIDIA,1,-5:;", "hami.io/vgpu-devices-allocated[container 0][device 1].cores"),
    (",NVIDIA,1,0:;", "hami.io/vgpu-devices-allocated[container 0][device 0]"),
    ("GPU-a,,1,0:;", "hami.io/vgpu-devices-allocated[container 0][device 0]"),
    ("GPU-a,NVIDIA,99999999999,0:;", "hami.io/vgpu-devices-allocated[container 0][device 0].mem"),
])
def test_allocation_errors_name_container_and_device(text: str, field: str) -> None:
    with pytest.raises(HamiError) as err:
        decode_pod_allocation(text)
    assert err.value.field == field


def test_allocation_encode_refuses_bad_values() -> None:
    for bad in (cd("GPU;a", 1), cd("GPU-a", -1), cd("", 1), cd("GPU-a", 1, vendor="NV:IDIA")):
        with pytest.raises(HamiError):
            encode_pod_allocation(((bad,),))


def test_blank_container_and_first_pending() -> None:
    text = "GPU-a,NVIDIA,3000,0:;GPU-a,NVIDIA,5000,0:;"
    assert first_pending_container(text) == 0
    once = blank_container(text, 0)
    assert once == ";GPU-a,NVIDIA,5000,0:;"
    assert first_pending_container(once) == 1
    twice = blank_container(once, 1)
    assert twice == ";;"
    assert first_pending_container(twice) is None
    with pytest.raises(HamiError):
        blank_container(text, 2)


# --- node lock --------------------------------------------------------------------------------------------

AT = datetime(2026, 11, 29, 22, 14, 32, tzinfo=UTC)


def test_node_lock_literal() -> None:
    assert encode_node_lock(AT, "default", "train-0") == "2026-11-29T22:14:32Z,default,train-0"
    shanghai = AT.astimezone(timezone(timedelta(hours=8)))
    assert encode_node_lock(shanghai, "default", "train-0") == "2026-11-29T22:14:32Z,default,train-0"
    assert decode_node_lock("2026-11-29T22:14:32Z,default,train-0") == NodeLock(AT, "default", "train-0")


def test_node_lock_forms_hami_writes() -> None:
    # HAMi formats its local time with an offset, and writes a bare time when it locks without a pod.
    assert decode_node_lock("2026-11-30T06:14:32+08:00,ns,p") == NodeLock(AT, "ns", "p")
    assert decode_node_lock("2026-11-29T22:14:32Z") == NodeLock(AT)
    lock = decode_node_lock("2026-11-29T22:14:32.123456789Z,ns,p")
    assert lock.at == AT.replace(microsecond=123456)


@pytest.mark.parametrize("text", ["", "2026-11-29T22:14:32Z,ns", "2026-11-29T22:14:32Z,a,b,c",
                                  "2026-11-29 22:14:32,ns,p", "2026-11-29T22:14:32,ns,p",
                                  "2026-13-29T22:14:32Z,ns,p", "yesterday"])
def test_node_lock_errors(text: str) -> None:
    with pytest.raises(HamiError) as err:
        decode_node_lock(text)
    assert err.value.field == "hami.io/mutex.lock"


# --- handshake --------------------------------------------------------------------------------------------


def test_handshake_literals() -> None:
    assert requesting_handshake(AT) == "Requesting_2026-11-29 22:14:32"
    assert requesting_handshake(AT.replace(tzinfo=None)) == "Requesting_2026-11-29 22:14:32"
    assert reported_handshake(AT.replace(microsecond=434037)) == "Reported 2026-11-29 22:14:32.434037 +0000 UTC"
    assert reported_handshake(AT) == "Reported 2026-11-29 22:14:32 +0000 UTC"


@pytest.mark.parametrize(("text", "expected"), [
    ("Requesting_2026-11-29 22:14:32", Handshake("Requesting", AT)),
    ("Requesting_2026.11.29 22:14:32", Handshake("Requesting", AT)),  # HAMi before time.DateTime
    ("Deleted_2026.11.29 22:14:32", Handshake("Deleted", AT)),
    ("Deleted_2026-11-29 22:14:32", Handshake("Deleted", AT)),
    ("Deleted", Handshake("Deleted", None)),
    # HAMi's device plugin: "Reported " + time.Now().String(), monotonic suffix included.
    ("Reported 2026-11-29 22:14:32.434037031 +0000 UTC m=+1104711.777756895",
     Handshake("Reported", AT.replace(microsecond=434037))),
    ("Reported 2026-11-30 06:14:32 +0800 CST", Handshake("Reported", AT)),
    ("Reported_2026-11-29 22:14:32", Handshake("Reported", AT)),
])
def test_decode_handshake(text: str, expected: Handshake) -> None:
    assert decode_handshake(text) == expected


@pytest.mark.parametrize("text", ["", "Requested_2026-11-29 22:14:32", "Requesting_soon",
                                  "Reported 2026-11-29 22:14:32 +9900 UTC", "Requesting_2026-02-30 00:00:00"])
def test_decode_handshake_errors(text: str) -> None:
    with pytest.raises(HamiError) as err:
        decode_handshake(text)
    assert err.value.field == "hami.io/node-handshake"


# --- round trips ------------------------------------------------------------------------------------------

_TOKEN = st.text(st.characters(codec="utf-8", exclude_characters=",:;\n\r\t "), min_size=1, max_size=12)
_FREE = st.text(st.characters(codec="utf-8", exclude_characters=",:;"), max_size=16)
_I32 = st.integers(0, 2**31 - 1)
_PROFILE = st.fixed_dictionaries({"name": _FREE, "memoryMB": _I32, "core": _I32, "sliceCount": _I32,
                                  "placements": st.lists(st.fixed_dictionaries({"start": _I32, "size": _I32}),
                                                         max_size=2)})


def devices(vendor: str = "NVIDIA", *, profiles: bool = True) -> st.SearchStrategy[list[Device]]:
    return st.lists(st.builds(
        Device, uuid=_TOKEN, index=st.integers(0, 64), count=_I32, memory_mib=_I32, cores=_I32, type=_FREE,
        vendor=st.just(vendor), numa=st.integers(-1, 8), mode=_TOKEN, health=st.booleans(),
        mig_profiles=st.lists(_PROFILE, max_size=2).map(tuple) if profiles else st.just(()),
    ), max_size=4)


@given(devices(), st.booleans())
def test_json_registration_round_trip(devs: list[Device], omit: bool) -> None:
    assert decode_node_devices(encode_node_devices(devs, go_omitempty=omit)) == tuple(devs)


@given(devices("DCU", profiles=False))
def test_legacy_registration_round_trip(devs: list[Device]) -> None:
    if any(d.uuid[0] in "[{" for d in devs):  # refused: it would read back as the JSON form
        with pytest.raises(HamiError):
            encode_node_devices_legacy(devs)
        return
    assert decode_node_devices(encode_node_devices_legacy(devs), vendor="DCU") == tuple(devs)


_ALLOC = st.lists(st.lists(st.builds(ContainerDevice, _TOKEN.filter(lambda t: t.strip() == t), _TOKEN,
                                     _I32, _I32), max_size=3).map(tuple), max_size=4).map(tuple)


@given(_ALLOC)
def test_allocation_round_trip(alloc: tuple[tuple[ContainerDevice, ...], ...]) -> None:
    assert decode_pod_allocation(encode_pod_allocation(alloc)) == alloc


@given(_ALLOC, st.data())
def test_blank_container_only_touches_one_entry(alloc: tuple[tuple[ContainerDevice, ...], ...],
                                                data: st.DataObject) -> None:
    if not alloc:
        return
    i = data.draw(st.integers(0, len(alloc) - 1))
    blanked = decode_pod_allocation(blank_container(encode_pod_allocation(alloc), i))
    assert blanked == (*alloc[:i], (), *alloc[i + 1:])


@given(st.dictionaries(_FREE, st.dictionaries(_FREE, st.integers(-(2**40), 2**40), max_size=3), max_size=3))
def test_topology_round_trip(scores: dict[str, dict[str, int]]) -> None:
    triples = tuple((a, b, s) for a, peers in scores.items() if a or not peers
                    for b, s in sorted(peers.items()))
    assert decode_topology(encode_topology(triples)) == triples


_TIMES = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1),
                      timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0))


@given(_TIMES, _TOKEN, _TOKEN)
def test_node_lock_round_trip(at: datetime, ns: str, pod: str) -> None:
    assert decode_node_lock(encode_node_lock(at, ns, pod)) == NodeLock(at, ns, pod)


@given(_TIMES, st.integers(0, 999_999))
def test_handshake_round_trip(at: datetime, micro: int) -> None:
    assert decode_handshake(requesting_handshake(at)) == Handshake("Requesting", at)
    precise = at.replace(microsecond=micro)
    assert decode_handshake(reported_handshake(precise)) == Handshake("Reported", precise)


# --- fuzz: nothing but HamiError escapes a decoder ----------------------------------------------------------

DECODERS: list[Callable[[str], object]] = [
    decode_node_devices, decode_topology, decode_pod_allocation, decode_node_lock, decode_handshake,
    lambda t: blank_container(t, 0), first_pending_container,
]
_WIRE_ALPHABET = st.sampled_from([*',:;-_. 0123456789GPUNVIDAtruefalsT+Zz[]{}"\n', "Requesting_",
                                  "Reported ", "Deleted_", "2026-11-29", "22:14:32", "\u2028", "null"])
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["id", "uuid", "score", "count", "devmem", "health", "migProfiles",
                                          "index", "numa", "mode", "type", "x"]), inner, max_size=5),
                     max_leaves=12)


def _only_hami_errors(text: str) -> None:
    for decode in DECODERS:
        with contextlib.suppress(HamiError):
            decode(text)


@given(st.text())
def test_fuzz_random_text(text: str) -> None:
    _only_hami_errors(text)


@given(st.lists(_WIRE_ALPHABET, max_size=40).map("".join))
def test_fuzz_wire_like_text(text: str) -> None:
    _only_hami_errors(text)


@given(_JSON)
def test_fuzz_json_shapes(value: object) -> None:
    _only_hami_errors(json.dumps(value))
    _only_hami_errors(json.dumps([value]))


def test_names_are_the_hami_ones() -> None:
    assert anno.NODE_LOCK == "hami.io/mutex.lock"
    assert anno.VGPU_DEVICES_TO_ALLOCATE == "hami.io/vgpu-devices-to-allocate"
    assert anno.NVIDIA_VGPU_MODE == "nvidia.com/vgpu-mode"
