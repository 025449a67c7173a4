#!/usr/bin/env bash
# TLS termination: our SE beside HAProxy (nbthread 1), same certificate, same
# nginx backends, same load generator, same run. Method as in
# shared/peers/http/02-tls.sh (ANCHORS.md section 2): ECDSA P-256 self-signed
# certificate, TLS 1.3 (HAProxy: ssl-min-ver TLSv1.3, alpn h2,http/1.1; ours
# offers h2 and http/1.1 too), session resumption off on the server side
# (HAProxy: no-tls-tickets and tune.ssl.cachesize 0; ours: the virtual
# service's tls.session_resumption = false), since h2load resumes TLS 1.3
# sessions otherwise. Two measurements, in interleaved passes:
#   hs  full TLS 1.3 handshakes: h2load --h1 -n HSN -c 32 -m 1
#       -H 'Connection: close', one request per connection, proxied to nginx;
#       figure: handshakes/s per proxy core-second.
#   h2  HTTP/2 over TLS on long-lived connections (resumption irrelevant):
#       h2load -c 32 -m 10 -D DUR, proxied to nginx over HTTP/1.1;
#       figure: req/s per proxy core-second.
#   ./benches/tls-proxy.sh            (PASSES=3 HSN=20000 DUR=10)
# Needs ./scripts/install-peers.sh (haproxy, nginx-light, nghttp2-client for
# h2load, openssl, bc). Placement as in http-proxy.sh: the proxy alone on
# CPU0; the nginx backends (2 listeners, 100-byte body) and h2load share CPU1
# (so the handshake test is bound by h2load, and the figure to compare is the
# normalized one: rate / (proxy CPU / 100), proxy CPU read from
# /proc/PID/task/*/stat over the run). Before measuring it checks, with
# `openssl s_client -sess_out/-sess_in`, that each proxy refuses resumption,
# and that the same check does see resumption on a twin listener that allows
# it; the hs runs also count the box's TCP connects per request (about 1 when
# every request had its own connection). "foreign CPU" is what the rest of
# the box used during a run (% of one core): a high one marks a noisy run.
# Ours adds X-Forwarded-For/-Proto and its SE header on every request and
# response; HAProxy adds none. Everything listens on 127.0.0.1 (VIP
# 127.0.0.20); every run is bounded by `timeout`; cleans up on exit. Writes target/bench/tls-proxy.json and prints Markdown.
set -euo pipefail
cd "$(dirname "$0")/.."
PASSES=${PASSES:-3}; HSN=${HSN:-20000}; DUR=${DUR:-10}; DUR=${DUR%s}
. benches/common.sh
require haproxy nginx h2load openssl bc taskset curl
cargo build -q --release --locked --bin fabric
bin=$PWD/target/release/fabric
workdir tls
# TCP connects made on the box (client to proxy, proxy to backend, anyone else).
tcp_connects() { awk '$1 == "Tcp:" && $6 ~ /^[0-9]+$/ {print $6}' /proc/net/snmp; }

# The certificate: ECDSA P-256, self-signed; the key as PKCS#8 PEM.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=bench.local -addext subjectAltName=DNS:bench.local \
  -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
cat "$W/cert.pem" "$W/key.pem" > "$W/site.pem"

# :18444 is measured; :18445 is its twin with tickets on, only for the check.
cat > "$W/haproxy.cfg" <<HA
global
  nbthread 1
  maxconn 4000
  pidfile $W/haproxy.pid
  tune.ssl.cachesize 0
  ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:18444 ssl crt $W/site.pem alpn h2,http/1.1 ssl-min-ver TLSv1.3 no-tls-tickets
  default_backend be
frontend fe_resume
  bind 127.0.0.1:18445 ssl crt $W/site.pem alpn h2,http/1.1 ssl-min-ver TLSv1.3
  default_backend be
backend be
  balance roundrobin
  http-reuse always
  server s1 127.0.0.1:18491
  server s2 127.0.0.1:18492
