#!/usr/bin/env bash
# Builds zrollout, makes `import zrollout` work for Debian's /usr/bin/python3 (a .pth naming this
# checkout's python/, see scripts/python_setup.sh), makes the built-in tiny random model (once) and
# runs the main job: rollouts over examples/prompts.jsonl with `zrollout local`, then prints the
# summary table and one sample.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${ZR_BUILD_DIR:-$ROOT/build}"
ZROLLOUT="$BUILD_DIR/launch/zrollout"
MODEL="$BUILD_DIR/models/tiny"
PROMPTS="$ROOT/examples/prompts.jsonl"
OUT="$BUILD_DIR/quickstart_out.jsonl"

"$ROOT/scripts/build.sh"
"$ROOT/scripts/python_setup.sh"

if [[ ! -f "$MODEL/config.json" ]]; then
  echo "== making the tiny random model in $MODEL"
  "$ZROLLOUT" make-model --preset tiny --out "$MODEL"
fi

echo "== the main job: zrollout local (2 rollout actors + a driver over inproc, n=4 samples per prompt, 2 rollout steps with a weight push between)"
"$ZROLLOUT" local --model "$MODEL" --engines 2 --n 4 --max-new-tokens 48 --steps 2 --prompts "$PROMPTS" --output "$OUT"

# First sample, without jq/python: the "text" of the first line (JSON string, unescaped only for
# \" and \\ and \n; good enough for a glance).
first=$(head -n 1 "$OUT")
text="(no \"text\" field in the first line)"
rest="${first#*\"text\":}"
re='^[[:space:]]*"(([^"\\]|\\.)*)"'
if [[ "$rest" != "$first" && "$rest" =~ $re ]]; then
  text="${BASH_REMATCH[1]}"
  text="${text//\\n/ }"
  text="${text//\\\"/\"}"
  text="${text//\\\\/\\}"
fi
echo "first sample text: $text"
echo "(a random-weight model: the text is noise; point --model at a real checkpoint for stories)"
