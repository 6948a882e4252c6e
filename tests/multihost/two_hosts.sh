#!/usr/bin/env bash
# Two hosts on one machine (issue 18, item 4): network namespaces joined by a veth pair, each
# process tree with its own hostname (unshare --uts), so Open MPI treats them as two nodes (TCP
# between them, shared memory within). mpirun runs on host A and reaches host B through
# rsh_agent.sh (--mca plm_rsh_agent).
#
#   two_hosts.sh ZROLLOUT_BIN BENCH_SURVIVORS_BIN SOURCE_DIR
#
# The job: the trainer (bench_survivors) on A; engine 0 of TP=2 with rank 0 on A and rank 1 on B;
# engine 1 of TP=2 on B; engine 2 of TP=2 on A. The engines start on random weights; the trainer
# publishes the real stories260K by disk, then by broadcast, and runs greedy requests: their
# tokens and logprobs must equal those of the same job on one host, bit for bit. Then the link is
# cut (ip link set ... down): engines 0 and 1 are lost, the router re-routes their requests to
# engine 2, and the next broadcast publish goes over the survivors (trainer + engine 2).
#
# Exit codes: 0 pass, 1 fail, 77 skipped (not root, no `ip netns`, no model). It makes its own
# namespaces, veth pair and addresses (10.213.7.1 and .2 on the pair only), bounds every wait, and
# removes everything it made on any exit.
set -uo pipefail

ZROLLOUT="$1"
TRAINER="$2"
SOURCE_DIR="$3"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SUBNET_PREFIX="10.213.7"
JOB_TIMEOUT=420  # seconds for one mpirun job, then it is killed

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || skip "needs root (network namespaces)"
command -v ip >/dev/null || skip "no ip command (Debian package iproute2)"
command -v unshare >/dev/null || skip "no unshare (util-linux)"
MODELS="${ZROLLOUT_TEST_MODELS:-$SOURCE_DIR/../shared/models}"
MODEL="$MODELS/stories260K"
[[ -f "$MODEL/config.json" ]] || skip "shared model 'stories260K' not found: set ZROLLOUT_TEST_MODELS or place ../shared/models"

TAG="zr$$"                 # unique per run: namespaces, links
NS_A="${TAG}a" NS_B="${TAG}b"
HOST_A="${TAG}hosta" HOST_B="${TAG}hostb"
VETH_A="${TAG}va" VETH_B="${TAG}vb"
TMP="$(mktemp -d /tmp/zrollout-multihost.XXXXXX)"
MPIRUN_PID=""

