"""zrollout.weights: weights published from tensors in memory (ipc and disk) make an engine started
on random weights answer stories260K's reference cases exactly; refused publishes change nothing
and name the tensor; checksum64 follows the algorithm docs/protocol.md states."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import numpy_state_dict, reference_cases, shared_model, torch_state_dict

from zrollout import _native
from zrollout.weights import Publisher, PublishError, checksum64, publish


def greedy_matches(client, model) -> bool:
    cases = reference_cases(model)
    return all(client.greedy_ids(c["prompt_ids"], len(c["greedy_ids"])) == c["greedy_ids"] for c in cases)


def outputs(client, model) -> list:
    return [client.greedy_ids(c["prompt_ids"], len(c["greedy_ids"])) for c in reference_cases(model)]


def checksum64_from_the_doc(data: bytes) -> int:
    """docs/protocol.md's checksum64, computed from its text with numpy (not with the C++ code)."""
    P1, P2, P3 = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
    F1, F2 = 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53
    mask = 2**64 - 1
    n = len(data)
    w = np.frombuffer(data + b"\0" * (-n % 8), "<u8")
    i = np.arange(1, w.size + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (w ^ (i * np.uint64(P1))) * np.uint64(P2)
        x ^= x >> np.uint64(32)
        x *= np.uint64(P3)
        x ^= x >> np.uint64(29)
        s = int(x.sum(dtype=np.uint64))
    h = s ^ (((n + 1) * P3) & mask)
    h ^= h >> 33
    h = (h * F1) & mask
    h ^= h >> 33
    h = (h * F2) & mask
    return h ^ (h >> 33)


def test_checksum64_is_the_documented_algorithm():
    rng = np.random.default_rng(1)
    for n in (0, 1, 3, 8, 9, 63, 64, 4097, 1 << 20):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert _native.checksum64(data) == checksum64_from_the_doc(data), n
    a = rng.standard_normal((33, 17)).astype(np.float32)
    assert checksum64(a) == checksum64_from_the_doc(a.tobytes())
    assert checksum64(a.T) == checksum64_from_the_doc(np.ascontiguousarray(a.T).tobytes())  # non-contiguous
    with pytest.raises(_native.Error):
        _native.checksum64_ptr(0, 8)


def test_ipc_from_torch_f32_state_dict_matches_the_reference(serve, random_like):
    real = shared_model("stories260K")
    engine = serve(random_like("stories260K"))
    sd = torch_state_dict(real)
    assert not greedy_matches(engine.client, real)  # random weights: not the reference
    with Publisher([engine.endpoint]) as pub:
        res = pub.publish(sd, 1, path="ipc")
        assert res.acked == [0] and res.dead == [] and res.version == 1
        assert res.acks[0]["zero_copy_tensors"] > 0  # f32 matrices served in place from the segment
        assert greedy_matches(engine.client, real)
        # The checksums sent are those of the tensors, and those the engine serves (f32, unconverted).
        assert res.checksums == pub.checksums(sd)
        served = engine.client.ok("get_weights_checksum", {"names": ["model.norm.weight"]})["tensors"]
        assert served[0]["checksum"] == res.checksums["model.norm.weight"] == checksum64(sd["model.norm.weight"])
        assert pub.weight_version() == 1


def test_ipc_from_torch_bf16_state_dict_matches_the_reference(serve, random_like):
    real = shared_model("stories260K-bf16")
    engine = serve(random_like("stories260K"))
    sd = torch_state_dict(real)
    assert str(next(iter(sd.values())).dtype) == "torch.bfloat16"
    res = publish(sd, 3, endpoints=[engine.endpoint], path="ipc", in_flight="abort", flush_cache=True)
    assert res.acked == [0]
    assert greedy_matches(engine.client, real)  # bf16 bytes converted once into the f32 engine


def test_ipc_pool_is_reused_between_publishes(serve, random_like, monkeypatch):
    monkeypatch.setenv("ZR_IPC_MODE", "segment")  # segments, whatever this host's automatic choice
    real = shared_model("stories260K")
    engine = serve(random_like("stories260K"))
    sd = torch_state_dict(real)
    other = torch_state_dict(random_like("stories260K", seed=9))
    with Publisher([engine.endpoint]) as pub:
        first = pub.publish(sd, 1)
        second = pub.publish(other, 2)  # the engine serves from the first segment: a second one
        third = pub.publish(sd, 3)      # the first one is free again: rewritten in place
        assert not first.shm_reused and not second.shm_reused
        assert third.shm_reused and third.shm_segment == first.shm_segment
        assert pub.held_segments() == 2
        assert greedy_matches(engine.client, real)


def test_non_contiguous_tensors_and_a_name_map(serve, random_like):
    torch = pytest.importorskip("torch")
    real = shared_model("stories260K")
    engine = serve(random_like("stories260K"))
    sd = {}
    for name, t in torch_state_dict(real).items():
        if t.dim() == 2:
            t = t.t().contiguous().t()  # same values, column-major: not contiguous
            assert not t.is_contiguous()
        sd["policy." + name] = t
    sd["policy.value_head.weight"] = torch.zeros(3, 4)  # not a weight of the engine: dropped by the map
    name_map = lambda n: None if n.startswith("policy.value_head") else n.removeprefix("policy.")
    res = publish(list(sd.items()), 2, endpoints=[engine.endpoint], name_map=name_map)
    assert "model.norm.weight" in res.checksums and not any(k.startswith("policy.") for k in res.checksums)
    assert greedy_matches(engine.client, real)


def test_disk_from_numpy_arrays_matches_the_reference(serve, random_like, tmp_path):
    real = shared_model("stories260K")
    engine = serve(random_like("stories260K"))
    folder = tmp_path / "published"
    with Publisher([engine.endpoint]) as pub:
        res = pub.publish(numpy_state_dict(real), 4, path="disk", disk_dir=str(folder))
        assert res.acked == [0]
        # model.safetensors written from the arrays, config.json taken from the engine's model folder
        assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
        assert greedy_matches(engine.client, real)
        # Without disk_dir: a temporary folder, removed afterwards.
        other = numpy_state_dict(random_like("stories260K", seed=9))
        pub.publish(other, 5, path="disk")
        assert not greedy_matches(engine.client, real)
        assert pub.weight_version() == 5


@pytest.mark.parametrize("path", ["ipc", "disk"])
def test_refused_publishes_change_nothing_and_name_the_tensor(serve, random_like, path):
    real = shared_model("stories260K")
    engine = serve(random_like("stories260K"))
    with Publisher([engine.endpoint]) as pub:
        pub.publish(numpy_state_dict(real), 1, path=path)
        before = outputs(engine.client, real)
        assert before == [c["greedy_ids"] for c in reference_cases(real)]

        # Each refused update carries other weights: had any tensor been applied, outputs would move.
        other = numpy_state_dict(random_like("stories260K", seed=9))

        bad_shape = dict(other, **{"model.norm.weight": np.ones(65, np.float32)})
        with pytest.raises(PublishError) as e:
            pub.publish(bad_shape, 2, path=path)
        assert e.value.code == "weight_mismatch" and e.value.tensor == "model.norm.weight", e.value

        wrong_name = dict(other, **{"model.layers.0.mlp.bogus.weight": np.ones(4, np.float32)})
        with pytest.raises(PublishError) as e:
            pub.publish(wrong_name, 2, path=path)
        assert e.value.code == "weight_mismatch" and e.value.tensor == "model.layers.0.mlp.bogus.weight", e.value

        not_float = dict(other, **{"model.norm.weight": np.ones(64, np.int32)})
        with pytest.raises(PublishError) as e:
            pub.publish(not_float, 2, path=path)
        assert e.value.code == "invalid_argument" and e.value.tensor == "model.norm.weight", e.value

        with pytest.raises(PublishError) as e:
            pub.publish(other, 1, path=path)  # not newer than the serving version
        assert "version" in e.value.message

        if path == "ipc":  # the engine verifies the bytes against the caller's checksum
            name = "model.layers.2.self_attn.q_proj.weight"
            with pytest.raises(PublishError) as e:
                pub.publish(other, 2, path=path, expected_checksums={name: checksum64(other[name]) ^ 1})
            assert e.value.code == "checksum_mismatch" and e.value.tensor == name, e.value

        assert outputs(engine.client, real) == before
        assert pub.weight_version() == 1
        pub.publish(other, 2, path=path)  # and the engine still takes a good one
        assert outputs(engine.client, real) != before


def test_unreachable_or_bad_arguments_raise_publish_errors():
    with pytest.raises(PublishError) as e:
        Publisher([])
    assert e.value.code == "invalid_argument"
    with Publisher(["tcp://127.0.0.1:9"], timeout_s=1.0) as pub:  # nobody there: the publish times out
        with pytest.raises(PublishError) as e:
            pub.publish({"model.norm.weight": np.ones(64, np.float32)}, 1, path="ipc")
        assert e.value.code in ("timeout", "unavailable"), e.value
        with pytest.raises(PublishError) as e:
            pub.publish({"model.norm.weight": np.ones(64, np.float32)}, 1, path="nfs")
        assert e.value.code == "invalid_argument"
