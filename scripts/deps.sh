#!/usr/bin/env bash
# Installs the Debian packages zrollout builds against, if any is missing. Quiet and quick when
# everything is present; apt-get update runs at most once, and only when something is missing.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  libzmq3-dev cppzmq-dev libmsgpack-cxx-dev
  libopenblas-dev libopenmpi-dev openmpi-bin
  libspdlog-dev libsentencepiece-dev libpcre2-dev libutf8proc-dev nlohmann-json3-dev libcli11-dev
  libgtest-dev libbenchmark-dev
  pybind11-dev python3-dev python3-numpy python3-zmq python3-msgpack python3-pytest
  python3-torch python3-mpi4py python3-matplotlib
  iproute2 util-linux
  clang libclang-rt-dev  # scripts/test.sh --fuzz: libFuzzer and the sanitizers for clang
  clang-format
)

installed() {
  dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed$'
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "deps.sh: missing packages (${missing[*]}) and no apt-get; install them by hand" >&2
  exit 1
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "deps.sh: missing packages (${missing[*]}); run as root or install sudo" >&2
    exit 1
  fi
fi

echo "deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