cleanup() {
  set +e
  [[ -n "$MPIRUN_PID" ]] && kill -9 "$MPIRUN_PID" 2>/dev/null
  for ns in "$NS_A" "$NS_B"; do  # every process in our namespaces, and only those
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [[ -n "$pids" ]] && kill -9 $pids 2>/dev/null
  done
  sleep 0.2
  ip netns del "$NS_A" 2>/dev/null  # deleting a namespace deletes its end of the veth pair
  ip netns del "$NS_B" 2>/dev/null
  ip link del "$VETH_A" 2>/dev/null  # if it never left the root namespace
  if [[ "${KEEP:-0}" == 1 || "${PASSED:-0}" != 1 ]]; then echo "logs kept in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

ip netns add "$NS_A" 2>/dev/null || skip "cannot create a network namespace (ip netns add)"
ip netns add "$NS_B" || fail "ip netns add $NS_B"
ip link add "$VETH_A" type veth peer name "$VETH_B" || fail "cannot create a veth pair"
ip link set "$VETH_A" netns "$NS_A" && ip link set "$VETH_B" netns "$NS_B" || fail "moving the veth ends"
ip -n "$NS_A" addr add "$SUBNET_PREFIX.1/24" dev "$VETH_A" && ip -n "$NS_B" addr add "$SUBNET_PREFIX.2/24" dev "$VETH_B" ||
  fail "addresses"
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip -n "$NS_A" link set "$VETH_A" up && ip -n "$NS_B" link set "$VETH_B" up || fail "links up"
for i in $(seq 1 50); do  # bounded: both ends come up within 5 s
  ip -n "$NS_A" link show "$VETH_A" | grep -q 'state UP' && ip -n "$NS_B" link show "$VETH_B" | grep -q 'state UP' && break
  [[ $i -eq 50 ]] && fail "the veth pair does not come up"
  sleep 0.1
done

"$ZROLLOUT" make-model --like "$MODEL" --seed 7 --out "$TMP/random" >/dev/null || fail "make-model"
for i in 0 1 2 3; do
  echo "{\"rid\":\"g$i\",\"input_ids\":[1,403,407,$((261 + i))],\"sampling_params\":{\"max_new_tokens\":24,\"temperature\":0},\"return_logprob\":true}"
done >"$TMP/in.jsonl"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export "ZR_MH_NETNS_${HOST_A}=$NS_A" "ZR_MH_NETNS_${HOST_B}=$NS_B"

# run_job NAME HOST_OF_RANK1 HOST_OF_ENGINE1 HOST_OF_ENGINE2 FAULT: one mpirun, in the background
# on host A; waits (bounded) for the trainer's summary line, then ends whatever is left.
run_job() {
  local name="$1" on1="$2" on_e1="$3" on_e2="$4" fault="$5"
  local serve="$ZROLLOUT serve --model $TMP/random --tp 2 --bind tcp://0.0.0.0:* --threads 1"
  local mpi=(mpirun --oversubscribe --bind-to none --mca orte_enable_recovery 1 --display-map
    --mca plm_rsh_agent "$HERE/rsh_agent.sh" --mca btl self,vader,tcp
    --mca btl_tcp_if_include "$SUBNET_PREFIX.0/24" --mca oob_tcp_if_include "$SUBNET_PREFIX.0/24"
    -x PATH
    -np 1 --host "$HOST_A" "$TRAINER" --push "$MODEL" --disk "$TMP/$name-disk" --publishes 2
    --input "$TMP/in.jsonl" --output "$TMP/$name" --fault "$fault"
    : -np 2 --host "$HOST_A,$on1" $serve --kv-cache-mb 64
    : -np 2 --host "$on_e1:2" $serve --kv-cache-mb 65
    : -np 2 --host "$on_e2:2" $serve --kv-cache-mb 66)
  ip netns exec "$NS_A" unshare --uts sh -c "hostname $HOST_A && exec \"\$@\"" sh "${mpi[@]}" \
    >"$TMP/$name.out" 2>"$TMP/$name.log" &
  MPIRUN_PID=$!
  local waited=0
  until grep -q '"versions"' "$TMP/$name.out" 2>/dev/null; do
    kill -0 "$MPIRUN_PID" 2>/dev/null || break
    ((waited++ >= JOB_TIMEOUT)) && { echo "job $name: no summary within $JOB_TIMEOUT s"; break; }
    sleep 1
  done
  sleep 2  # the engines that still answer shut down
  for ns in "$NS_B" "$NS_A"; do  # what is left: cut off from the trainer, or waiting for mpirun
    pids=$(ip netns pids "$ns" | grep -vx "$$")
    [[ -n "$pids" ]] && kill -9 $pids 2>/dev/null
  done
  wait "$MPIRUN_PID" 2>/dev/null
  MPIRUN_PID=""
  grep -q '"versions"' "$TMP/$name.out" || { tail -50 "$TMP/$name.log"; fail "job $name did not finish"; }
}

# The same job on one host (every rank on A, no fault), then across the two hosts with the cut.
run_job one "$HOST_A" "$HOST_A" "$HOST_A" "true"
run_job two "$HOST_B" "$HOST_B" "$HOST_A" "ip -n $NS_A link set $VETH_A down"

/usr/bin/python3 - "$TMP" "$HOST_B" <<'PY' || { tail -80 "$TMP/two.log"; fail "see above"; }
import json, sys
tmp, host_b = sys.argv[1], sys.argv[2]
def lines(path):
    return [json.loads(l) for l in open(path) if l.strip().startswith("{")]
def by_rid(path):
    return {o["meta_info"]["id"]: o for o in lines(path)}
ok = True
def check(cond, what):
    global ok
    print(("ok   " if cond else "FAIL ") + what)
    ok = ok and cond
two = lines(f"{tmp}/two.out")
one = lines(f"{tmp}/one.out")
pubs = [l for l in two if "phase" in l]
check([p["phase"] for p in pubs] == ["disk", "all", "all", "survivors", "survivors"], f"publishes: {[p['phase'] for p in pubs]}")
check(all(p["ok"] for p in pubs), "every publish ok: " + "; ".join(p.get("error", "") for p in pubs if not p["ok"]))
check(all(p["acked"] == [0, 1, 2] for p in pubs[:3]), "disk and broadcast publishes reach the 3 engines across both hosts")
check(all(p["acked"] == [2] and p["dead"] == [0, 1] for p in pubs[3:]), "after the cut: the survivor engine 2 only, 0 and 1 dead")
summary = two[-1]
check(summary["versions"] == {"0": None, "1": None, "2": 5}, f"versions {summary['versions']}")
b1, b2 = by_rid(f"{tmp}/one.before.jsonl"), by_rid(f"{tmp}/two.before.jsonl")
check(len(b1) == 4 and b1.keys() == b2.keys(), "4 outputs in both runs")
for rid in b1:
    same = b1[rid]["output_ids"] == b2[rid]["output_ids"] and \
        b1[rid]["meta_info"]["output_token_logprobs"] == b2[rid]["meta_info"]["output_token_logprobs"]
    check(same, f"{rid}: two hosts == one host, tokens and logprobs bit for bit")
f2 = by_rid(f"{tmp}/two.fault.jsonl")
check(len(f2) == 4 and all(f2[r]["output_ids"] == b1[r]["output_ids"] for r in b1),
      "requests run across the cut finish with the same tokens (re-routed to engine 2)")
fin = by_rid(f"{tmp}/two.final.jsonl")
check(len(fin) == 4 and all(o["meta_info"]["weight_version"] == 5 and o["output_ids"] == b1[r]["output_ids"] for r, o in fin.items()),
      "after the survivors' publish engine 2 serves version 5 with the real weights")
log = open(f"{tmp}/two.log").read() + open(f"{tmp}/two.out").read()
check("left out: rank(s) 1, 2, 3, 4 " in log, "the trainer names the ranks left out (engines 0 and 1)")
# mpirun's --display-map: host B is a node of its own, with ranks 2 (engine 0's follower), 3 and 4.
import re
on_b, node = set(), None
for line in log.splitlines():
    m = re.search(r"Data for node: (\S+)", line)
    if m:
        node = m.group(1)
    m = re.search(r"Process rank: (\d+)", line)
    if m and node == host_b:
        on_b.add(int(m.group(1)))
check(on_b == {2, 3, 4}, f"mpirun placed ranks {sorted(on_b)} on host B (expected 2, 3, 4)")
sys.exit(0 if ok else 1)
PY
grep -ho 'left out: .*' "$TMP/two.log" "$TMP/two.out" | head -3
PASSED=1
echo "PASS: two hosts"
