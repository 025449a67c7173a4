#!/usr/bin/env bash
# Failover drill, the keepalived (VRRP) side: how long a client loses a VIP
# when its master dies, to set beside `fabric drill failover` in the same
# topology (benches/netns-pair.sh, namespaces fkad-*, VIP 10.99.7.10; only
# those namespaces see any traffic).
#   ./benches/ha-keepalived.sh        KILLS=10 SCEN=node PROFILES="default:1 fast:0.1"
# Profiles are NAME:ADVERT_INT; "default" (advert_int 1, keepalived's default
# timing) sits beside our default HA profile, "fast" (0.1) beside our fast one.
# keepalived 2.2.x, VRRPv3, multicast adverts, vrid 51; node a priority 150
# (the master), node b priority 100, both `state BACKUP` with preemption, 5
# GARPs at takeover (and 5 more 5 s later), as in shared/peers/http/03-vrrp.sh.
# Each node also answers HTTP on VIP:8000 itself (body = its name: a or b).
# A client in fkad-c opens a new connection and GETs every 20 ms (200 ms
# timeout: a failed probe costs 200 ms, so outages come in steps of ~200 ms).
# It and tcpdump there (if installed; counts the GARPs for the VIP) run from
# PRE (1.5) s before the kill to GARP_WINDOW s after it (default
# 4 x advert_int + 6: long enough for both of keepalived's trains of 5, the
# second vrrp_garp_master_delay = 5 s after the first).
# Per profile and scenario, KILLS kills of the master:
#   node   kill -9 of keepalived (both processes) + a's link down (node loss)
#   crash  kill -9 of keepalived only: the VIP stays on a, which still
#          answers, until b takes over (both hold it for ~3 advert_int)
# Each kill comes PRE s plus a random fraction of advert_int after the client
# started: a random phase of the advert cycle, as a real failure would.
# After each kill a is restored (VIP removed, link up, keepalived started) and
# the next kill waits until a is sole master again.
# Outage = start of the first failed probe after the kill to the start of the
# first successful one after it; also kill -> that first success.
# Writes target/bench/ha-keepalived.json, appends the Markdown report to
# target/bench/ha-keepalived.md (logs, probe logs and pcaps in
# target/bench/ha-keepalived.d), prints it. Needs root, keepalived, python3
# (tcpdump optional): ./scripts/install-peers.sh. The whole run is bounded by
# TIME_LIMIT seconds (default 900); every wait inside it is bounded too; on
# every exit the fkad-* namespaces and everything in them are removed (also
# ones left by an earlier run, at start).
set -euo pipefail
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
TIME_LIMIT=${TIME_LIMIT:-900}
if [ -z "${FKAD_BOUNDED:-}" ]; then   # the hard bound: the whole run under timeout
  export FKAD_BOUNDED=1
  exec timeout -k 15 "$TIME_LIMIT" "$self" "$@"
fi
cd "$(dirname "$self")/.."
KILLS=${KILLS:-10}; SCEN=${SCEN:-node}; PROFILES=${PROFILES:-"default:1 fast:0.1"}
PRE=${PRE:-1.5}          # client runs this long before the kill
SETTLE=${SETTLE:-2}      # after a is sole master again, before the next kill's client starts
INTERVAL_MS=${INTERVAL_MS:-20}; TIMEOUT_MS=${TIMEOUT_MS:-200}
PREFIX=fkad; PORT=8000
. benches/common.sh
. benches/netns-pair.sh
VIP=$PAIR_VIP
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 2; }
require keepalived python3 ip timeout
python3 --version >/dev/null 2>&1 || { echo "python3 does not run" >&2; exit 2; }
for s in $SCEN; do case $s in node|crash) ;; *) echo "SCEN: node or crash, not $s" >&2; exit 2;; esac; done
case $KILLS in ''|*[!0-9]*) echo "KILLS must be a number" >&2; exit 2;; esac
# the interpreter itself (not a pyenv shim) for the namespaces
PY=$(python3 -c 'import sys; print(sys.executable)')
PROBE=$PWD/benches/failover_probe.py
TCPDUMP=$(command -v tcpdump || true)
[ -n "$TCPDUMP" ] || echo "tcpdump not installed: GARPs not captured"
mkdir -p target/bench
workdir ha-keepalived target/bench/ha-keepalived.d
trap 'pair_down $PREFIX; bench_cleanup' EXIT
OUT_JSON=target/bench/ha-keepalived.json; OUT_MD=target/bench/ha-keepalived.md
JSONL=$W/kills.jsonl; : > "$JSONL"

pair_up $PREFIX
MAC_A=$(pair_mac $PREFIX a); MAC_B=$(pair_mac $PREFIX b)
for n in a b; do
  ip netns exec $PREFIX-$n "$PY" "$PROBE" serve "$VIP" $PORT $n >"$W/http-$n.log" 2>&1 &
  disown $!    # killed by pair_down with its namespace
