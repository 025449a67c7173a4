# Shared by the benchmark scripts (sourced, not run): a work directory that
# is cleaned up with everything started in it, CPU accounting, the nginx
# backends, and our Controller + one SE on one core.

# require TOOL...: stop unless every tool is installed.
require() { local t; for t in "$@"; do
  command -v "$t" >/dev/null || { echo "missing $t: run ./scripts/install-peers.sh" >&2; exit 2; }
done; }

# workdir NAME [DIR]: make $W, kill what was started (pids and $W/*.pid) on
# exit (SIGTERM first, SIGKILL for what is left after 3 s). Without DIR, $W is
# a new directory under /tmp, removed on exit; with DIR, $W is DIR emptied
# first and kept after the run (its logs), overwritten by the next one.
workdir() {
  if [ -n "${2:-}" ]; then
    rm -rf "$2"; mkdir -p "$2"; W=$(cd "$2" && pwd); KEEP_W=1
  else
    W=$(mktemp -d "/tmp/fabric-bench-$1.XXXXXX"); KEEP_W=
  fi
  pids=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT; trap 'exit 143' TERM
}
# running PID: PID exists and is not a zombie.
running() { local s; s=$(sed 's/.*) //' /proc/"$1"/stat 2>/dev/null) || return 1; [ "${s%% *}" != Z ]; }
bench_cleanup() {
  local p f i left all=("${pids[@]}")
  for f in "$W"/*.pid; do [ -f "$f" ] && all+=("$(cat "$f")"); done
  for p in "${all[@]}"; do kill "$p" 2>/dev/null || true; done
  for i in $(seq 1 30); do
    left=0; for p in "${all[@]}"; do running "$p" && left=1; done
    [ $left = 0 ] && break; sleep 0.1
  done
  for p in "${all[@]}"; do running "$p" && { kill -9 "$p" 2>/dev/null || true; }; done
  sleep 0.1; [ -n "$KEEP_W" ] || rm -rf "$W"
}

CLK=$(getconf CLK_TCK)
BODY=$(printf 'x%.0s' $(seq 1 99))

# Busy ticks of the whole box; ticks of this shell's reaped children (the
# load generator run in `$(...)`): with the server's, what the rest of the
# box used during a run ("foreign CPU": a high one marks a noisy run).
busy_all() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
child_ticks() { local f; f=$(sed 's/.*) //' /proc/$$/stat); set -- $f; echo $((${14} + ${15})); }

# cpu_ticks [user|sys] PID...: CPU ticks (user+sys unless asked) of PIDs' threads.
cpu_ticks() { local t=0 p s f which=all
  case $1 in user|sys) which=$1; shift;; esac
  for p in "$@"; do for s in /proc/"$p"/task/*/stat; do
    f=$(sed 's/.*) //' "$s"); set -- $f
    case $which in user) t=$((t + ${12}));; sys) t=$((t + ${13}));; *) t=$((t + ${12} + ${13}));; esac
  done; done; echo $t; }

# nginx_backends PORT1 PORT2: one nginx worker on CPU1 answering a 100-byte
# body on both ports; sets $backend to its worker pid(s).
nginx_backends() {
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
  server { listen 127.0.0.1:$1; listen 127.0.0.1:$2; default_type text/plain;
    location / { return 200 "$BODY\n"; } }
}
NG
  taskset -c 1 nginx -c "$W/nginx.conf" -p "$W/nginx" >/dev/null 2>&1
  sleep 0.5
  backend=$(pgrep -P "$(cat "$W/nginx.pid")" | tr '\n' ' ')
}

# start_fabric BIN SESSION_PORT CTL_PORT: our Controller (on CPU1, config
# $W/fabric.toml) and one SE on one thread on CPU0 (`--threads 1`, one event
# loop, as HAProxy's nbthread 1; SE_THREADS overrides); sets $se_pid.
start_fabric() {
  taskset -c 1 "$1" controller --config "$W/fabric.toml" --data "$W/ctl" >"$W/controller.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do [ -f "$W/ctl/admin.token" ] && break; sleep 0.1; done
  local join
  join=$("$1" ctl --controller "127.0.0.1:$3" se-token --label bench-se)
  RUST_LOG=warn taskset -c 0 "$1" se --threads "${SE_THREADS:-1}" --name bench-se \
    --controller "127.0.0.1:$2" --data "$W/se" $join >"$W/se.log" 2>&1 &
  se_pid=$!; pids+=($se_pid)
}

# Syscalls counted by kind, besides the total, in PERF=1 runs.
SYSCALLS="read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait futex"
# perf_syscalls PID FILE SECONDS: count PID's syscalls (all, and by kind)
# into FILE, in the background; sets $perf_stat_pid.
perf_syscalls() {
  perf stat -e "raw_syscalls:sys_enter$(printf ',syscalls:sys_enter_%s' $SYSCALLS)" \
    -p "$1" -o "$2" -- sleep "$3" 2>/dev/null &
  perf_stat_pid=$!
}
# syscall_report LABEL REQUESTS FILE: per-request figures from FILE.
syscall_report() {
  local calls
  calls=$(awk '/raw_syscalls/ {gsub(",", "", $1); print $1}' "$3")
  echo "$1: $calls syscalls for $2 requests: $(echo "scale=2; $calls / $2" | bc) per request"
  awk -v n="$2" '/syscalls:sys_enter_/ {gsub(",", "", $1); sub(".*sys_enter_", "", $2);
    if ($1 > 0) printf "  %s %.2f", $2, $1 / n} END {print ""}' "$3"
}
