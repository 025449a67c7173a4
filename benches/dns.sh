#!/usr/bin/env bash
# Authoritative DNS over UDP, answers per server CPU-second: our `fabric dns`
# beside knot (static) and gdnsd (static and weighted), same zone, same load
# generator, same run. Method as in shared/BENCHMARKS.md ("DNS method") and
# shared/peers/dns/: each server alone on CPU0 with one UDP worker (ours
# `fabric --threads 1 dns`: one event loop; knotd udp-workers 1; gdnsd
# udp_threads 1), `dnsperf -c 1 -T 1 -q 100 -l DUR` on CPU1, the server's CPU
# read from /proc/PID/task/*/stat over the run; the figure to compare is
# answers per server core-second = qps / (server CPU / 100), since dnsperf on
# one core bounds qps near 200-250k here.
#   static    `www.example.com A`, no EDNS: ours vs knotd vs gdnsd, the same
#             zone (shared/peers/dns/zones/example.com.zone) in all three.
#   weighted  `wtd.example.com A` with EDNS Client Subnet 192.0.2.0/24 in every
#             query (`dnsperf -E 8:00011800c00002`: family 1, source /24,
#             scope 0, 3 address bytes): ours (a gslb_services entry with
#             policy = "weighted") vs gdnsd's weighted plugin, members
#             192.0.2.21/.22/.23 with weights 10/5/1 in both.
#   ./benches/dns.sh                    (DUR=10 PASSES=3)
# Passes interleave the servers. Before measuring, kdig checks every server:
# NOERROR, AA, the right address set (static: 192.0.2.10; weighted: 400
# queries, every answer within the three members, all three seen, the first
# address's shares near 10/16, 5/16, 1/16) and, with ECS, the option echoed
# (required of gdnsd; ours without it is a warning in the report, as its
# answers are then 11 bytes shorter). gdnsd's own counter (gdnsdctl stats,
# edns_clientsub) shows that dnsperf's queries do carry the option. A config
# that `fabric check` refuses skips that server's part with the error in the
# report, and the script then exits 1. Needs ./scripts/install-peers.sh
# (gdnsd, knot, knot-dnsutils for kdig, dnsperf, bc). Ports 18530-18533 on
# 127.0.0.1 (UDP and TCP); every run is bounded by `timeout`; everything
# started is killed on exit. Scratch dir target/bench/dns (configs, zones and
# logs; emptied at the start of each run, left for reading after it); writes
# target/bench/dns.json, prints a Markdown report and appends it to
# target/bench/dns.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}; DUR=${DUR%s}; PASSES=${PASSES:-3}
. benches/common.sh
require gdnsd gdnsdctl knotd kdig dnsperf bc taskset
cargo build -q --release --locked --bin fabric
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/fabric
mkdir -p target/bench
workdir dns target/bench/dns

P_OURS=18530 P_KNOT=18531 P_GDNSD=18532 P_OURS_W=18533
# Not bound by `fabric dns`, only required in a config.
P_CTL=18538
ECS=192.0.2.0/24 ECS_OPT=8:00011800c00002
W_ADDRS="192.0.2.21 192.0.2.22 192.0.2.23" W_WEIGHTS="10 5 1"
echo "www.example.com A" > "$W/q_static.txt"
echo "wtd.example.com A" > "$W/q_wtd.txt"

# The zone, as shared/peers/dns/zones/example.com.zone.
mkdir -p "$W/zones" "$W/knot/run" "$W/knot/db" "$W/gdnsd/zones" "$W/gdnsd/run" "$W/gdnsd/state"
cat > "$W/zones/example.com.zone" <<'Z'
$ORIGIN example.com.
$TTL 300
@    IN SOA ns1.example.com. hostmaster.example.com. 1 3600 600 86400 300
@    IN NS  ns1.example.com.
ns1  IN A   127.0.0.1
www  IN A   192.0.2.10
www  IN AAAA 2001:db8::10
Z

cat > "$W/knot/knot.conf" <<K
server:
    listen: 127.0.0.1@$P_KNOT
    rundir: $W/knot/run
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: $W/knot/db
log:
  - target: stderr
    any: info
template:
  - id: default
    storage: $W/zones
zone:
  - domain: example.com
    file: example.com.zone
