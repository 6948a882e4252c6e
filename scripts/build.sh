#!/usr/bin/env bash
# Installs missing dependencies, configures a Release build in build/ (or $ZR_BUILD_DIR) and builds
# it with one job per core. Safe to run again: it only rebuilds what changed.
# Extra CMake cache options can be passed in $ZR_CMAKE_ARGS (e.g. "-DZR_BUILD_BENCH=OFF").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${ZR_BUILD_DIR:-$ROOT/build}"

"$ROOT/scripts/deps.sh"

# shellcheck disable=SC2086  # ZR_CMAKE_ARGS is a list of words on purpose
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release ${ZR_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
