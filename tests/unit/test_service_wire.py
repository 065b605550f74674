"""Extender and AdmissionReview wire formats, on literal bodies as kube-scheduler and the API server send them."""

from __future__ import annotations

import base64
import json

import orjson
import pytest

from hami.protocol import admission_review as review
from hami.protocol import extender as wire
from hami.resources import HamiError

# What kube-scheduler v1.3x sends with nodeCacheCapable: true (Go encoding of ExtenderArgs: no tags, nil → null).
FILTER_CACHE_CAPABLE = b"""{"Pod":{"metadata":{"name":"p","namespace":"default","uid":"u1","creationTimestamp":null,
"annotations":null,"labels":null},"spec":{"containers":[{"name":"c","image":"x","resources":{"limits":
{"nvidia.com/gpu":"1"}}}],"schedulerName":"hami-scheduler","nodeName":""},"status":{}},"Nodes":null,
"NodeNames":["n1","n2"]}"""

# nodeCacheCapable: false: a full NodeList, and NodeNames null.
FILTER_NODELIST = b"""{"Pod":{"metadata":{"name":"p","uid":"u1"},"spec":{"containers":[]}},
"Nodes":{"metadata":{"resourceVersion":""},"items":[{"metadata":{"name":"n1","labels":{"a":"b"}},"status":{}},
{"metadata":{"name":"n2"}}]},"NodeNames":null}"""


def test_filter_args_cache_capable() -> None:
    args = wire.parse_extender_args(FILTER_CACHE_CAPABLE)
    assert args.cache_capable and args.node_names == ("n1", "n2")
    assert args.pod["metadata"]["uid"] == "u1"


def test_filter_args_nodelist_and_reply_carries_node_objects() -> None:
    args = wire.parse_extender_args(FILTER_NODELIST)
    assert not args.cache_capable and args.node_names == ("n1", "n2")
    reply = wire.filter_result(args, ["n1"], {"n2": "why"}, {})
    assert reply["NodeNames"] is None
    assert reply["Nodes"]["items"] == [{"metadata": {"name": "n1", "labels": {"a": "b"}}, "status": {}}]
    assert reply["FailedNodes"] == {"n2": "why"} and reply["Error"] == ""


def test_filter_reply_has_every_key_go_expects() -> None:
    args = wire.parse_extender_args(FILTER_CACHE_CAPABLE)
    reply = wire.filter_result(args, ["n1"], {}, {"n2": "never"})
    assert list(reply) == ["Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"]
    assert reply["Nodes"] is None and reply["NodeNames"] == ["n1"]


def test_keys_are_matched_case_insensitively_like_go() -> None:
    args = wire.parse_extender_args(b'{"pod":{"metadata":{"name":"p"}},"nodenames":["a"]}')
    assert args.node_names == ("a",)
    bind = wire.parse_binding_args(b'{"podname":"p","podnamespace":"ns","poduid":"u","node":"n"}')
    assert bind == wire.BindingArgs("p", "ns", "u", "n")


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b"null", b'{"Pod":null,"NodeNames":["a"]}', b'{"NodeNames":["a"]}',
    b'{"Pod":{},"NodeNames":"a"}', b'{"Pod":{},"NodeNames":[1]}', b'{"Pod":{},"Nodes":{"items":[{}]}}',
    b'{"Pod":{},"Nodes":[]}', b'{"Pod":"x"}',
])
def test_malformed_filter_args(body: bytes) -> None:
    with pytest.raises(HamiError):
        wire.parse_extender_args(body)


def test_both_node_fields_null_means_no_candidates() -> None:
    args = wire.parse_extender_args(b'{"Pod":{"metadata":{}},"Nodes":null,"NodeNames":null}')
    assert args.node_names == () and args.cache_capable


@pytest.mark.parametrize("body", [
    b'{"PodName":"","PodNamespace":"ns","PodUID":"u","Node":"n"}', b'{"PodName":"p","Node":null}',
    b'{"PodName":1,"Node":"n"}', b"{", b'"x"',
])
def test_malformed_binding_args(body: bytes) -> None:
    with pytest.raises(HamiError):
        wire.parse_binding_args(body)


def test_binding_args_default_namespace_and_result() -> None:
    args = wire.parse_binding_args(b'{"PodName":"p","PodNamespace":"","PodUID":"u","Node":"n"}')
    assert args.namespace == "default" and args.key == "default/p"
    assert wire.binding_result() == {"Error": ""}


