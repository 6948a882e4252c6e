"""What docs/protocol.md promises and a client written from it alone relies on (issue 14 item 6),
checked on the raw wire (tests/python/conftest.py's WireClient, no zrollout.Client in between):
errors about bin fields carry the call's req_id; rid is optional (the server assigns one);
input_ids takes precedence over text; a disk update loads only the tensors it lists and verifies
their checksums; a segment served zero-copy without shm_keep is listed in shm_in_use."""

from __future__ import annotations

import json
from multiprocessing import shared_memory

import msgpack
import numpy as np
import pytest
import zmq

from conftest import read_safetensors, reference_cases, shared_model

from zrollout import errors
from zrollout.weights import PublishError, checksum64

GREEDY = {"temperature": 0.0, "max_new_tokens": 8, "ignore_eos": True}


def error_of(client, op: str, body: dict) -> dict:
    rop, reply = client.call(op, body)
    assert rop == "error", f"{op} was accepted: {reply}"
    return reply


def test_bin_field_errors_carry_the_calls_req_id(serve):
    """Two bad bodies in flight at once: each error names its own req_id (not 0)."""
    engine = serve(shared_model("stories260K"))
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(engine.endpoint)
    bodies = {
        11: {"req_id": 11, "input_ids": b"\x01\x00\x00\x00\x02"},  # not a whole number of int32
        12: {"req_id": 12, "batch": [{"input_ids": [1, 2]}, {"input_ids": [1], "rid": b"\x01\x02\x03\x04"}]},
        13: {"req_id": 13, "text": "\udcff"},  # not valid UTF-8 on the wire (surrogate escape below)
    }
    try:
        for req_id, body in bodies.items():
            packed = msgpack.packb(body, use_bin_type=True, unicode_errors="surrogateescape")
            sock.send_multipart([b"generate", packed])
        got = {}
        while len(got) < len(bodies):
            assert sock.poll(10000), f"no reply for {set(bodies) - set(got)}"
            op, raw = sock.recv_multipart()
            reply = msgpack.unpackb(raw, raw=False)
            assert op == b"error", reply
            got[reply["req_id"]] = reply
    finally:
        sock.close()
    assert set(got) == set(bodies)
    assert got[11]["code"] == "invalid_argument" and got[11]["message"].startswith("input_ids: bin of 5 bytes")
    assert got[12]["message"].startswith("batch[1].rid: bin is only accepted"), got[12]
    assert got[13]["code"] == "bad_message" and "UTF-8" in got[13]["message"]


def test_rid_is_optional_and_returned(serve):
    engine = serve(shared_model("stories260K"))
    case = reference_cases(shared_model("stories260K"))[0]
    reply = engine.client.ok("generate", {"input_ids": case["prompt_ids"], "sampling_params": GREEDY})
    out = reply["outputs"][0]
    assert out["rid"] == out["meta_info"]["id"] and len(out["rid"]) == 32  # assigned by the server
    assert out["output_ids"] == case["greedy_ids"][:8]
    batch = engine.client.ok("generate", {"batch": [{"input_ids": [1, 2]}, {"input_ids": [1, 3], "rid": ""}]})
    rids = [o["meta_info"]["id"] for o in batch["outputs"]]
    assert all(rids) and rids[0] != rids[1]
    score = engine.client.ok("score", {"input_ids": [1, 2], "completion_ids": [3]})
    assert score["outputs"][0]["rid"]


def test_input_ids_take_precedence_over_text(serve):
    model = shared_model("stories260K")
    engine = serve(model)
    case = reference_cases(model)[0]
    both = engine.client.ok("generate", {"text": "a text that tokenizes to other ids", "input_ids": case["prompt_ids"],
                                         "sampling_params": GREEDY})["outputs"][0]
    assert both["meta_info"]["prompt_tokens"] == len(case["prompt_ids"])
    assert both["output_ids"] == case["greedy_ids"][:8]


def _write_safetensors(path, tensors: dict) -> None:
    """{name: (dtype, shape, bytes)} as one safetensors file (8-byte padded header, data in order)."""
    header, offset = {}, 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(raw for _, _, raw in tensors.values()))


def _metas(tensors: dict, names) -> list:
    return [{"name": n, "dtype": tensors[n][0], "shape": list(tensors[n][1]), "nbytes": len(tensors[n][2]),
             "checksum": checksum64(np.frombuffer(tensors[n][2], np.uint8)), "offset": 0} for n in names]