K

# gdnsd: the same zone plus the weighted name (shared/peers/dns/gdnsd);
# edns_client_subnet is on by default, set here so it shows.
set -- $W_ADDRS; a1=$1 a2=$2 a3=$3; set -- $W_WEIGHTS; w1=$1 w2=$2 w3=$3
cat > "$W/gdnsd/config" <<G
options => {
  listen => [ 127.0.0.1:$P_GDNSD ]
  udp_threads => 1
  tcp_threads => 1
  edns_client_subnet => true
  run_dir => $W/gdnsd/run
  state_dir => $W/gdnsd/state
}
plugins => {
  weighted => {
    www_w => { lb1 = [ $a1, $w1 ], lb2 = [ $a2, $w2 ], lb3 = [ $a3, $w3 ] }
  }
}
G
{ cat "$W/zones/example.com.zone"; echo 'wtd  30 IN DYNA weighted!www_w'; } > "$W/gdnsd/zones/example.com"

cat > "$W/fabric-static.toml" <<F
# DNS only: \`fabric dns\` does not start the Controller.
[controller]
listen = "127.0.0.1:$P_CTL"

[dns]
listen = "127.0.0.1:$P_OURS"

[[dns.zones]]
name = "example.com"
zone_file = "zones/example.com.zone"
F
cat > "$W/fabric-weighted.toml" <<F
[controller]
listen = "127.0.0.1:$P_CTL"

[dns]
listen = "127.0.0.1:$P_OURS_W"

[[dns.zones]]
name = "example.com"
zone_file = "zones/example.com.zone"

[[gslb_services]]
fqdn = "wtd.example.com"
policy = "weighted"
ttl_secs = 30
members = [
  { address = "$a1", weight = $w1 },
  { address = "$a2", weight = $w2 },
  { address = "$a3", weight = $w3 },
]
F

# wait_dns LABEL PID PORT LOG: until PORT answers (at most ~10 s), or fail
# with the server's log.
wait_dns() {
  local end=$((SECONDS + 10))
  while [ $SECONDS -lt $end ]; do
    running "$2" || { echo "$1 exited at start; its log ($4):" >&2; tail -20 "$4" >&2; exit 1; }
    timeout 3 kdig @127.0.0.1 -p "$3" +timeout=1 +retry=0 www.example.com A >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "$1 does not answer on 127.0.0.1:$3 after 10 s; its log ($4):" >&2; tail -20 "$4" >&2; exit 1
}

# skipped[LABEL]: why a server's part is not measured.
declare -A skipped=()
taskset -c 0 knotd -c "$W/knot/knot.conf" >"$W/knot.log" 2>&1 &
knot_pid=$!; pids+=($knot_pid)
# gdnsd 3.8 runs in the foreground by default (its old -f is refused with a warning).
taskset -c 0 gdnsd -c "$W/gdnsd" start >"$W/gdnsd.log" 2>&1 &
gdnsd_pid=$!; pids+=($gdnsd_pid)
"$bin" check "$W/fabric-static.toml" >"$W/check-static.log" 2>&1 || {
  echo "fabric check refuses the static config:" >&2; cat "$W/check-static.log" >&2; exit 1; }
RUST_LOG=warn taskset -c 0 "$bin" --threads 1 dns --config "$W/fabric-static.toml" >"$W/fabric-static.log" 2>&1 &
ours_pid=$!; pids+=($ours_pid)
ours_w_pid=
if "$bin" check "$W/fabric-weighted.toml" >"$W/check-weighted.log" 2>&1; then
  RUST_LOG=warn taskset -c 0 "$bin" --threads 1 dns --config "$W/fabric-weighted.toml" >"$W/fabric-weighted.log" 2>&1 &
  ours_w_pid=$!; pids+=($ours_w_pid)
else
  skipped[fabric]="\`fabric check\` refuses the weighted config (policy = \"weighted\" comes with the GSLB policy work): $(grep -v '^$' "$W/check-weighted.log" | tr '\n' ' ' | sed 's/ *$//')"
  echo "weighted, ours: NOT MEASURED: ${skipped[fabric]}" >&2
  echo "  (config: $W/fabric-weighted.toml)" >&2