def test_preemption_meta_and_full_forms() -> None:
    meta = wire.parse_preemption_args(
        b'{"Pod":{"metadata":{}},"NodeNameToVictims":null,"NodeNameToMetaVictims":'
        b'{"n1":{"Pods":[{"UID":"a"},{"UID":"b"}],"NumPDBViolations":1},"n2":null}}')
    assert meta.victims == {"n1": wire.Victims(("a", "b"), 1), "n2": wire.Victims(())}
    full = wire.parse_preemption_args(
        b'{"Pod":{"metadata":{}},"NodeNameToVictims":{"n1":{"Pods":[{"metadata":{"uid":"a"}}],'
        b'"NumPDBViolations":0}},"NodeNameToMetaVictims":null}')
    assert full.victims == {"n1": wire.Victims(("a",), 0)}
    assert wire.preemption_result(meta.victims) == {"NodeNameToMetaVictims": {
        "n1": {"Pods": [{"UID": "a"}, {"UID": "b"}], "NumPDBViolations": 1},
        "n2": {"Pods": [], "NumPDBViolations": 0}}}


@pytest.mark.parametrize("body", [
    b'{"Pod":{},"NodeNameToMetaVictims":{"n":{"Pods":[{"UID":""}]}}}',
    b'{"Pod":{},"NodeNameToMetaVictims":{"n":{"Pods":"x"}}}',
    b'{"Pod":{},"NodeNameToMetaVictims":{"n":{"Pods":[],"NumPDBViolations":"1"}}}',
    b'{"Pod":{},"NodeNameToMetaVictims":[]}',
])
def test_malformed_preemption_args(body: bytes) -> None:
    with pytest.raises(HamiError):
        wire.parse_preemption_args(body)


def test_host_priorities_are_clamped() -> None:
    assert wire.host_priorities({"a": 12, "b": -1, "c": 7}) == [
        {"Host": "a", "Score": 10}, {"Host": "b", "Score": 0}, {"Host": "c", "Score": 7}]


# --- AdmissionReview -----------------------------------------------------------------------------------------

REVIEW = {
    "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
    "request": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team", "operation": "CREATE", "userInfo": {"username": "u"},
                "object": {"metadata": {"name": "p"}}, "oldObject": None, "dryRun": False,
                "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}},
}


def test_review_roundtrip_allow_with_patch() -> None:
    req = review.parse_review(json.dumps(REVIEW).encode())
    assert (req.uid, req.operation, req.namespace, req.resource_kind) == (
        "705ab4f5-6393-11e8-b7cc-42010a800002", "CREATE", "team", "Pod")
    reply = review.allow(req, [{"op": "add", "path": "/spec/schedulerName", "value": "s"}])
    assert reply["apiVersion"] == "admission.k8s.io/v1" and reply["kind"] == "AdmissionReview"
    assert reply["response"]["uid"] == req.uid and reply["response"]["allowed"] is True
    assert reply["response"]["patchType"] == "JSONPatch"
    assert orjson.loads(base64.b64decode(reply["response"]["patch"])) == [
        {"op": "add", "path": "/spec/schedulerName", "value": "s"}]


def test_review_without_kind_and_api_version_is_answered_as_v1() -> None:
    body = {"request": {"uid": "u", "object": None}}
    req = review.parse_review(json.dumps(body).encode())
    reply = review.allow(req)
    assert reply == {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                     "response": {"uid": "u", "allowed": True}}


def test_deny_carries_status() -> None:
    req = review.parse_review(json.dumps(REVIEW).encode())
    reply = review.deny(req, "bad")
    assert reply["response"]["allowed"] is False
    assert reply["response"]["status"] == {"status": "Failure", "code": 400, "message": "bad",
                                           "reason": "BadRequest"}
    assert "patch" not in reply["response"]


@pytest.mark.parametrize("body", [
    b"", b"{", b"[]", b'{"request":null}', b'{"request":{"uid":""}}', b'{"request":{"uid":1}}',
    b'{"apiVersion":"admission.k8s.io/v2","request":{"uid":"u"}}', b'{"kind":"Pod","request":{"uid":"u"}}',
    b'{"request":{"uid":"u","object":[]}}', b'{"request":{"uid":"u","operation":5}}',
])
def test_malformed_reviews(body: bytes) -> None:
    with pytest.raises(HamiError):
        review.parse_review(body)
