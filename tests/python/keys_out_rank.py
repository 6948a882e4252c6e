"""The trainer rank of `mpirun -np 1 python3 keys_out_rank.py DIR : ... zrollout serve ...`
(test_client_keys_out.py): joins the job with Publisher.from_mpi(keys_out=DIR), which writes the
job's client keys into DIR, then waits (at most 120 s) for DIR/done and stops the engines."""

import sys
import time
from pathlib import Path

from zrollout.weights import Publisher


def main(out: str) -> int:
    with Publisher.from_mpi(keys_out=out) as pub:
        done = Path(out) / "done"
        deadline = time.monotonic() + 120
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pub.shutdown_engines()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