def test_disk_update_loads_only_the_listed_tensors_and_checks_them(serve, random_like, tmp_path):
    real = shared_model("stories260K")
    engine = serve(random_like("stories260K"))
    tensors = read_safetensors(real / "model.safetensors")
    norm = "model.norm.weight"
    folder = tmp_path / "push"  # no config.json: a listed disk update does not read it
    folder.mkdir()
    _write_safetensors(folder / "model.safetensors", {norm: tensors[norm]})  # one tensor only

    def sums():
        return {t["name"]: t["checksum"] for t in engine.client.ok("get_weights_checksum")["tensors"]}

    before = sums()
    base = {"version": 1, "path": "disk", "disk_path": str(folder)}
    metas = _metas(tensors, [norm])
    e = error_of(engine.client, "update_weights", {**base, "tensors": [dict(metas[0], checksum=metas[0]["checksum"] ^ 1)]})
    assert e["code"] == "checksum_mismatch" and norm in e["message"], e
    other = _metas(tensors, ["model.layers.0.input_layernorm.weight"])
    e = error_of(engine.client, "update_weights", {**base, "tensors": metas + other})
    assert e["code"] == "weight_mismatch" and "model.layers.0.input_layernorm.weight" in e["message"], e
    assert sums() == before and engine.client.ok("get_weight_version")["version"] == 0  # refusals changed nothing
    engine.client.ok("update_weights", {**base, "tensors": metas})
    after = sums()
    assert after[norm] == metas[0]["checksum"] != before[norm]
    assert {k: v for k, v in after.items() if k != norm} == {k: v for k, v in before.items() if k != norm}
    # Every tensor listed (still no config.json): the engine answers the reference.
    _write_safetensors(folder / "model.safetensors", tensors)
    engine.client.ok("update_weights", {**base, "version": 2, "tensors": _metas(tensors, tensors)})
    case = reference_cases(real)[0]
    assert engine.client.greedy_ids(case["prompt_ids"], len(case["greedy_ids"])) == case["greedy_ids"]


def test_unkept_segment_served_zero_copy_is_in_use(serve, random_like):
    engine = serve(random_like("stories260K"))
    cfg = json.loads((shared_model("stories260K") / "config.json").read_text())
    name = "model.layers.0.mlp.down_proj.weight"
    rng = np.random.default_rng(0)
    segs = []

    def push(version: int) -> dict:
        values = rng.standard_normal((cfg["hidden_size"], cfg["intermediate_size"])).astype(np.float32)
        seg = shared_memory.SharedMemory(create=True, size=values.nbytes)
        segs.append(seg)
        seg.buf[:values.nbytes] = values.tobytes()
        tensors = [{"name": name, "dtype": "F32", "shape": list(values.shape), "nbytes": values.nbytes,
                    "checksum": checksum64(values), "offset": 0}]
        return engine.client.ok("update_weights", {"version": version, "path": "ipc", "shm_name": "/" + seg.name,
                                                   "shm_bytes": values.nbytes, "tensors": tensors})

    try:
        reply = push(1)
        assert reply["zero_copy_tensors"] == 1
        first = "/" + segs[0].name
        assert reply["shm_in_use"] == [first]  # not kept, but served from in place: listed
        assert engine.client.ok("get_weight_version")["shm_in_use"] == [first]
        reply = push(2)  # the tensor now comes from the second segment: the first is free again
        assert reply["shm_in_use"] == ["/" + segs[1].name]
    finally:
        for seg in segs:
            seg.close()
            seg.unlink()


def test_publish_error_is_a_zrollout_error_of_its_code():
    e = PublishError("checksum_mismatch", "engine tcp://h:1: tensor model.norm.weight: checksum 1 != 2")
    assert isinstance(e, errors.ZrolloutError) and isinstance(e, errors.ChecksumMismatch)
    assert isinstance(e, PublishError) and isinstance(e, RuntimeError)
    assert e.code == "checksum_mismatch" and e.tensor == "model.norm.weight" and e.field == "model.norm.weight"
    assert e.engine == "tcp://h:1" and str(e).startswith("checksum_mismatch: ")
    assert isinstance(PublishError("some_new_code", "x"), errors.ZrolloutError)