HA
# :18443 is measured; :18446 is its twin with resumption on, only for the check.
{ cat <<FB
[controller]
listen = "127.0.0.1:18480"

[[se_groups]]
name = "default"

[[certificates]]
name = "bench"
cert_pem = """
$(cat "$W/cert.pem")
"""
key_pem = """
$(cat "$W/key.pem")
"""

[[pools]]
name = "web"
algorithm = "round_robin"
servers = ["127.0.0.1:18491", "127.0.0.1:18492"]

[[virtual_services]]
name = "bench"
vip = "127.0.0.20"
port = 18443
pool = "web"
tls = { certificates = ["bench"], session_resumption = false }

[[virtual_services]]
name = "bench-resume"
vip = "127.0.0.20"
port = 18446
pool = "web"
tls = { certificates = ["bench"], session_resumption = true }
FB
} > "$W/fabric.toml"

nginx_backends 18491 18492
taskset -c 0 haproxy -D -f "$W/haproxy.cfg"
sleep 0.5
haproxy_pid=$(cat "$W/haproxy.pid")

# Controller on 18480 (SE sessions), 18481 (raft, ctl), 18482 (API).
start_fabric "$bin" 18480 18481
for _ in $(seq 1 100); do curl -skf -o /dev/null https://127.0.0.20:18443/ && break; sleep 0.1; done
curl -skf -o /dev/null https://127.0.0.20:18443/ || { echo "the SE does not serve TLS; logs:"; cat "$W/controller.log" "$W/se.log"; exit 1; }
curl -skf -o /dev/null https://127.0.0.1:18444/ || { echo "HAProxy does not serve TLS"; exit 1; }

# What each proxy negotiates (h2load's view, one h2 request).
echo "negotiated (h2load, one request):"
for t in "haproxy 127.0.0.1:18444" "fabric 127.0.0.20:18443"; do set -- $t
  echo "  $1: $(timeout 10 h2load -n 1 -c 1 "https://$2/" 2>&1 | awk -F': ' '/^(TLS Protocol|Cipher|Server Temp Key|Application protocol):/ {printf "%s%s", sep, $2; sep = ", "}')"
done

# resumed HOST:PORT -> "R/T": of T reconnects offering the first session, R resumed.
resumed() { local i r=0 n=3 sess=$W/sess.pem req out
  req="GET / HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n"
  # A full request and answer, so the client reads the TLS 1.3 tickets, if any.
  printf "$req" | timeout 10 openssl s_client -connect "$1" -servername bench.local -tls1_3 \
    -ign_eof -sess_out "$sess" >/dev/null 2>&1 || true
  for i in $(seq 1 $n); do
    out=$(printf "$req" | timeout 10 openssl s_client -connect "$1" -servername bench.local -tls1_3 \
      -ign_eof -sess_in "$sess" 2>/dev/null || true)
    echo "$out" | grep -q '^Reused, TLSv1.3' && r=$((r + 1))
  done
  echo "$r/$n"; }
