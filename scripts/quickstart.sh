#!/usr/bin/env bash
# Builds zrollout, makes the built-in tiny random model (once) and generates completions for the
# prompts in examples/prompts.jsonl, then prints a short summary.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${ZR_BUILD_DIR:-$ROOT/build}"
ZROLLOUT="$BUILD_DIR/launch/zrollout"
MODEL="$BUILD_DIR/models/tiny"
PROMPTS="$ROOT/examples/prompts.jsonl"
OUT="$BUILD_DIR/quickstart_out.jsonl"

"$ROOT/scripts/build.sh"

if [[ ! -f "$MODEL/config.json" ]]; then
  echo "== making the tiny random model in $MODEL"
  "$ZROLLOUT" make-model --preset tiny --out "$MODEL"
fi

echo "== generating from $PROMPTS"
"$ZROLLOUT" generate --model "$MODEL" --input "$PROMPTS" --output "$OUT"

# Summary without jq/python: line count and the "text" of the first line (JSON string, unescaped
# only for \" and \\ and \n; good enough for a glance).
lines=$(wc -l <"$OUT" | tr -d ' ')
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
echo "== done: $lines lines written to $OUT"
echo "first sample text: $text"
