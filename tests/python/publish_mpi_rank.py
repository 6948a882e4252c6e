"""The trainer rank of tests/python/test_publish_mpi.py, started by it as

    mpirun -np 1 python3 publish_mpi_rank.py REAL_MODEL DTYPE : -np K zrollout serve --model RANDOM ...

Publishes REAL_MODEL's weights by broadcast (as a torch state_dict when torch is present and
DTYPE is bf16, else numpy arrays), checks every engine's greedy outputs against REAL_MODEL's
reference.json, stops the engines, and prints one JSON line {"ok": ..., ...}. Exit code 0 only when
everything matched.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import WireClient, numpy_state_dict, reference_cases, torch_state_dict  # noqa: E402

from zrollout.weights import Publisher, PublishError  # noqa: E402


def main() -> int:
    real, kind = Path(sys.argv[1]), sys.argv[2]
    pub = Publisher.from_mpi(timeout_s=120)
    report = {"endpoints": pub.endpoints, "mpi": pub.mpi}
    try:
        from mpi4py import MPI  # optional: imported after zrollout initialized MPI, it must not initialize it again

        report["mpi4py_world_size"] = MPI.COMM_WORLD.Get_size()
    except ImportError:
        pass
    sd = torch_state_dict(real) if kind == "torch" else numpy_state_dict(real)
    clients = [WireClient(e) for e in pub.endpoints]
    cases = reference_cases(real)
    before = [[c.greedy_ids(x["prompt_ids"], len(x["greedy_ids"])) for x in cases] for c in clients]
    res = pub.publish(sd, 7, bucket_mib=1)  # path broadcast by default under mpirun; several buckets
    after = [[c.greedy_ids(x["prompt_ids"], len(x["greedy_ids"])) for x in cases] for c in clients]
    expected = [x["greedy_ids"] for x in cases]
    try:  # a refused broadcast (bad shape) leaves the new version serving, naming the tensor
        pub.publish(dict(sd, **{"model.norm.weight": sd["model.norm.weight"][:8]}), 8)
        refused = None
    except PublishError as e:
        refused = {"code": e.code, "tensor": e.tensor}
    still = [[c.greedy_ids(x["prompt_ids"], len(x["greedy_ids"])) for x in cases] for c in clients]
    report.update(acked=res.acked, version=res.version, bytes=res.bytes, seconds=res.seconds,
                  changed=[b != expected for b in before], matched=[a == expected for a in after],
                  refused=refused, unchanged_after_refusal=(still == after),
                  versions=[pub.weight_version(k) for k in range(len(clients))])
    for c in clients:
        c.close()
    pub.shutdown_engines()
    pub.close()
    report["ok"] = (all(report["matched"]) and all(report["changed"]) and report["unchanged_after_refusal"]
                    and refused is not None and refused["tensor"] == "model.norm.weight"
                    and report["versions"] == [7] * len(clients))
    print("RESULT " + json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