echo "resumption check (openssl s_client -sess_out, then -sess_in; resumed/tries):"
res_ha=$(resumed 127.0.0.1:18444); res_ha_on=$(resumed 127.0.0.1:18445)
res_fb=$(resumed 127.0.0.20:18443); res_fb_on=$(resumed 127.0.0.20:18446)
echo "  haproxy :18444 (measured) $res_ha, twin with tickets :18445 $res_ha_on"
echo "  fabric  :18443 (measured) $res_fb, twin with resumption :18446 $res_fb_on"
case "$res_ha $res_fb" in 0/*" "0/*) ;; *) echo "resumption is not off on a measured listener" >&2; exit 1;; esac
case "$res_ha_on $res_fb_on" in 0/*|*" 0/"*) echo "warning: the check saw no resumption on the twins, so it proves little" >&2;; esac

# run TEST LABEL PID URL: one bounded h2load run, one line in runs.txt:
#   test proxy rate cpu user% mean_req_time connects_per_req foreign_cpu errors
run() {
  local test=$1 label=$2 pid=$3 url=$4 cmd
  case $test in
    hs) cmd=(timeout 300 h2load --h1 -n "$HSN" -c 32 -m 1 -H 'Connection: close' "$url");;
    h2) cmd=(timeout $((DUR + 60)) h2load -c 32 -m 10 -D "$DUR" "$url");;
  esac
  local t0 u0 b0 o0 c0 k0 s0 t1 u1 b1 o1 c1 k1 s1 out
  t0=$(cpu_ticks "$pid"); u0=$(cpu_ticks user "$pid"); o0=$(cpu_ticks $backend)
  b0=$(busy_all); c0=$(child_ticks); k0=$(tcp_connects); s0=$(date +%s.%N)
  out=$(taskset -c 1 "${cmd[@]}" 2>&1) || { echo "$test $label: h2load failed:"; echo "$out"; exit 1; }
  t1=$(cpu_ticks "$pid"); u1=$(cpu_ticks user "$pid"); o1=$(cpu_ticks $backend)
  b1=$(busy_all); c1=$(child_ticks); k1=$(tcp_connects); s1=$(date +%s.%N)
  echo "$out" > "$W/$test-$label.out"
  local rate cpu user mean done_ foreign errs cpr
  rate=$(echo "$out" | awk '/^finished in/ {print $4}')
  # "requests: T total, S started, D done, OK succeeded, F failed, E errored, TO timeout";
  # (failed counts the errored, the timed out and the non-2xx/3xx ones)
  done_=$(echo "$out" | awk '/^requests:/ {print $6}')
  errs=$(echo "$out" | awk '/^requests:/ {print $10 + ($2 - $6)}')
  mean=$(echo "$out" | awk '/^time for request:/ {print $6}')
  cpu=$(echo "($t1 - $t0) / $CLK / ($s1 - $s0) * 100" | bc -l)
  user=$(echo "($u1 - $u0) * 100 / ($t1 - $t0 + 0.001)" | bc -l)
  foreign=$(echo "(($b1 - $b0) - ($t1 - $t0) - ($o1 - $o0) - ($c1 - $c0)) / $CLK / ($s1 - $s0) * 100" | bc -l)
  cpr=-; [ "$test" = hs ] && cpr=$(printf '%.2f' "$(echo "($k1 - $k0) / ($done_ + 0.001)" | bc -l)")
  printf '%s %s %.0f %.1f %.0f %s %s %.0f %s\n' "$test" "$label" "$rate" "$cpu" "$user" "$mean" \
    "$cpr" "$foreign" "$errs" >>"$W/runs.txt"
  [ "$errs" = 0 ] || { echo "$test $label: $errs failed requests:"; echo "$out" | grep -E '^(requests|status codes):'; }
}
for pass in $(seq 1 "$PASSES"); do
  run hs haproxy "$haproxy_pid" https://127.0.0.1:18444/
  run hs fabric "$se_pid" https://127.0.0.20:18443/
  run h2 haproxy "$haproxy_pid" https://127.0.0.1:18444/
  run h2 fabric "$se_pid" https://127.0.0.20:18443/
done
# PERF=1: one more HTTP/2 run of the SE under `perf record` (not counted),
# report in target/bench/tls-proxy.perf.txt; PERF_CG sets perf's call-graph
# option (default -g; e.g. PERF_CG="--call-graph dwarf -F 499" for real
# call chains through Rust code without frame pointers); the recording is
# kept as target/bench/tls-proxy.perf.data for `perf report -i`.
if [ -n "${PERF:-}" ]; then
  mkdir -p target/bench
  : > target/bench/tls-proxy.perf.txt
  for t in "haproxy $haproxy_pid https://127.0.0.1:18444/" "fabric $se_pid https://127.0.0.20:18443/"; do set -- $t
    perf_syscalls "$2" "$W/stat.$1" "$DUR"
    n=$(taskset -c 1 timeout $((DUR + 60)) h2load -c 32 -m 10 -D "$DUR" "$3" 2>&1 | awk '/^requests:/ {print $8}')
    wait "$perf_stat_pid" || true
    syscall_report "$1" "$n" "$W/stat.$1" | tee -a target/bench/tls-proxy.perf.txt
  done
  perf record -q ${PERF_CG:--g} -p "$se_pid" -o "$W/perf.data" -- sleep "$DUR" 2>/dev/null &
  perf_pid=$!
  taskset -c 1 timeout $((DUR + 60)) h2load -c 32 -m 10 -D "$DUR" https://127.0.0.20:18443/ >/dev/null 2>&1 || true
  wait $perf_pid || true
  { perf report -i "$W/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12
    perf report -i "$W/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60
    perf report -i "$W/perf.data" --children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -100
  } >> target/bench/tls-proxy.perf.txt || true
  cp "$W/perf.data" target/bench/tls-proxy.perf.data
fi
for f in "$W"/h2-*.out; do
  grep -q '^Application protocol: h2' "$f" || echo "warning: $(basename "$f" .out) did not negotiate h2" >&2
done
se_warn=$(grep -ciE ' (warn|error) |panic' "$W/se.log" || true)
echo "SE log: $se_warn warning/error lines"; grep -iE ' (warn|error) |panic' "$W/se.log" | head -5 || true

mkdir -p target/bench
hv=$(haproxy -v | awk 'NR == 1 {print $3}')
echo
echo "full TLS 1.3 handshakes (h2load --h1 -n $HSN -c 32 -m 1 -H 'Connection: close')"
echo "| proxy | pass | handshakes/s | proxy CPU | of it in user space | handshakes per proxy core-s | mean request time | TCP connects per request | foreign CPU | failed requests |"
echo "|---|---|---|---|---|---|---|---|---|---|"
awk '$1 == "hs" { n[$2]++; per = $3 / ($4 / 100); sum[$2] += per;
       printf "| %s | %d | %d | %.0f%% | %d%% | %d | %s | %s | %d%% | %s |\n", $2, n[$2], $3, $4, $5, per, $6, $7, $8, $9 }
     END { h = sum["haproxy"]/n["haproxy"]; f = sum["fabric"]/n["fabric"];
           printf "\nmean full handshakes per proxy core-s: haproxy %d, fabric %d; fabric/haproxy %.2f\n", h, f, f/h }' "$W/runs.txt"
echo
echo "HTTP/2 over TLS, long-lived connections (h2load -c 32 -m 10 -D $DUR)"
echo "| proxy | pass | req/s | proxy CPU | of it in user space | req/s per proxy core-s | mean request time | foreign CPU | failed requests |"
echo "|---|---|---|---|---|---|---|---|---|"
awk '$1 == "h2" { n[$2]++; per = $3 / ($4 / 100); sum[$2] += per;
       printf "| %s | %d | %d | %.0f%% | %d%% | %d | %s | %d%% | %s |\n", $2, n[$2], $3, $4, $5, per, $6, $8, $9 }
     END { h = sum["haproxy"]/n["haproxy"]; f = sum["fabric"]/n["fabric"];
           printf "\nmean h2 req/s per proxy core-s: haproxy %d, fabric %d; fabric/haproxy %.2f\n", h, f, f/h }' "$W/runs.txt"
awk -v hv="$hv" -v hsn="$HSN" -v dur="$DUR" -v rh="$res_ha" -v rf="$res_fb" -v rho="$res_ha_on" -v rfo="$res_fb_on" '
     BEGIN { printf "{\"haproxy_version\": \"%s\", \"handshake_requests\": %d, \"h2_duration_s\": %d, ", hv, hsn, dur
             printf "\"resumed_check\": {\"haproxy\": \"%s\", \"fabric\": \"%s\", \"haproxy_twin_resumption_on\": \"%s\", \"fabric_twin_resumption_on\": \"%s\"}, \"runs\": [", rh, rf, rho, rfo }
     { printf "%s{\"test\": \"%s\", \"proxy\": \"%s\", \"rate\": %d, \"proxy_cpu_pct\": %.1f, \"rate_per_core_s\": %d, \"user_pct\": %d, \"mean_request_time\": \"%s\", \"tcp_connects_per_request\": %s, \"foreign_cpu_pct\": %d, \"failed\": %d}",
       (NR > 1 ? ", " : ""), $1, $2, $3, $4, $3 / ($4 / 100), $5, $6, ($7 == "-" ? "null" : $7), $8, $9 }
     END { print "]}" }' "$W/runs.txt" > target/bench/tls-proxy.json
echo "(haproxy $hv, $(haproxy -vv | sed -n 's/^Running on OpenSSL version : \(OpenSSL [^ ]*\).*/\1/p'), h2load $(h2load --version | awk '{print $2}') on CPU1; JSON in target/bench/tls-proxy.json)"
