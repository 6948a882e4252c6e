"""The trainer rank of `mpirun -np 1 python3 engine_mpi_rank.py MODEL : -np K zrollout serve ...`
(test_engine_mpi.py), written as an SGLang RL script drives weight updates from distributed
tensors: Engine(endpoint="mpi") attaches to the job's engines, init_weights_update_group and
update_weights_from_distributed broadcast MODEL's weights over MPI, then greedy outputs must equal
MODEL's reference. Prints one line "RESULT {json}"; stops the engines before it exits."""

import json
import struct
import sys
import traceback

import numpy as np

import zrollout


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return {k: np.frombuffer(data[8 + n + m["data_offsets"][0]:8 + n + m["data_offsets"][1]], np.float32)
            .reshape(m["shape"]).copy() for k, m in header.items() if k != "__metadata__"}


def main(model):
    report = {"ok": False}
    llm = None
    try:
        llm = zrollout.Engine(endpoint="mpi")
        report["endpoints"] = list(llm._publisher.endpoints)
        report["version_before"] = llm.get_weight_version()
        ok, msg = llm.init_weights_update_group("127.0.0.1", 0, 1, 2, "actor_to_rollout", backend="nccl")
        assert ok, msg
        state = read_safetensors(f"{model}/model.safetensors")
        names = list(state)
        ok, msg = llm.update_weights_from_distributed(names, ["float32"] * len(names), [list(state[n].shape) for n in names],
                                                      group_name="actor_to_rollout", tensors=[state[n] for n in names])
        assert ok, msg
        report["message"] = msg
        report["version_after"] = llm.get_weight_version()
        cases = [c for c in json.load(open(f"{model}/reference.json"))["cases"] if c["kind"] == "greedy"]
        outs = llm.generate(input_ids=[c["prompt_ids"] for c in cases],
                            sampling_params={"temperature": 0, "max_new_tokens": 16})
        report["greedy_equal"] = [o["output_ids"] == c["greedy_ids"][:16] for o, c in zip(outs, cases)]
        report["ok"] = all(report["greedy_equal"]) and report["version_after"] > report["version_before"]
    except Exception:
        report["error"] = traceback.format_exc()
    finally:
        if llm is not None:
            try:
                llm._publisher.shutdown_engines()
            except Exception:
                report.setdefault("shutdown_error", traceback.format_exc())
            llm.shutdown()
    print("RESULT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
