#!/usr/bin/env bash
# HTTP/1.1 reverse proxy, keep-alive, small responses: our SE beside HAProxy
# (nbthread 1) and nginx (1 worker), same backends, same load generator,
# same run. Ours adds X-Forwarded-For/-Proto and its SE header to every
# request and response; the peers, configured as in shared/peers, add none.
#   ./benches/http-proxy.sh            (DUR=10s CONNS=64 PASSES=3 LAT_DUR=10)
# Then latency at 50% of each proxy's peak, open loop (fabric-load), beside
# the backend straight at the same rate: the p99 the proxy adds.
# Needs ./scripts/install-peers.sh (haproxy, nginx-light, wrk, bc). Placement
# as in shared/peers/http/01-http-proxy.sh "P1": the proxy alone on CPU0; the
# nginx backends (2 listeners, 100-byte body) and wrk share CPU1. The figure
# to compare is req/s per proxy core-second = req/s / (proxy CPU / 100), proxy
# CPU read from /proc/PID/task/*/stat over the run. Everything listens on
# 127.0.0.1 (VIP 127.0.0.20); every run is bounded by DUR; cleans up on exit.
# Writes target/bench/http-proxy.json and prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10s}; CONNS=${CONNS:-64}; PASSES=${PASSES:-3}
. benches/common.sh
require haproxy nginx wrk bc taskset
cargo build -q --release --locked --bin fabric
cargo build -q --release --locked -p benches --bin fabric-load
bin=$PWD/target/release/fabric
workdir http
mkdir -p "$W/nginx-px"
cat > "$W/nginx-px.conf" <<NG
worker_processes 1;
pid $W/nginx-px.pid;
error_log $W/nginx-px.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $W/nginx-px; proxy_temp_path $W/nginx-px; fastcgi_temp_path $W/nginx-px; uwsgi_temp_path $W/nginx-px; scgi_temp_path $W/nginx-px;
  keepalive_requests 1000000;
  upstream be { server 127.0.0.1:18081; server 127.0.0.1:18082; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18083;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering on; } }
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

nginx_backends 18081 18082
taskset -c 0 haproxy -D -f "$W/haproxy.cfg"
taskset -c 0 nginx -c "$W/nginx-px.conf" -p "$W/nginx-px" >/dev/null 2>&1
sleep 0.5
haproxy_pid=$(cat "$W/haproxy.pid")
nginx_px=$(pgrep -P "$(cat "$W/nginx-px.pid")" | head -1)

start_fabric "$bin" 18470 18471
for _ in $(seq 1 100); do curl -sf -o /dev/null http://127.0.0.20:18090/ && break; sleep 0.1; done
curl -sf -o /dev/null http://127.0.0.20:18090/ || { echo "the SE does not serve; log:"; cat "$W/se.log"; exit 1; }
curl -sf -o /dev/null http://127.0.0.1:18080/ || { echo "HAProxy does not serve"; exit 1; }
curl -sf -o /dev/null http://127.0.0.1:18083/ || { echo "the nginx proxy does not serve"; exit 1; }

# run LABEL PID URL -> "req/s proxy_cpu_pct p50 p99"
run() {
  local label=$1 pid=$2 url=$3 t0 t1 s0 s1 out
  t0=$(cpu_ticks "$pid"); u0=$(cpu_ticks user "$pid"); s0=$(date +%s.%N)
  out=$(taskset -c 1 timeout 60 wrk -t1 -c"$CONNS" -d"$DUR" --latency "$url")
  t1=$(cpu_ticks "$pid"); u1=$(cpu_ticks user "$pid"); s1=$(date +%s.%N)
  local rps cpu p50 p99 errs
  rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  cpu=$(echo "($t1 - $t0) / $CLK / ($s1 - $s0) * 100" | bc -l)
  user=$(echo "($u1 - $u0) * 100 / ($t1 - $t0 + 0.001)" | bc -l)
  printf '%s %.0f %.1f %s %s %.0f %s\n' "$label" "$rps" "$cpu" "$p50" "$p99" "$user" "${errs:-none}" >>"$W/runs.txt"
}
for pass in $(seq 1 "$PASSES"); do
  run haproxy "$haproxy_pid" http://127.0.0.1:18080/
  run nginx "$nginx_px" http://127.0.0.1:18083/
  run fabric "$se_pid" http://127.0.0.20:18090/
done

