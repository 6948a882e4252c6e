#!/usr/bin/env bash
# The standard benchmark suite: every bench writes its rows with --json into one folder, then one
# table of ratios (value / the limit it is held against, measured in the same run) is printed.
# About five minutes for everything on the 2-core dev host (plus making the models on first use);
# run it alone (`cpu bench`), in parts if one call must stay short:
#   scripts/bench.sh                          # all parts, rows into bench-results/<date>-<commit>/
#   scripts/bench.sh --out DIR engine service # only these parts (rows added to DIR)
#   scripts/bench.sh --table DIR              # print the table of the rows in DIR, run nothing
# Parts: engine service rollout prefix weights tp tokenizer python. Models: random checkpoints made
# by `zrollout make-model` into bench_models/ on first use (stories15M, stories110M, tiny); the
# tokenizer part reads ../shared/models (skipped when absent), the python part needs /usr/bin/python3
# with numpy, zmq and msgpack (skipped otherwise). OPENBLAS_CORETYPE is passed through and printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${ZR_BUILD_DIR:-$ROOT/build}"
B="$BUILD/bench"
ALL_PARTS=(engine service rollout prefix weights tp tokenizer python)
OUT=""
TABLE_ONLY=0
parts=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --table) OUT="$2"; TABLE_ONLY=1; shift 2 ;;
    -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) parts+=("$1"); shift ;;
  esac
done
[[ ${#parts[@]} -eq 0 ]] && parts=("${ALL_PARTS[@]}")
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
OUT="${OUT:-$ROOT/bench-results/$(date -u +%Y%m%d-%H%M)-$COMMIT}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
MPIRUN=(mpirun --oversubscribe --bind-to none --mca btl self,vader)
[[ $(id -u) -eq 0 ]] && MPIRUN+=(--allow-run-as-root)

# The models, made once (bench_models/ is not shipped).
model() {
  local dir="$ROOT/bench_models/$1"
  [[ -f "$dir/config.json" ]] || "$BUILD/launch/zrollout" make-model --preset "$1" --out "$dir" >&2
  echo "$dir"
}

# run NAME CMD...: runs one bench, its output in OUT/NAME.log; a failure is reported, not fatal.
run() {
  local name="$1"; shift
  local t0=$SECONDS
  echo "== $name: $*" >&2
  if (cd "$ROOT" && "$@") >"$OUT/$name.log" 2>&1; then
    echo "   done in $((SECONDS - t0)) s" >&2
  else
    echo "   FAILED (exit $?, $((SECONDS - t0)) s): see $OUT/$name.log" >&2
  fi
}

part_engine() {
  run engine "$B/bench_engine" --model "$(model stories110M)" --batches 1,8,64 --prompt 128 --gen 64 \
    --prefill-prompts 8 --skip-parity --json "$OUT/engine.json"
}
part_service() {
  run service "$B/bench_service" --model "$(model stories15M)" --json "$OUT/service.json"
}
part_rollout() {
  run rollout "$B/bench_rollout" --model "$(model tiny)" --zrollout "$BUILD/launch/zrollout" --json "$OUT/rollout.json"
}
part_prefix() {
  run prefix "$B/bench_prefix" --model "$(model stories110M)" --json "$OUT/prefix.json"
}
part_weights() {
  run weight_update "$B/bench_weight_update" --model "$(model stories110M)" --json "$OUT/weight_update.json"
  run weight_sync "${MPIRUN[@]}" -np 2 "$B/bench_weight_sync" --mib 418 --repeats 5 --json "$OUT/weight_sync.json"
}
part_tp() {
  run tp "${MPIRUN[@]}" -np 2 "$B/bench_tp" --model "$(model stories110M)" --batches 1,64 --prompt 64 --gen 32 \
    --json "$OUT/tp.json"
}
part_tokenizer() {
  if [[ -d "$ROOT/../shared/models/tokenizers" ]]; then
    run tokenizer "$B/bench_tokenizer" --models "$ROOT/../shared/models" --mb 1 --json "$OUT/tokenizer.json"
  else
    echo "== tokenizer: skipped (no ../shared/models/tokenizers)" >&2
  fi
}
part_python() {
  if /usr/bin/python3 -c "import numpy, zmq, msgpack" 2>/dev/null; then
    run python_client /usr/bin/python3 "$ROOT/bench/bench_python_client.py" --build "$BUILD" \
      --model "$(model stories15M)" --alternations 3 --samples 100 --json "$OUT/python_client.json"
  else
    echo "== python: skipped (/usr/bin/python3 lacks numpy, zmq or msgpack)" >&2
  fi
}

if [[ $TABLE_ONLY -eq 0 ]]; then
  echo "bench.sh: commit $COMMIT, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)}, rows into $OUT" >&2
  for p in "${parts[@]}"; do
    declare -F "part_$p" >/dev/null || { echo "bench.sh: unknown part '$p' (${ALL_PARTS[*]})" >&2; exit 2; }
    "part_$p"
  done
  echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)}" >"$OUT/env.txt"
fi

# One table over every *.json in OUT. Targets: the issues' (ratio >= or <= the number).
/usr/bin/python3 - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
targets = {  # name prefix -> (comparison, target ratio)
    "decode_b1": (">=", 0.90), "decode_b8": (">=", 0.80), "decode_b64": (">=", 0.75),
    "service_overhead_1tok": ("<=", 2.0), "service_tok_s": (">=", 0.90),
    "rollout_local_tok_s": (">=", 0.90), "rollout_tcp_tok_s": (">=", 0.90),
    "weight_update_publish_ms": ("<=", 1.3), "weight_update_engine_ms": ("<=", 1.3),
    "weight_update_pause_ms": ("<=", 1.0), "weight_sync_bcast": (">=", 0.90),
    "python_client_rt_1tok_us": ("<=", 1.5), "python_client_tok_s": (">=", 0.90),
    "python_publish_reused_ms": ("<=", 1.3), "python_bcast_publish": (">=", 0.85),
}
rows = []
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    try:
        rows += [(os.path.basename(f)[:-5], r) for r in json.load(open(f))]
    except (ValueError, OSError) as e:
        print(f"{f}: {e}", file=sys.stderr)
env = open(os.path.join(out, "env.txt")).read().strip() if os.path.exists(os.path.join(out, "env.txt")) else ""
commits = sorted({r["commit"] for _, r in rows})
print(f"\nbench.sh results in {out} (commit {', '.join(commits) or '?'}; {env})")
print(f"| bench | row | value | bound (same run) | ratio | target |")
print(f"|---|---|---|---|---|---|")
for bench, r in rows:
    t = next((v for k, v in targets.items() if r["name"].startswith(k)), None)
    ratio = f"{r['ratio']:.2f}" if r["bound"] > 0 else ""
    mark = ""
    if t and r["bound"] > 0:
        ok = r["ratio"] >= t[1] if t[0] == ">=" else r["ratio"] <= t[1]
        mark = f"{t[0]} {t[1]:g} {'ok' if ok else 'MISSED'}"
    print(f"| {bench} | {r['name']} | {r['value']:.4g} {r['unit']} | "
          f"{'%.4g %s' % (r['bound'], r['unit']) if r['bound'] > 0 else ''} | {ratio} | {mark} |")
EOF
