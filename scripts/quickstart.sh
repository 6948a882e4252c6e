#!/usr/bin/env bash
# Builds zrollout, makes `import zrollout` work for Debian's /usr/bin/python3 (a .pth naming this
# checkout's python/, see scripts/python_setup.sh) and runs the main job: GRPO on the shipped
# stories260K (examples/grpo/train.py: 30 steps, 2 rollout engines, a PyTorch trainer publishing
# every step's weights by ipc), then prints where the metrics and the plot are.
# ZR_QUICKSTART_STEPS overrides the step count. The no-Python mode, `zrollout local` (rollout
# actors + a driver in one process), runs after it on the same model.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${ZR_BUILD_DIR:-$ROOT/build}"
ZROLLOUT="$BUILD_DIR/launch/zrollout"
MODEL="$ROOT/models/stories260K"
PROMPTS="$ROOT/examples/prompts.jsonl"
OUT="$BUILD_DIR/quickstart_out.jsonl"

"$ROOT/scripts/build.sh"
"$ROOT/scripts/python_setup.sh"

echo "== the main job: GRPO on stories260K (examples/grpo/train.py, 2 engines, ipc publish every step)"
/usr/bin/python3 "$ROOT/examples/grpo/train.py" --model "$MODEL" --engines 2 --steps "${ZR_QUICKSTART_STEPS:-30}" \
  --metrics "$BUILD_DIR/grpo/metrics.jsonl" --plot "$BUILD_DIR/grpo/grpo.png"
echo "GRPO plot: $BUILD_DIR/grpo/grpo.png (metrics: $BUILD_DIR/grpo/metrics.jsonl)"

echo "== the no-Python mode: zrollout local (2 rollout actors + a driver over inproc, n=4 samples per prompt, 2 rollout steps with a weight push between)"
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