# PERF=1: one more run of each under `perf` (not counted): syscalls per
# request for both proxies (all, and by kind), and where the SE's time goes,
# in target/bench/http-proxy.perf.txt (PERF_CG: perf's call-graph option, as
# in tls-proxy.sh; the recording is kept as target/bench/http-proxy.perf.data).
if [ -n "${PERF:-}" ]; then
  mkdir -p target/bench
  out=target/bench/http-proxy.perf.txt; : > "$out"
  for which in haproxy fabric; do
    if [ $which = haproxy ]; then pid=$haproxy_pid url=http://127.0.0.1:18080/; else pid=$se_pid url=http://127.0.0.20:18090/; fi
    perf_syscalls "$pid" "$W/stat.$which" "${DUR%s}"
    n=$(taskset -c 1 timeout 60 wrk -t1 -c"$CONNS" -d"$DUR" "$url" | awk '/requests in/ {print $1}')
    wait "$perf_stat_pid" || true
    syscall_report "$which" "$n" "$W/stat.$which" | tee -a "$out"
  done
  perf record -q ${PERF_CG:--g} -p "$se_pid" -o "$W/perf.data" -- sleep "${DUR%s}" 2>/dev/null &
  perf_pid=$!
  taskset -c 1 timeout 60 wrk -t1 -c"$CONNS" -d"$DUR" http://127.0.0.20:18090/ >/dev/null
  wait $perf_pid || true
  { perf report -i "$W/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12
    perf report -i "$W/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -80
    perf report -i "$W/perf.data" --children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -80
  } >> "$out" || true
  cp "$W/perf.data" target/bench/http-proxy.perf.data
fi

mkdir -p target/bench
hv=$(haproxy -v | awk 'NR == 1 {print $3}')
echo "| proxy | pass | req/s | proxy CPU | of it in user space | req/s per proxy core-s | p50 | p99 | errors |"
echo "|---|---|---|---|---|---|---|---|---|"
awk '{ n[$1]++; per = $2 / ($3 / 100); sum[$1] += per;
       printf "| %s | %d | %d | %.0f%% | %d%% | %d | %s | %s | %s |\n", $1, n[$1], $2, $3, $6, per, $4, $5, $7 }
     END { h = sum["haproxy"]/n["haproxy"]; x = sum["nginx"]/n["nginx"]; f = sum["fabric"]/n["fabric"];
           printf "\nmean req/s per proxy core-s: haproxy %d, nginx %d, fabric %d; fabric/haproxy %.2f, fabric/nginx %.2f\n", h, x, f, f/h, f/x }' "$W/runs.txt"
awk -v hv="$hv" -v dur="$DUR" -v conns="$CONNS" 'BEGIN { printf "{\"haproxy_version\": \"%s\", \"duration\": \"%s\", \"connections\": %d, \"runs\": [", hv, dur, conns }
     { printf "%s{\"proxy\": \"%s\", \"rps\": %d, \"proxy_cpu_pct\": %.1f, \"rps_per_core_s\": %d, \"p50\": \"%s\", \"p99\": \"%s\", \"user_pct\": %d}",
       (NR > 1 ? ", " : ""), $1, $2, $3, $2 / ($3 / 100), $4, $5, $6 }
     END { print "]}" }' "$W/runs.txt" > target/bench/http-proxy.json
echo "(haproxy $hv, wrk -t1 -c$CONNS -d$DUR, JSON in target/bench/http-proxy.json)"

# Latency at 50% of each proxy's peak: open-loop requests at a fixed rate
# (fabric-load, latency from when each request was due), through the proxy
# and straight to a backend at the same rate; the proxy's added p99 is the
# difference. LAT_DUR seconds each (default 10), after a 2 s warm-up.
LAT_DUR=${LAT_DUR:-10}
load=$PWD/target/release/fabric-load
field() { echo "$1" | sed -E "s/.*\"$2\": ([0-9.]+).*/\1/"; }
peak() { awk -v p="$1" '$1 == p { s += $2; n++ } END { printf "%d", s / n }' "$W/runs.txt"; }
: > "$W/latency.txt"
for label in haproxy nginx fabric; do
  case $label in
    haproxy) url=http://127.0.0.1:18080/ ;;
    nginx) url=http://127.0.0.1:18083/ ;;
    fabric) url=http://127.0.0.20:18090/ ;;
  esac
  rate=$(( $(peak "$label") / 2 ))
  via=$(taskset -c 1 timeout $((LAT_DUR + 30)) "$load" --url "$url" --rate "$rate" --connections "$CONNS" --duration-secs "$LAT_DUR")
  direct=$(taskset -c 1 timeout $((LAT_DUR + 30)) "$load" --url http://127.0.0.1:18081/ --rate "$rate" --connections "$CONNS" --duration-secs "$LAT_DUR")
  echo "$label $rate $(field "$via" achieved_rps) $(field "$via" p50_ms) $(field "$via" p99_ms) $(field "$via" p999_ms) $(field "$direct" p99_ms) $(field "$via" errors)" >> "$W/latency.txt"
done
echo
echo "| proxy | rate (50% of its peak) | achieved | p50 | p99 | p99.9 | backend direct p99 at that rate | p99 added by the proxy | errors |"
echo "|---|---|---|---|---|---|---|---|---|"
awk '{ printf "| %s | %d | %d | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %d |\n", $1, $2, $3, $4, $5, $6, $7, $5 - $7, $8 }' "$W/latency.txt"
