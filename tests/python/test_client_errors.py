"""Every error reaches Python as the class of its code (docs/protocol.md §7), with the field the
message names and the call's req_id; the server keeps serving after each."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import zmq

from _fixtures import *  # noqa: F401,F403
import zrollout
from zrollout import errors


@pytest.mark.parametrize("message, field", [
    ("batch[2].sampling_params.top_k: expected an integer", "batch[2].sampling_params.top_k"),
    ("input_ids[5]: token id 40000 is outside the vocabulary [0, 32000)", "input_ids[5]"),
    ("rid: must be a non-empty string", "rid"),
    ("unknown op 'bogus'", ""),
    ("engine 1 (tcp://h:1): stopped", ""),
    ("tensor model.norm.weight: shape [3] is not [64] (rank 0)", "model.norm.weight"),
    ("", ""),
])
def test_field_from_message(message, field):
    assert errors.field_of(message) == field
    assert errors.error_from("invalid_argument", message, 7).field == field


def test_one_class_per_code():
    codes = ["bad_message", "unknown_op", "invalid_argument", "out_of_range", "too_long", "duplicate_rid", "not_found",
             "unsupported", "weight_mismatch", "checksum_mismatch", "io_error", "unavailable", "timeout", "aborted",
             "internal", "permission_denied"]
    classes = {errors.error_from(c, "x: y", 3).__class__ for c in codes}
    assert len(classes) == len(codes)
    for c in codes:
        e = errors.error_from(c, "x: y", 3)
        assert e.code == c and e.req_id == 3 and e.field == "x" and isinstance(e, errors.ZrolloutError)
    new = errors.error_from("some_new_code", "z: w")  # appended later by a newer server: read as internal
    assert isinstance(new, errors.Internal) and new.code == "some_new_code"
    assert isinstance(errors.error_from("invalid_argument", ""), ValueError)
    assert isinstance(errors.error_from("timeout", ""), TimeoutError)
    assert isinstance(errors.from_native(RuntimeError("weight_mismatch", "tensors[0].name: no such tensor")),
                      errors.WeightMismatch)


def _raises(cls, fn, field=None):
    with pytest.raises(cls) as e:
        fn()
    assert e.value.code == cls.code and e.value.req_id > 0
    if field is not None:
        assert e.value.field == field, e.value.message
    return e.value


def test_invalid_argument(client):
    e = _raises(errors.InvalidArgument, lambda: client.generate(input_ids=[1, 2], sampling_params={"top_k": "x"}),
                "sampling_params.top_k")
    assert "expected an integer" in e.message
    _raises(errors.InvalidArgument, lambda: client.generate(input_ids=[1, 2], sampling_params={"top_p": 1.5}),
            "sampling_params.top_p")
    _raises(errors.InvalidArgument, lambda: client.generate(input_ids=[1, 2], no_such_field=1), "no_such_field")
    _raises(errors.InvalidArgument, lambda: client.generate(
        [{"input_ids": [1, 2]}, {"input_ids": [1, 2], "sampling_params": {"n": 0}}]), "batch[1].sampling_params.n")


def test_out_of_range_and_too_long(client):
    _raises(errors.OutOfRange, lambda: client.generate(input_ids=[1, 600]), "input_ids[1]")
    _raises(errors.OutOfRange, lambda: client.generate(input_ids=[1, 2], sampling_params={"stop_token_ids": [999]}),
            "sampling_params.stop_token_ids[0]")
    _raises(errors.TooLong, lambda: client.generate(input_ids=[1] * 600), "input_ids")


def test_duplicate_rid(client):
    _raises(errors.DuplicateRid, lambda: client.generate([{"rid": "same", "input_ids": [1, 2]},
                                                          {"rid": "same", "input_ids": [1, 3]}]), "batch[1].rid")


def test_not_found_and_unknown_op(client):
    _raises(errors.NotFound, lambda: client.close_session("no-such-session"), "session_id")
    _raises(errors.NotFound, lambda: client.generate(input_ids=[1, 2], session_id="no-such-session"), "session_id")
    _raises(errors.UnknownOp, lambda: client.call("fly", {}))


def test_weight_errors(client, tmp_path, stories):
    version = client.get_weight_version()["version"] + 1
    e = _raises(errors.NotFound, lambda: client.update_weights(version=version, path="disk",
                                                               disk_path=str(tmp_path), tensors=[]))
    assert "config.json" in e.message
    (tmp_path / "config.json").write_bytes((Path(stories) / "config.json").read_bytes())
    (tmp_path / "model.safetensors").write_bytes((Path(stories) / "model.safetensors").read_bytes()[:5000])
    e = _raises(errors.IoError, lambda: client.update_weights(version=version, path="disk",
                                                              disk_path=str(tmp_path), tensors=[]))
    assert "model.safetensors" in e.message
    bad = [{"name": "model.no_such.weight", "dtype": "F32", "shape": [4], "nbytes": 16, "checksum": 0, "offset": 0}]
    e = _raises(errors.WeightMismatch, lambda: client.update_weights(
        version=version, path="ipc", shm_name="/zrollout-test-none", shm_bytes=64, tensors=bad))
    assert e.field in ("model.no_such.weight", "tensors[0].name")
    assert client.health()["weight_version"] == version - 1  # nothing changed


def test_unavailable_while_released(client):
    client.release_memory(["kv_cache"])
    try:
        e = _raises(errors.Unavailable, lambda: client.generate(input_ids=[1, 2]))
        assert isinstance(e, ConnectionError)
    finally:
        client.resume_memory(["kv_cache"])
    assert client.generate(input_ids=[1, 2], sampling_params={"max_new_tokens": 1})["outputs"]


def test_bin_errors_come_from_the_server_with_the_req_id(client):
    e = _raises(errors.InvalidArgument, lambda: client.generate(input_ids=b"\x01\x00\x00\x00\x02"), "input_ids")
    assert "whole number of int32" in e.message
    _raises(errors.InvalidArgument, lambda: client.generate([{"input_ids": [1]}, {"input_ids": b"abc"}]),
            "batch[1].input_ids")
    with pytest.raises(errors.InvalidArgument):  # refused before sending
        client.generate([])


def test_bad_message_and_req_id_zero(server):
    """A body that is not a msgpack map is answered with bad_message and req_id 0 (nothing to read
    it from); one that is a map but does not convert names its call's req_id."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    try:
        sock.send_multipart([b"generate", b"\xc1not msgpack"])
        assert sock.poll(5000)
        op, body = sock.recv_multipart()
        reply = msgpack.unpackb(body, raw=False)
        assert op == b"error" and reply["code"] == "bad_message" and reply["req_id"] == 0
        err = errors.error_from(reply["code"], reply["message"], reply["req_id"])
        assert isinstance(err, errors.BadMessage)
    finally:
        sock.close()
    with zrollout.Client(server.endpoint, timeout=5) as c:
        pending = c._start("generate", {"input_ids": b"\x01\x00"}, 5)
        with pytest.raises(errors.InvalidArgument) as e:
            c._next_item(pending)
        assert e.value.req_id == pending.req_id and e.value.field == "input_ids"


def test_server_keeps_serving(client):
    case = greedy_cases()[0]
    out = client.generate(input_ids=case["prompt_ids"], sampling_params={"temperature": 0.0, "max_new_tokens": 4})
    assert out["outputs"][0]["output_ids"] == case["greedy_ids"][:4]
