#!/usr/bin/env bash
# Builds, then runs the tests with ctest. Extra arguments go to ctest, e.g.
#   scripts/test.sh -L unit          # one label (unit, model, mpi, slow)
#   scripts/test.sh -R Safetensors   # tests whose name matches
# Exit code is ctest's. Tests without their own TIMEOUT get $ZR_TEST_TIMEOUT seconds (default 300).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${ZR_BUILD_DIR:-$ROOT/build}"

"$ROOT/scripts/build.sh"

# mpirun refuses to start as root unless told it may (CI containers run as root).
if [[ $(id -u) -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT="${OMPI_ALLOW_RUN_AS_ROOT:-1}"
  export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}"
fi

set +e
ctest --test-dir "$BUILD_DIR" --output-on-failure --timeout "${ZR_TEST_TIMEOUT:-300}" "$@"
rc=$?
set -e
exit "$rc"
