#!/usr/bin/env bash
# Formats C++ sources with the tree's .clang-format (clang-format 14, Debian's clang-format).
#   scripts/format.sh            every tracked *.h / *.cpp (the one-off pass over the whole tree)
#   scripts/format.sh FILE...    those files only
#   scripts/format.sh --check    lists the files that are not formatted; exit 1 if any
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
command -v clang-format >/dev/null || { echo "format.sh: clang-format missing (scripts/deps.sh installs it)" >&2; exit 1; }

check=0
if [[ "${1:-}" == "--check" ]]; then
  check=1
  shift
fi
if [[ $# -gt 0 ]]; then
  files=("$@")
else
  mapfile -t files < <(git ls-files '*.h' '*.cpp')
fi

if [[ $check -eq 1 ]]; then
  bad=0
  for f in "${files[@]}"; do
    if ! clang-format --style=file "$f" | cmp -s - "$f"; then
      echo "$f"
      bad=1
    fi
  done
  exit "$bad"
fi
printf '%s\0' "${files[@]}" | xargs -0 clang-format --style=file -i
