#!/usr/bin/env bash
# HTTP/1.1 reverse proxy, keep-alive, small responses: our SE beside HAProxy
# (nbthread 1), same backends, same load generator, same run.
#   ./benches/http-proxy.sh            (DUR=10s CONNS=64 PASSES=2)
# Needs ./scripts/install-peers.sh (haproxy, nginx-light, wrk, bc). Placement
# as in shared/peers/http/01-http-proxy.sh "P1": the proxy alone on CPU0; the
# nginx backends (2 listeners, 100-byte body) and wrk share CPU1. The figure
# to compare is req/s per proxy core-second = req/s / (proxy CPU / 100), proxy
# CPU read from /proc/PID/task/*/stat over the run. Everything listens on
# 127.0.0.1 (VIP 127.0.0.20); every run is bounded by DUR; cleans up on exit.
# Writes target/bench/http-proxy.json and prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10s}; CONNS=${CONNS:-64}; PASSES=${PASSES:-2}
for tool in haproxy nginx wrk bc taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run ./scripts/install-peers.sh" >&2; exit 2; }
done
cargo build -q --release --locked --bin fabric
bin=$PWD/target/release/fabric
W=$(mktemp -d /tmp/fabric-bench-http.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$W/nginx.pid" ] && kill "$(cat "$W/nginx.pid")" 2>/dev/null || true
  [ -f "$W/haproxy.pid" ] && kill "$(cat "$W/haproxy.pid")" 2>/dev/null || true
  sleep 0.3; rm -rf "$W"
}
trap cleanup EXIT
CLK=$(getconf CLK_TCK)
BODY=$(printf 'x%.0s' $(seq 1 99))
cpu_ticks() { local t=0 p s f; for p in "$@"; do for s in /proc/"$p"/task/*/stat; do
  f=$(sed 's/.*) //' "$s"); set -- $f; t=$((t + ${12} + ${13})); done; done; echo $t; }

mkdir -p "$W/nginx"
cat > "$W/nginx.conf" <<NG
worker_processes 1;
pid $W/nginx.pid;
error_log $W/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $W/nginx; proxy_temp_path $W/nginx; fastcgi_temp_path $W/nginx; uwsgi_temp_path $W/nginx; scgi_temp_path $W/nginx;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:18081; listen 127.0.0.1:18082; default_type text/plain;
    location / { return 200 "$BODY\n"; } }
}
NG
cat > "$W/haproxy.cfg" <<HA
global
  nbthread 1
  maxconn 4000
  pidfile $W/haproxy.pid
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:18080
  default_backend be
backend be
  balance roundrobin
  http-reuse always
  server s1 127.0.0.1:18081
  server s2 127.0.0.1:18082
HA
cat > "$W/fabric.toml" <<FB
[controller]
listen = "127.0.0.1:18470"

[[se_groups]]
name = "default"

[[pools]]
name = "web"
algorithm = "round_robin"
servers = ["127.0.0.1:18081", "127.0.0.1:18082"]

[[virtual_services]]
name = "bench"
vip = "127.0.0.20"
port = 18090
pool = "web"
FB

taskset -c 1 nginx -c "$W/nginx.conf" -p "$W/nginx" >/dev/null 2>&1
sleep 0.5
backend=$(pgrep -P "$(cat "$W/nginx.pid")" | tr '\n' ' ')
taskset -c 0 haproxy -D -f "$W/haproxy.cfg"
sleep 0.5
haproxy_pid=$(cat "$W/haproxy.pid")

taskset -c 1 "$bin" controller --config "$W/fabric.toml" --data "$W/ctl" >"$W/controller.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -f "$W/ctl/admin.token" ] && break; sleep 0.1; done
join=$("$bin" ctl --controller 127.0.0.1:18471 se-token --label bench-se)
# One worker thread: the SE gets one core, as HAProxy's nbthread 1.
TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c 0 "$bin" se --name bench-se \
  --controller 127.0.0.1:18470 --data "$W/se" $join >"$W/se.log" 2>&1 &
se_pid=$!; pids+=($se_pid)
for _ in $(seq 1 100); do curl -sf -o /dev/null http://127.0.0.20:18090/ && break; sleep 0.1; done
curl -sf -o /dev/null http://127.0.0.20:18090/ || { echo "the SE does not serve; log:"; cat "$W/se.log"; exit 1; }
curl -sf -o /dev/null http://127.0.0.1:18080/ || { echo "HAProxy does not serve"; exit 1; }

# run LABEL PID URL -> "req/s proxy_cpu_pct p50 p99"
run() {
  local label=$1 pid=$2 url=$3 t0 t1 s0 s1 out
  t0=$(cpu_ticks "$pid"); s0=$(date +%s.%N)
  out=$(taskset -c 1 timeout 60 wrk -t1 -c"$CONNS" -d"$DUR" --latency "$url")
  t1=$(cpu_ticks "$pid"); s1=$(date +%s.%N)
  local rps cpu p50 p99 errs
  rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  cpu=$(echo "($t1 - $t0) / $CLK / ($s1 - $s0) * 100" | bc -l)
  printf '%s %.0f %.1f %s %s %s\n' "$label" "$rps" "$cpu" "$p50" "$p99" "${errs:-none}" >>"$W/runs.txt"
}
for pass in $(seq 1 "$PASSES"); do
  run haproxy "$haproxy_pid" http://127.0.0.1:18080/
  run fabric "$se_pid" http://127.0.0.20:18090/
done

mkdir -p target/bench
hv=$(haproxy -v | head -1 | awk '{print $3}')
echo "| proxy | pass | req/s | proxy CPU | req/s per proxy core-s | p50 | p99 | errors |"
echo "|---|---|---|---|---|---|---|---|"
awk '{ n[$1]++; per = $2 / ($3 / 100); sum[$1] += per;
       printf "| %s | %d | %d | %.0f%% | %d | %s | %s | %s |\n", $1, n[$1], $2, $3, per, $4, $5, $6 }
     END { printf "\nmean req/s per proxy core-s: haproxy %d, fabric %d, ratio fabric/haproxy %.2f\n",
           sum["haproxy"]/n["haproxy"], sum["fabric"]/n["fabric"], (sum["fabric"]/n["fabric"])/(sum["haproxy"]/n["haproxy"]) }' "$W/runs.txt"
awk -v hv="$hv" -v dur="$DUR" -v conns="$CONNS" 'BEGIN { printf "{\"haproxy_version\": \"%s\", \"duration\": \"%s\", \"connections\": %d, \"runs\": [", hv, dur, conns }
     { printf "%s{\"proxy\": \"%s\", \"rps\": %d, \"proxy_cpu_pct\": %.1f, \"rps_per_core_s\": %d, \"p50\": \"%s\", \"p99\": \"%s\"}",
       (NR > 1 ? ", " : ""), $1, $2, $3, $2 / ($3 / 100), $4, $5 }
     END { print "]}" }' "$W/runs.txt" > target/bench/http-proxy.json
echo "(haproxy $hv, wrk -t1 -c$CONNS -d$DUR, JSON in target/bench/http-proxy.json)"