done

kaconf() { # NODE PRIORITY ADVERT_INT
  cat > "$W/ka-$1.conf" <<KA
global_defs {
  router_id ka_$1
  vrrp_version 3
  vrrp_garp_master_delay 5
  vrrp_garp_master_repeat 5
}
vrrp_instance VI_1 {
  state BACKUP
  interface $PAIR_IFACE
  virtual_router_id 51
  priority $2
  advert_int $3
  virtual_ipaddress { $VIP/32 dev $PAIR_IFACE }
}
KA
}
ka_start() { # NODE: keepalived in the node's namespace; waits (bounded) for both pid files
  rm -f "$W/ka-$1.main.pid" "$W/ka-$1.vrrp.pid"
  ip netns exec $PREFIX-$1 keepalived -n -l -D -P -f "$W/ka-$1.conf" \
    -p "$W/ka-$1.main.pid" -r "$W/ka-$1.vrrp.pid" >>"$W/ka-$1.log" 2>&1 &
  disown $!    # stopped by pid (ka_stop, the kills) or by pair_down
  local i; for i in $(seq 1 50); do
    [ -s "$W/ka-$1.main.pid" ] && [ -s "$W/ka-$1.vrrp.pid" ] && return 0; sleep 0.1; done
  echo "keepalived on $1 did not start (see $W/ka-$1.log)" >&2; return 1
}
ka_stop() { # NODE: SIGTERM, then SIGKILL after 3 s
  local f i p left pf=("$W/ka-$1.main.pid" "$W/ka-$1.vrrp.pid") ps=()
  for f in "${pf[@]}"; do if [ -s "$f" ]; then ps+=("$(cat "$f")"); fi; done
  for p in "${ps[@]}"; do kill "$p" 2>/dev/null || true; done
  for i in $(seq 1 30); do
    left=0; for p in "${ps[@]}"; do if running "$p"; then left=1; fi; done
    [ $left = 0 ] && break; sleep 0.1
  done
  for p in "${ps[@]}"; do if running "$p"; then kill -9 "$p" 2>/dev/null || true; fi; done
  rm -f "${pf[@]}"
}
# wait_sole_master SECONDS: a holds the VIP and b does not; prints ms waited
wait_sole_master() {
  local t0 now; t0=$(date +%s%N)
  while :; do
    now=$(date +%s%N)
    if pair_has_vip $PREFIX a && ! pair_has_vip $PREFIX b; then echo $(((now - t0) / 1000000)); return 0; fi
    [ $(((now - t0) / 1000000000)) -ge "$1" ] && { echo -1; return 1; }
    sleep 0.05
  done
}
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

cat > "$W/meta.json" <<META
{
  "bench": "ha-keepalived",
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "keepalived": "$(keepalived --version 2>&1 | head -1)",
  "kernel": "$(uname -r)",
  "python": "$("$PY" --version 2>&1)",
  "nproc": $(nproc),
  "loadavg": "$(cut -d' ' -f1-3 /proc/loadavg)",
  "garp_capture": "$([ -n "$TCPDUMP" ] && "$TCPDUMP" --version 2>&1 | head -1 || echo "not captured (no tcpdump)")",
  "prefix": "$PREFIX",
  "vip": "$VIP",
  "nodes": {"a": "$(pair_ip a) $MAC_A priority 150", "b": "$(pair_ip b) $MAC_B priority 100", "client": "$(pair_ip c)"},
  "interval_ms": $INTERVAL_MS,
  "timeout_ms": $TIMEOUT_MS,
  "kills_per_profile": $KILLS,
  "scenarios": "$SCEN",
  "pre_s": $PRE,
  "settle_s": $SETTLE,
  "garp_window": "${GARP_WINDOW:-4 x advert_int + 6} s after the kill"
}
META
echo "# $(date -u) keepalived failover drill: $(keepalived --version 2>&1 | head -1), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"