fi
wait_dns knotd "$knot_pid" $P_KNOT "$W/knot.log"
wait_dns gdnsd "$gdnsd_pid" $P_GDNSD "$W/gdnsd.log"
wait_dns "fabric dns (static)" "$ours_pid" $P_OURS "$W/fabric-static.log"
[ -z "$ours_w_pid" ] || wait_dns "fabric dns (weighted)" "$ours_w_pid" $P_OURS_W "$W/fabric-weighted.log"

# kdig_answers PORT KDIG_ARGS...: one line per response in kdig's output:
#   STATUS AA(0/1) ECS(the echoed option, or -) ADDR[,ADDR...](or -) SIZE(bytes)
kdig_answers() { local port=$1; shift
  timeout 60 kdig @127.0.0.1 -p "$port" +norec +timeout=2 +retry=1 "$@" 2>&1 | awk '
    function emit() { if (seen) print st, aa, ecs, (addrs == "" ? "-" : addrs), size }
    /->>HEADER<<-/ { emit(); seen = 1; st = $6; sub(";", "", st); aa = 0; ecs = "-"; addrs = ""; size = "-" }
    /^;; Received [0-9]+ B/ { size = $3 }
    /^;; Flags:/ { f = $0; sub(";; Flags:", "", f); sub(";.*", "", f); aa = (f ~ /(^| )aa( |$)/) ? 1 : 0 }
    /^;; CLIENT-SUBNET:/ { ecs = $3 }
    !/^;/ && NF >= 5 && $4 == "A" { addrs = addrs (addrs == "" ? "" : ",") $5 }
    /^;; ERROR/ { emit(); seen = 0; print "ERROR 0 - - -" }
    END { emit() }'; }
# check_static LABEL PORT: NOERROR, AA, exactly 192.0.2.10.
check_static() { local r
  r=$(kdig_answers "$2" www.example.com A)
  [ "${r% *}" = "NOERROR 1 - 192.0.2.10" ] || { echo "$1 :$2 gives a wrong answer to www.example.com A: '$r' (want NOERROR, AA, 192.0.2.10)" >&2; exit 1; }
  echo "  $1 :$2 www.example.com A: NOERROR, AA, 192.0.2.10, ${r##* } bytes"
}
# check_weighted LABEL PORT ECS_REQUIRED: N queries with ECS; every answer
# NOERROR, AA, only member addresses; all members seen; the first address's
# shares within 10 points of the weights; ECS echoed. Sets ecs_echo[LABEL].
declare -A ecs_echo=() w_shares=()
check_weighted() { local label=$1 port=$2 need=$3 n=400 q=() i r bad
  for i in $(seq 1 $n); do q+=(wtd.example.com A); done
  r=$(kdig_answers "$port" +subnet=$ECS "${q[@]}")
  bad=$(echo "$r" | awk -v set="$W_ADDRS" -v n=$n '
    BEGIN { k = split(set, m, " "); for (i = 1; i <= k; i++) ok[m[i]] = 1 }
    { c++; if ($1 != "NOERROR" || $2 != 1) { print "response " c ": " $1 (($2 == 1) ? "" : ", no AA"); exit }
      k2 = split($4, a, ","); if ($4 == "-") { print "response " c ": no A record"; exit }
      for (i = 1; i <= k2; i++) if (!(a[i] in ok)) { print "response " c ": " a[i] " is not a member"; exit } }
    END { if (c != n) print c " responses to " n " queries" }')
  [ -z "$bad" ] || { echo "$label :$port wtd.example.com A (ECS $ECS): $bad" >&2; exit 1; }
  local shares
  shares=$(echo "$r" | awk -v set="$W_ADDRS" -v wts="$W_WEIGHTS" '
    BEGIN { k = split(set, m, " "); split(wts, w, " "); for (i = 1; i <= k; i++) tw += w[i] }
    { split($4, a, ","); first[a[1]]++; c++; if (index($4, ",")) multi++ }
    END { out = ""; fail = ""
          for (i = 1; i <= k; i++) { s = first[m[i]] / c; want = w[i] / tw
            out = out sprintf("%s%s %.0f%% (weight %.0f%%)", (i > 1 ? ", " : ""), m[i], 100 * s, 100 * want)
            if (first[m[i]] == 0 || s - want > 0.1 || want - s > 0.1) fail = "off" }
          printf "%s%s%s; %s bytes\n", (fail ? "OFF " : ""), out, (multi ? sprintf("; %d of %d answers had several addresses", multi, c) : ""), $5 }')
  case $shares in OFF*) echo "$label :$port: the weighted shares are off (first address of $n answers): ${shares#OFF }" >&2; exit 1;; esac
  local echoed
  echoed=$(echo "$r" | awk -v e="$ECS" '$3 ~ ("^" e "/") { n++ } END { print n + 0 }')
  if [ "$echoed" = "$n" ]; then ecs_echo[$label]=yes
  elif [ "$need" = required ]; then echo "$label :$port echoed ECS in $echoed of $n answers" >&2; exit 1
  else ecs_echo[$label]="no ($echoed of $n)"; echo "  warning: $label does not echo ECS ($echoed of $n answers): its answers are shorter than gdnsd's" >&2
  fi
  w_shares[$label]=$shares
  echo "  $label :$port wtd.example.com A, ECS $ECS, $n queries: NOERROR, AA, members only; $shares; ECS echoed: ${ecs_echo[$label]}"
}
echo "answer checks (kdig):"
check_static knotd $P_KNOT
check_static gdnsd $P_GDNSD
check_static fabric $P_OURS
check_weighted gdnsd $P_GDNSD required
[ -z "$ours_w_pid" ] || check_weighted fabric $P_OURS_W optional

# gdnsd's count of queries that carried ECS.
gdnsd_ecs() { timeout 10 gdnsdctl -c "$W/gdnsd" stats 2>/dev/null | awk -F: '/"edns_clientsub"/ {gsub(/[ ,]/, "", $2); print $2}'; }

# run TEST LABEL PID PORT QUERYFILE [DNSPERF_ARGS...]: one bounded dnsperf run,
# one line in runs.txt:
#   test server pass qps server_cpu% sent completed lost noerror% avg_latency_ms dnsperf_cpu% foreign_cpu% ecs_queries
run() {
  local test=$1 label=$2 pid=$3 port=$4 qf=$5; shift 5
  local e0=- e1=- t0 b0 c0 s0 t1 b1 c1 s1 out
  [ "$label $test" = "gdnsd weighted" ] && e0=$(gdnsd_ecs)
  t0=$(cpu_ticks "$pid"); b0=$(busy_all); c0=$(child_ticks); s0=$(date +%s.%N)
  out=$(taskset -c 1 timeout $((DUR + 30)) dnsperf -s 127.0.0.1 -p "$port" -d "$qf" -l "$DUR" -c 1 -T 1 -q 100 "$@" 2>&1) ||
    { echo "$test $label: dnsperf failed:"; echo "$out"; exit 1; }
  t1=$(cpu_ticks "$pid"); b1=$(busy_all); c1=$(child_ticks); s1=$(date +%s.%N)
  [ "$label $test" = "gdnsd weighted" ] && { e1=$(gdnsd_ecs); e1=$((e1 - e0)); }
  echo "$out" > "$W/dnsperf-$test-$label-$pass.out"
  running "$pid" || { echo "$test $label: the server died during the run"; exit 1; }
  local qps sent done_ lost noerr lat cpu dp foreign
  sent=$(echo "$out" | awk '/Queries sent:/ {print $3}')
  done_=$(echo "$out" | awk '/Queries completed:/ {print $3}')
  lost=$(echo "$out" | awk '/Queries lost:/ {print $3}')
  qps=$(echo "$out" | awk '/Queries per second:/ {print $4}')
  noerr=$(echo "$out" | awk '/Response codes:/ { for (i = 3; i < NF; i++) if ($i == "NOERROR") { v = $(i + 2); gsub(/[()%,]/, "", v); print v } }')
  lat=$(echo "$out" | awk '/Average Latency/ {printf "%.3f", $4 * 1000}')
  [ -n "$qps" ] && [ -n "$done_" ] || { echo "$test $label: no figures in dnsperf's output:"; echo "$out"; exit 1; }
  cpu=$(echo "($t1 - $t0) / $CLK / ($s1 - $s0) * 100" | bc -l)
  dp=$(echo "($c1 - $c0) / $CLK / ($s1 - $s0) * 100" | bc -l)
  foreign=$(echo "(($b1 - $b0) - ($t1 - $t0) - ($c1 - $c0)) / $CLK / ($s1 - $s0) * 100" | bc -l)
  printf '%s %s %d %.0f %.1f %d %d %d %s %s %.0f %.0f %s\n' "$test" "$label" "$pass" "$qps" "$cpu" \
    "$sent" "$done_" "$lost" "${noerr:-0}" "${lat:--}" "$dp" "$foreign" "$e1" >>"$W/runs.txt"
  printf '  pass %d %-8s %-6s %7.0f qps  server CPU %5.1f%%  lost %d\n' "$pass" "$test" "$label" "$qps" "$cpu" "$lost"
}
: > "$W/runs.txt"
echo "measuring: $PASSES passes, ${DUR} s per run"
for pass in $(seq 1 "$PASSES"); do
  run static fabric "$ours_pid" $P_OURS "$W/q_static.txt"
  run static knotd "$knot_pid" $P_KNOT "$W/q_static.txt"
  run static gdnsd "$gdnsd_pid" $P_GDNSD "$W/q_static.txt"
  [ -z "$ours_w_pid" ] || run weighted fabric "$ours_w_pid" $P_OURS_W "$W/q_wtd.txt" -E $ECS_OPT
  run weighted gdnsd "$gdnsd_pid" $P_GDNSD "$W/q_wtd.txt" -E $ECS_OPT
done
# Every gdnsd weighted run's queries carried ECS (gdnsd's own counter).
awk '$1 == "weighted" && $2 == "gdnsd" && $13 < $7 { print "gdnsd counted ECS in " $13 " of " $7 " queries in weighted pass " $3; bad = 1 }
     END { exit bad }' "$W/runs.txt" >&2 || { echo "dnsperf did not send ECS in every query" >&2; exit 1; }
bad=$(awk '$9 + 0 < 100 { print $1 " " $2 " pass " $3 ": " $9 "% NOERROR" }' "$W/runs.txt")
[ -z "$bad" ] || { echo "answers other than NOERROR:" >&2; echo "$bad" >&2; exit 1; }
# The servers' logs: warnings and errors, but gdnsd's about the zone's single NS.
for l in fabric-static fabric-weighted knot gdnsd; do
  [ -f "$W/$l.log" ] || continue
  n=$(grep -iE '(^| )(warn|warning|error|panic)[: ]' "$W/$l.log" | grep -vc 'only has one NS record' || true)
  [ "$n" = 0 ] || { echo "$l log: $n warning/error lines:"; grep -iE '(^| )(warn|warning|error|panic)[: ]' "$W/$l.log" | grep -v 'only has one NS record' | head -3; }
done

# The report: per run, then medians of answers per server core-second.
gv=$({ gdnsd -h 2>&1 || true; } | awk '/^gdnsd version/ {print $3; exit}')
kv=$(knotd -V | awk '{print $NF}')
dv=$({ dnsperf -h 2>&1 || true; } | awk '/^Version/ {print $2}')
rev=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!target' 2>/dev/null || echo "+dirty")
medians=$(awk '{ k = $1 " " $2; n[k]++; v[k, n[k]] = $4 / ($5 / 100) }
  END { for (k in n) { m = n[k]; for (i = 1; i <= m; i++) s[i] = v[k, i]
          for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (s[j] < s[i]) { t = s[i]; s[i] = s[j]; s[j] = t }
          printf "%s %.0f\n", k, (m % 2 ? s[(m + 1) / 2] : (s[m / 2] + s[m / 2 + 1]) / 2) } }' "$W/runs.txt")
med() { echo "$medians" | awk -v k="$1 $2" '$1 " " $2 == k {print $3}'; }
ratio() { local a b; a=$(med "$1" "$2"); b=$(med "$1" "$3")
  if [ -n "$a" ] && [ -n "$b" ]; then printf '%.2f' "$(echo "$a / $b" | bc -l)"; else echo "-"; fi; }
r_knot=$(ratio static fabric knotd); r_gs=$(ratio static fabric gdnsd); r_gw=$(ratio weighted fabric gdnsd)
report=$W/report.md
{
  echo "## DNS, $(date -u '+%Y-%m-%d %H:%M UTC'), fabric $rev"
  echo
  echo "\`./benches/dns.sh\` (DUR=$DUR PASSES=$PASSES): each server alone on CPU0 with one UDP worker,"
  echo "\`dnsperf -c 1 -T 1 -q 100 -l $DUR\` on CPU1 (weighted: \`-E $ECS_OPT\`, ECS $ECS);"
  echo "gdnsd $gv, knotd $kv, dnsperf $dv. Answers per server core-second = qps / (server CPU / 100)."
  echo "foreign CPU: what the rest of the box used during the run (% of one core; high = noisy)."
  echo
  echo "| test | server | pass | qps | server CPU | answers per server core-s | lost | avg latency | dnsperf CPU | foreign CPU |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  awk '{ printf "| %s | %s | %d | %d | %.1f%% | %d | %d | %s ms | %d%% | %d%% |\n", $1, $2, $3, $4, $5, $4 / ($5 / 100), $8, $10, $11, $12 }' "$W/runs.txt"
  for l in "${!skipped[@]}"; do echo "| weighted | $l | - | not measured: ${skipped[$l]} |||||||"; done
  echo
  echo "Medians of answers per server core-second:"
  echo "- static \`www.example.com A\`: fabric $(med static fabric), knotd $(med static knotd), gdnsd $(med static gdnsd); **fabric/knotd $r_knot**, **fabric/gdnsd $r_gs**"
  echo "- weighted \`wtd.example.com A\` + ECS: fabric $(med weighted fabric || true)${skipped[fabric]:+not measured}, gdnsd $(med weighted gdnsd); **fabric/gdnsd $r_gw** (target: >= 1.00 and >= 200k per core-s)"
  echo "- ECS echoed: gdnsd ${ecs_echo[gdnsd]:-?}, fabric ${ecs_echo[fabric]:--}; gdnsd counted ECS in every measured query"
  echo "- weighted first-address shares (kdig, 400 queries): gdnsd ${w_shares[gdnsd]:-}${w_shares[fabric]:+; fabric ${w_shares[fabric]}}"
  echo
} > "$report"
echo; cat "$report"
cat "$report" >> target/bench/dns.md
awk -v gv="$gv" -v kv="$kv" -v dv="$dv" -v dur="$DUR" -v rev="$rev" -v rk="$r_knot" -v rgs="$r_gs" -v rgw="$r_gw" -v skip="${skipped[fabric]:-}" '
  function num(x) { return (x == "-" || x == "") ? "null" : x }
  BEGIN { gsub(/["\\]/, "'"'"'", skip)
          printf "{\"fabric\": \"%s\", \"gdnsd_version\": \"%s\", \"knotd_version\": \"%s\", \"dnsperf_version\": \"%s\", \"duration_s\": %d, ", rev, gv, kv, dv, dur
          printf "\"ratios\": {\"static_fabric_knotd\": %s, \"static_fabric_gdnsd\": %s, \"weighted_fabric_gdnsd\": %s}, ", num(rk), num(rgs), num(rgw)
          printf "\"weighted_fabric_skipped\": %s, \"runs\": [", (skip == "" ? "null" : "\"" skip "\"") }
  { printf "%s{\"test\": \"%s\", \"server\": \"%s\", \"pass\": %d, \"qps\": %d, \"server_cpu_pct\": %.1f, \"answers_per_core_s\": %d, \"sent\": %d, \"completed\": %d, \"lost\": %d, \"avg_latency_ms\": %s, \"dnsperf_cpu_pct\": %d, \"foreign_cpu_pct\": %d, \"ecs_queries\": %s}",
      (NR > 1 ? ", " : ""), $1, $2, $3, $4, $5, $4 / ($5 / 100), $6, $7, $8, num($10), $11, $12, num($13) }
  END { print "]}" }' "$W/runs.txt" > target/bench/dns.json
echo "(appended to target/bench/dns.md; JSON in target/bench/dns.json; configs and logs in $W)"
if [ ${#skipped[@]} -gt 0 ]; then
  echo "not measured: ${!skipped[*]} (see above)" >&2
  exit 1
fi
