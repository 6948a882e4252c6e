#!/usr/bin/env bash
# Builds, then runs the tests with ctest. Extra arguments go to ctest, e.g.
#   scripts/test.sh -L unit          # one label (unit, model, mpi, slow)
#   scripts/test.sh -R Safetensors   # tests whose name matches
# Exit code is ctest's. Tests without their own TIMEOUT get $ZR_TEST_TIMEOUT seconds (default 300).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${ZR_BUILD_DIR:-$ROOT/build}"

# --sanitize: build the tests with ASan+UBSan (build-asan/) and with TSan (build-tsan/), and run
# every test but the mpi, multihost, python and slow labels there: MPI (and the mpirun jobs of the
# cluster and two-host tests) is not instrumented, the Python extension is not built under a
# sanitizer (it could not be loaded by a plain python3), and slow/soak runs are benchmarks of a
# release build. Only the binaries those tests need are built (target sanitizer_tests: the gtest
# binaries but the mpi ones, and the zrollout the cli tests start). --sanitize=address or
# --sanitize=thread: that one only. Any other arguments go to ctest as usual (e.g. -j2, -L unit).
if [[ "${1:-}" == --sanitize || "${1:-}" == --sanitize=* ]]; then
  kinds="address thread"
  [[ "$1" == --sanitize=* ]] && kinds="${1#--sanitize=}"
  shift
  rc=0
  for kind in $kinds; do
    if [[ "$kind" != address && "$kind" != thread ]]; then
      echo "test.sh: --sanitize=$kind: address or thread" >&2
      exit 2
    fi
    dir="$ROOT/build-${kind/address/asan}"
    dir="${dir/thread/tsan}"
    echo "== sanitizer build: $kind in $dir" >&2
    "$ROOT/scripts/deps.sh"
    cmake -S "$ROOT" -B "$dir" -DZR_SANITIZE="$kind" -DZR_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$dir" -j"$(nproc)" --target sanitizer_tests
    # TSan: OpenBLAS, OpenMPI, libzmq and libsodium are not instrumented; scripts/tsan.supp keeps
    # their internals out. history_size=7: the largest, so a message written inside libzmq keeps the
    # libzmq frame in its stack and the suppression matches (at the default, test_client reported
    # inproc hand-overs with "failed to restore the stack").
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
      TSAN_OPTIONS="halt_on_error=1 history_size=7 second_deadlock_stack=1 suppressions=$ROOT/scripts/tsan.supp" \
      ctest --test-dir "$dir" --output-on-failure --timeout "${ZR_TEST_TIMEOUT:-600}" -LE "mpi|multihost|python|slow" "$@" || rc=1
  done
  exit "$rc"
fi

# --fuzz SECONDS: build the libFuzzer targets of tests/fuzz with clang (build-fuzz/) and run each
# for SECONDS on a copy of its seed corpus (tests/fuzz/corpus/<target>; new inputs stay in the
# copy, crashes are written to build-fuzz/fuzz-artifacts/). Exit code 1 if any target failed.
if [[ "${1:-}" == "--fuzz" ]]; then
  seconds="${2:?--fuzz needs SECONDS}"
  dir="$ROOT/build-fuzz"
  "$ROOT/scripts/deps.sh"
  CC=clang CXX=clang++ cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DZR_BUILD_FUZZ=ON \
    -DZR_BUILD_TESTS=OFF -DZR_BUILD_BENCH=OFF -DZR_BUILD_PYTHON=OFF >/dev/null
  targets=(fuzz_msgpack_body fuzz_jsonl_request fuzz_safetensors_header)
  cmake --build "$dir" -j"$(nproc)" --target "${targets[@]}"
  mkdir -p "$dir/fuzz-artifacts"
  rc=0
  for t in "${targets[@]}"; do
    corpus="$dir/fuzz-corpus/${t#fuzz_}"
    mkdir -p "$corpus"
    cp -n "$ROOT/tests/fuzz/corpus/${t#fuzz_}"/* "$corpus"/
    echo "== $t for ${seconds}s" >&2
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
      "$dir/tests/fuzz/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$dir/fuzz-artifacts/$t-" "$corpus" || rc=1
  done
  exit "$rc"
fi

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