stopped=""
for prof in $PROFILES; do
  name=${prof%%:*}; adv=${prof#*:}
  # bounds scaled by advert_int: takeover is ~3.6 advert_int
  window=${GARP_WINDOW:-$(awk -v a="$adv" 'BEGIN {printf "%.1f", 4 * a + 6}')}   # client and GARP count: this long after the kill
  maxs=$(awk -v w="$window" -v p="$PRE" -v a="$adv" 'BEGIN {printf "%.1f", w + p + a + 4}')
  master_wait=$(awk -v a="$adv" 'BEGIN {printf "%d", 10 * a + 10}')
  kaconf a 150 "$adv"; kaconf b 100 "$adv"
  ka_start b; ka_start a
  if ! w=$(wait_sole_master "$master_wait"); then
    echo "$name: a never became sole master in ${master_wait}s; skipping the profile (see $W/ka-*.log)"
    ka_stop a; ka_stop b; continue
  fi
  echo "== profile $name (advert_int $adv s): a sole master after ${w} ms"
  for sc in $SCEN; do
    for k in $(seq 1 "$KILLS"); do
      if [ "$SECONDS" -gt $((TIME_LIMIT - 60)) ]; then
        stopped="stopped at ${SECONDS}s (TIME_LIMIT $TIME_LIMIT): $name $sc kill $k and later not run"
        echo "$stopped"; break 3
      fi
      tag=$name-$sc-$k
      if ! w=$(wait_sole_master "$master_wait"); then
        echo "$tag: a is not sole master after ${master_wait}s; skipped"; continue
      fi
      sleep "$SETTLE"
      rm -f "$W/$tag.kill"
      pair_flush_neigh $PREFIX c
      td=""; pcap_arg=()
      if [ -n "$TCPDUMP" ]; then
        ip netns exec $PREFIX-c timeout "$(awk -v p="$PRE" -v w="$window" 'BEGIN {print p + w + 5}')" "$TCPDUMP" -Z root -U -i "$PAIR_IFACE" -nn -s 128 \
          -w "$W/$tag.pcap" 'arp or ip proto 112' 2>"$W/$tag.tcpdump.err" &
        td=$!; pcap_arg=(--pcap "$W/$tag.pcap")
        for i in $(seq 1 30); do [ -s "$W/$tag.pcap" ] && break; sleep 0.1; done
      fi
      ip netns exec $PREFIX-c timeout "$(awk -v m="$maxs" 'BEGIN {print m + 5}')" "$PY" "$PROBE" probe \
        --vip "$VIP" --port $PORT --out "$W/$tag.probe" --kill-file "$W/$tag.kill" \
        --interval-ms "$INTERVAL_MS" --timeout-ms "$TIMEOUT_MS" --max-s "$maxs" --after-s "$window" --hold-s "$window" &
      cl=$!
      # kill at a random phase of a's advert cycle (b's Master_Down timer runs from
      # the last advert it heard, so the phase moves takeover by up to advert_int)
      phase=$(awk -v a="$adv" -v s="$RANDOM$k" 'BEGIN {srand(s); printf "%.3f", rand() * a}')
      sleep "$(awk -v p="$PRE" -v j="$phase" 'BEGIN {print p + j}')"
      km=$(cat "$W/ka-a.main.pid"); kv=$(cat "$W/ka-a.vrrp.pid")
      kill_t=$(date +%s.%N)
      case $sc in
        node)  kill -9 "$kv" "$km" 2>/dev/null || true; pair_link $PREFIX a down ;;
        crash) kill -9 "$kv" "$km" 2>/dev/null || true ;;
      esac
      echo "$kill_t" > "$W/$tag.kill"
      wait "$cl" || true
      if [ -n "$td" ]; then   # the capture covers kill .. kill + window
        rest=$(awk -v k="$kill_t" -v w="$window" -v n="$(date +%s.%N)" 'BEGIN {r = k + w + 0.2 - n; printf "%.2f", (r > 0 ? r : 0)}')
        sleep "$rest"; kill "$td" 2>/dev/null || true; wait "$td" 2>/dev/null || true
      fi
      # restore a: the VIP its dead keepalived left, the link, keepalived; a preempts b
      r0=$(date +%s%N)
      ip -n $PREFIX-a addr del "$VIP/32" dev "$PAIR_IFACE" 2>/dev/null || true
      pair_link $PREFIX a up
      ka_start a || true
      restore=$(wait_sole_master "$master_wait" || true)
      "$PY" "$PROBE" analyze --log "$W/$tag.probe" --kill-file "$W/$tag.kill" --vip "$VIP" "${pcap_arg[@]}" \
        --mac a="$MAC_A" --mac b="$MAC_B" --garp-window "$window" --profile "$name" --advert-int "$adv" --scenario "$sc" --kill "$k" \
        --extra phase_s="$phase" --extra restore_ms="$restore" --jsonl "$JSONL"
    done
  done
  ka_stop a; ka_stop b
  for n in a b; do ip -n $PREFIX-$n addr del "$VIP/32" dev "$PAIR_IFACE" 2>/dev/null || true; done
done
pair_down $PREFIX
left=$(ip netns list | awk '{print $1}' | grep "^$PREFIX-" || true)
[ -z "$left" ] || echo "WARNING: namespaces left: $left"
"$PY" "$PROBE" report --in "$JSONL" --json "$OUT_JSON" --md "$OUT_MD" --meta "$W/meta.json"
[ -z "$stopped" ] || echo "NOTE: $stopped"
echo "wrote $OUT_JSON, appended $OUT_MD (logs in $W)"
