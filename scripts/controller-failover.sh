#!/usr/bin/env bash
# Real-host Controller leader loss: a 3-process Controller cluster on loopback
# (grown live from one node with `fabric ctl cluster add`), then KILLS times:
# find the leader, kill -9 it, and measure the time until a write (`fabric ctl
# probe`, an empty entry through the Raft log) commits again through a
# survivor; restart the killed node from its data directory and let it catch up.
#   ./scripts/controller-failover.sh [KILLS]     (default 10, at most 50)
# Uses ports 127.0.0.1:7570-7592 and a temporary directory; cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-10}
[ "$kills" -ge 1 ] && [ "$kills" -le 50 ] || { echo "KILLS must be 1..50" >&2; exit 2; }

cargo build -q --release --locked --bin fabric
bin=$PWD/target/release/fabric
dir=$(mktemp -d /tmp/fabric-failover.XXXXXX)
declare -A pid
cleanup() {
  for p in "${pid[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

sed -e 's/127.0.0.1:7470/127.0.0.1:7570/' fabric/src/example.toml > "$dir/fabric.toml"
se_port() { echo $((7570 + 10 * ($1 - 1))); }
raft_addr() { echo "127.0.0.1:$(( $(se_port "$1") + 1 ))"; }

start() { # id [--join]
  local id=$1; shift
  "$bin" controller --config "$dir/fabric.toml" --id "$id" --data "$dir/node-$id" \
    --listen "127.0.0.1:$(se_port "$id")" --raft "$(raft_addr "$id")" "$@" \
    >>"$dir/node-$id.log" 2>&1 &
  pid[$id]=$!
}
ctl() { # node-id args...
  local id=$1; shift
  timeout 10 "$bin" ctl --controller "$(raft_addr "$id")" "$@" 2>/dev/null
}
wait_for() { # seconds command...
  local until=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || return 1
    sleep 0.05
  done
}
leader_of() { ctl "$1" cluster status | sed -n 's/^leader: node \([0-9]*\)$/\1/p'; }
ms_now() { echo $(( $(date +%s%N) / 1000000 )); }

start 1
wait_for 15 ctl 1 probe || { echo "node 1 did not start; log:"; cat "$dir/node-1.log"; exit 1; }
for id in 2 3; do
  start "$id" --join
  sleep 0.3
  ctl 1 cluster add --id "$id" --raft "$(raft_addr "$id")" >/dev/null
done
echo "cluster up: $(ctl 1 cluster status | grep -c voter) voters"

times=()
for k in $(seq 1 "$kills"); do
  leader=$(leader_of 1 || true); [ -n "$leader" ] || leader=$(leader_of 2)
  survivor=$(( leader % 3 + 1 ))
  kill -9 "${pid[$leader]}"; wait "${pid[$leader]}" 2>/dev/null || true
  t0=$(ms_now)
  until ctl "$survivor" probe >/dev/null; do
    [ $(( $(ms_now) - t0 )) -lt 30000 ] || { echo "no write within 30 s after killing node $leader"; exit 1; }
    sleep 0.02
  done
  took=$(( $(ms_now) - t0 ))
  times+=("$took")
  echo "kill $k: node $leader was leader; a write committed through node $survivor after $took ms; new leader: node $(leader_of "$survivor")"
  start "$leader" --join
  wait_for 15 bash -c "'$bin' ctl --controller $(raft_addr "$leader") cluster status | grep -q '^leader: node'" \
    || { echo "node $leader did not rejoin"; tail "$dir/node-$leader.log"; exit 1; }
  sleep 2
done

sorted=$(printf '%s\n' "${times[@]}" | sort -n)
n=${#times[@]}
p50=$(echo "$sorted" | sed -n "$(( (n - 1) / 2 + 1 ))p")
p99=$(echo "$sorted" | sed -n "$(( (n - 1) * 99 / 100 + 1 ))p")
max=$(echo "$sorted" | tail -1)
echo "leader kill -> write committed: kills $n   p50 $p50 ms   p99 $p99 ms   max $max ms"
