#!/usr/bin/env bash
# bench-proxy: the same nginx reached directly, through mesd (a MES whose VIP is on loopback)
# and through HAProxy (mode tcp, one thread), driven by wrk and iperf3, all on 127.0.0.1 and
# the loopback VIP pool. Rounds are interleaved (direct, mesd, haproxy, direct, ...) because
# these machines are shared and noisy; the figures printed are medians over the rounds.
#
#   bench/proxy_bench.sh [BUILD_DIR]  ROUNDS=4 DURATION=10 BULK_SECONDS=10
#
# For each target and test (1 KiB keep-alive, 1 KiB with a new connection per request, 1 MiB
# keep-alive; wrk -t1 -c50): requests per second, p99 latency, proxy CPU seconds and requests
# per proxy CPU second; bulk TCP throughput with iperf3 (Gbit/s); then mesd's and HAProxy's
# RSS at idle and per idle connection (IDLE_CONNS=10000 held open through each). Ratios are
# mesd/HAProxy.
set -euo pipefail

build=${1:-build}
rounds=${ROUNDS:-4}
duration=${DURATION:-10}
bulk_seconds=${BULK_SECONDS:-10}
idle_conns=${IDLE_CONNS:-10000}
mesd=$build/cmd/mesd
mesctl=$build/cmd/mesctl
tick=$(getconf CLK_TCK)

for tool in wrk iperf3 haproxy nginx curl python3; do
    command -v "$tool" > /dev/null || { echo "bench-proxy: $tool is missing (make bench-deps)"; exit 1; }
done
# Another build may be replacing the binaries right now: give it a moment.
for _ in $(seq 1 60); do [ -x "$mesd" ] && [ -x "$mesctl" ] && break; sleep 1; done
[ -x "$mesd" ] && [ -x "$mesctl" ] || { echo "bench-proxy: no $mesd or $mesctl (make build)"; exit 1; }

# Idle connections and connections per request need descriptors: a proxy holds two per
# connection. Where the hard limit is lower than 65536 the idle count is capped to fit.
ulimit -n 65536 2> /dev/null || ulimit -n "$(ulimit -Hn)" 2> /dev/null || true
nofile=$(ulimit -n)
[ "$nofile" = unlimited ] && nofile=1048576
idle_cap=$(((nofile - 256) / 2))
idle_note=""
if [ "$idle_conns" -gt "$idle_cap" ]; then
    idle_note=" (capped from $idle_conns: open files limit $nofile)"
    idle_conns=$idle_cap
fi

work=$(mktemp -d /tmp/mesd-bench-proxy-XXXXXX)
pids=()
tw_old=$(sysctl -n net.ipv4.tcp_tw_reuse 2> /dev/null || echo "")
tw_set=""
# Is PID still running (a zombie waiting to be reaped is not)?
running() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]; }
# Stops a process this script started: SIGTERM, then SIGKILL after 10 s; returns 1 if it
# took SIGKILL; its exit status is left in stop_status. A process stopped once is not
# signalled again (its PID may be reused).
declare -A stopped
stop_status=0
stop() {  # stop PID
    local p=$1 rc=0
    stop_status=0
    [ -n "${stopped[$p]:-}" ] && return 0
    stopped[$p]=1
    kill "$p" 2> /dev/null || return 0
    for _ in $(seq 1 100); do running "$p" || break; sleep 0.1; done
    if running "$p"; then kill -9 "$p" 2> /dev/null || true; rc=1; fi
    wait "$p" 2> /dev/null || stop_status=$?
    return $rc
}
cleanup() {
    for p in "${pids[@]:-}"; do [ -n "$p" ] && { stop "$p" || true; }; done
    wait 2> /dev/null || true
    [ -n "$tw_set" ] && sysctl -qw net.ipv4.tcp_tw_reuse="$tw_old" 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Connections per request leave sockets in TIME_WAIT; reuse them (restored on exit).
if [ -n "$tw_old" ] && [ "$tw_old" != 1 ] && sysctl -qw net.ipv4.tcp_tw_reuse=1 2> /dev/null; then tw_set=1; fi

# N distinct free ports on 127.0.0.1 (all bound at once, so no two are the same).
free_ports() {  # free_ports N
    python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# A process and all its descendants (nginx serves from a child of the process started).
tree() {
    local p
    echo "$1"
    for p in $(pgrep -P "$1" 2>/dev/null); do tree "$p"; done
}
# CPU of a server and its descendants.
cpu_ticks() {
    local total=0 p
    for p in $(tree "$1"); do
        # utime and stime, counted after the command name, which may hold spaces.
        total=$((total + $(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }' || echo 0)))
    done
    echo "$total"
}
rss_kb() {  # rss_kb PID [VmRSS|RssAnon]
    local total=0 p
    for p in $(tree "$1"); do
        total=$((total + $(awk -v f="${2:-VmRSS}:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
# "RSS MB (anonymous MB)": file-backed pages (the mapped store, the binary) count in RSS
# but are page cache the kernel can drop; the anonymous part is the server's own memory.
rss_mb() {
    awk -v kb="$(rss_kb "$1")" -v an="$(rss_kb "$1" RssAnon)" 'BEGIN { printf "%.1f (anon %.1f)", kb / 1024, an / 1024 }'
}
fds() {  # open descriptors of a process tree
    local total=0 p
    for p in $(tree "$1"); do total=$((total + $(ls "/proc/$p/fd" 2>/dev/null | wc -l))); done
    echo "$total"
}
# Is 127.0.0.1:PORT listening (from /proc, so no connection is made to the server)?
listening() {
    awk -v want="$(printf ':%04X' "$1")" '$4 == "0A" && substr($2, length($2) - 4) == want { f = 1 } END { exit !f }' /proc/net/tcp
}
wait_listening() {  # wait_listening PORT NAME LOG PID
    for _ in $(seq 1 200); do listening "$1" && return 0; running "$4" || break; sleep 0.05; done
    echo "bench-proxy: $2 does not listen on 127.0.0.1:$1"; cat "$3" 2>/dev/null || true; exit 1
}
wait_http() {  # wait_http URL NAME LOG PID
    for _ in $(seq 1 200); do
        curl -sf -o /dev/null --max-time 1 "$1" && return 0
        running "$4" || break
        sleep 0.05
    done
    echo "bench-proxy: $2 does not answer $1"; cat "$3" 2>/dev/null || true; exit 1
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# ---- servers -------------------------------------------------------------------------------
read -r port_nginx port_iperf port_dns port_web port_bulk port_ha_web port_ha_bulk <<< "$(free_ports 7)"

mkdir -p "$work/www" "$work/nginx-tmp"
head -c 1024 /dev/urandom > "$work/www/1k"
head -c 1048576 /dev/urandom > "$work/www/1m"
# nginx's module temp paths exist only for the modules it was built with (nginx-light has fewer).
temp_paths="client_body_temp_path $work/nginx-tmp/body;"
for m in proxy fastcgi uwsgi scgi; do
    nginx -V 2>&1 | grep -q -- "--without-http_${m}_module" ||
        temp_paths="$temp_paths ${m}_temp_path $work/nginx-tmp/$m;"
done
user_line=""
[ "$(id -u)" -eq 0 ] && user_line="user root;"  # the work dir is 0700: workers must read it
cat > "$work/nginx.conf" <<EOF
$user_line
worker_processes 1;
worker_rlimit_nofile $nofile;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections $((nofile - 64)); }
http {
    access_log off;
    $temp_paths
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_header_timeout 300s;
    server {
        listen 127.0.0.1:$port_nginx;
        root $work/www;
    }
}
EOF
nginx -p "$work" -e "$work/nginx.err" -c "$work/nginx.conf" > "$work/nginx.out" 2>&1 &
pid_nginx=$!; pids+=("$pid_nginx")

iperf3 -s -B 127.0.0.1 -p "$port_iperf" > "$work/iperf3.out" 2>&1 &
pid_iperf=$!; pids+=("$pid_iperf")

cat > "$work/mesd.yaml" <<EOF
dataDir: $work/store
vip:
  ipv4: 127.242.0.0/16
dns:
  listen: ["127.0.0.1:$port_dns"]
  forward:
    enabled: false
admin:
  listen: 127.0.0.1:0
log:
  level: warn
EOF
cat > "$work/mes.yaml" <<EOF
type: MeshExternalService
name: web
spec:
  match: {port: $port_web, protocol: tcp}
  endpoints: [{address: 127.0.0.1, port: $port_nginx}]
EOF
cat > "$work/bulk.yaml" <<EOF
type: MeshExternalService
name: bulk
spec:
  match: {port: $port_bulk, protocol: tcp}
  endpoints: [{address: 127.0.0.1, port: $port_iperf}]
EOF
# "created MeshExternalService default/web 127.242.0.1": the VIP is the last word.
vip_web=$("$mesctl" --config "$work/mesd.yaml" apply -f "$work/mes.yaml" | awk '/web/ { print $NF }')
vip_bulk=$("$mesctl" --config "$work/mesd.yaml" apply -f "$work/bulk.yaml" | awk '/bulk/ { print $NF }')
case "$vip_web $vip_bulk" in
    "127.242."*" 127.242."*) ;;
    *) echo "bench-proxy: unexpected VIPs '$vip_web' '$vip_bulk'"; exit 1 ;;
esac

# HAProxy refuses to start when maxconn needs more descriptors than it may open (two per
# connection): below 40k open files it gets what fits, as the idle count does.
ha_maxconn=20000
ha_note=""
if [ $((2 * ha_maxconn + 128)) -gt "$nofile" ]; then
    ha_maxconn=$(((nofile - 128) / 2))
    ha_note=", HAProxy maxconn $ha_maxconn (not 20000: open files limit $nofile)"
fi
cat > "$work/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $ha_maxconn
defaults
    mode tcp
    maxconn $ha_maxconn
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend web
    bind 127.0.0.1:$port_ha_web
    default_backend web
backend web
    server nginx 127.0.0.1:$port_nginx
frontend bulk
    bind 127.0.0.1:$port_ha_bulk
    default_backend bulk
backend bulk
    server iperf3 127.0.0.1:$port_iperf
EOF

wait_listening "$port_nginx" nginx "$work/nginx.err" "$pid_nginx"
wait_listening "$port_iperf" iperf3 "$work/iperf3.out" "$pid_iperf"

start_mesd() {  # sets pid_mesd
    "$mesd" --config "$work/mesd.yaml" > "$work/mesd.out" 2> "$work/mesd.log" &
    pid_mesd=$!; pids+=("$pid_mesd")
}
start_mesd
haproxy -db -f "$work/haproxy.cfg" > "$work/haproxy.out" 2>&1 &
pid_haproxy=$!; pids+=("$pid_haproxy")

declare -A pid url bulk_addr
pid[direct]=""; pid[mesd]=$pid_mesd; pid[haproxy]=$pid_haproxy
url[direct]=http://127.0.0.1:$port_nginx
url[mesd]=http://$vip_web:$port_web
url[haproxy]=http://127.0.0.1:$port_ha_web
bulk_addr[direct]="127.0.0.1 $port_iperf"
bulk_addr[mesd]="$vip_bulk $port_bulk"
bulk_addr[haproxy]="127.0.0.1 $port_ha_bulk"
targets="direct mesd haproxy"

# A mesd that dies is reported (exit status, signal, log) and started again, so the rounds
# go on; the run it died in is left out of the medians, and the script exits 1 at the end.
crashes=()
check_mesd() {  # check_mesd WHEN: returns 1 if mesd had died (and was restarted)
    running "$pid_mesd" && return 0
    local rc=0 sig=""
    wait "$pid_mesd" 2> /dev/null || rc=$?
    stopped[$pid_mesd]=1
    [ "$rc" -gt 128 ] && sig=" (SIG$(kill -l $((rc - 128)) 2> /dev/null || echo $((rc - 128))))"
    crashes+=("during $1: exit status $rc$sig")
    echo "  mesd died during $1: exit status $rc$sig; starting it again" >&2
    { echo "--- mesd died during $1: exit status $rc$sig"; cat "$work/mesd.log"; } >> "$work/mesd-all.log"
    start_mesd
    pid[mesd]=$pid_mesd
    wait_http "${url[mesd]}/1k" mesd "$work/mesd.log" "$pid_mesd"
    return 1
}
wait_http "${url[direct]}/1k" nginx "$work/nginx.err" "$pid_nginx"
wait_http "${url[mesd]}/1k" mesd "$work/mesd.log" "$pid_mesd"
wait_http "${url[haproxy]}/1k" haproxy "$work/haproxy.out" "$pid_haproxy"
sleep 0.5
rss_idle_mesd=$(rss_kb "$pid_mesd"); rss_idle_mesd_mb=$(rss_mb "$pid_mesd")
rss_idle_ha_mb=$(rss_mb "$pid_haproxy")

# The 1 MiB file arrives intact through each proxy.
for t in mesd haproxy; do
    curl -sf --max-time 10 -o "$work/got-1m" "${url[$t]}/1m" && cmp -s "$work/got-1m" "$work/www/1m" ||
        { echo "bench-proxy: 1 MiB through $t differs or failed"; exit 1; }
done

echo "bench-proxy: $rounds interleaved rounds of ${duration}s (wrk -t1 -c50) and ${bulk_seconds}s (iperf3), nginx one worker,"
echo "  mesd $vip_web:$port_web and $vip_bulk:$port_bulk, HAProxy nbthread 1, all on loopback; open files $nofile$ha_note"

# ---- idle connections ----------------------------------------------------------------------
# Holds N connections to HOST:PORT open; writes "opened failed" to READY once done, and on
# SIGTERM the number of them neither closed nor reset meanwhile to READY.alive.
cat > "$work/idle.py" <<'EOF'
import os, select, signal, socket, sys
host, port, n, ready = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
socks, failed = [], 0
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        s.setblocking(False)
        socks.append(s)
    except OSError:
        s.close()
        failed += 1
        if failed >= 20:
            break
with open(ready + ".tmp", "w") as f:
    f.write(f"{len(socks)} {failed}\n")
os.rename(ready + ".tmp", ready)

def done(*_):
    alive = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":
                continue  # closed by the peer
        except BlockingIOError:
            pass          # nothing to read: still open
        except OSError:
            continue      # reset
        alive += 1
    with open(ready + ".alive", "w") as f:
        f.write(f"{alive}\n")
    sys.exit(0)

signal.signal(signal.SIGTERM, done)
while True:
    signal.pause()
EOF

# idle_test NAME PID HOST PORT sets idle[NAME] to
# "opened failed alive fds_before fds_with rss_before_kb rss_with_kb".
declare -A idle
idle_test() {
    local name=$1 p=$2 host=$3 port=$4 ready=$work/idle-$1 fd0 fd1 rss0 rss1 opened failed alive cp
    fd0=$(fds "$p"); rss0=$(rss_kb "$p")
    python3 "$work/idle.py" "$host" "$port" "$idle_conns" "$ready" > /dev/null 2> "$work/idle-$name.err" &
    cp=$!; pids+=("$cp")
    for _ in $(seq 1 1200); do [ -f "$ready" ] && break; kill -0 "$cp" 2> /dev/null || break; sleep 0.1; done
    read -r opened failed < "$ready" || { opened=0; failed=0; }
    # Wait until the proxy holds both sides of every connection (or stops gaining any).
    local last=-1 same=0
    for _ in $(seq 1 300); do
        fd1=$(fds "$p")
        [ "$fd1" -ge $((fd0 + 2 * opened)) ] && break
        if [ "$fd1" -eq "$last" ]; then same=$((same + 1)); [ "$same" -ge 30 ] && break; else same=0; fi
        last=$fd1
        sleep 0.1
    done
    sleep 1
    fd1=$(fds "$p"); rss1=$(rss_kb "$p")
    kill "$cp" 2> /dev/null || true
    for _ in $(seq 1 100); do running "$cp" || break; sleep 0.1; done
    running "$cp" && kill -9 "$cp" 2> /dev/null
    wait "$cp" 2> /dev/null || true
    stopped[$cp]=1
    alive=$(cat "$ready.alive" 2> /dev/null || echo "?")
    idle[$name]="$opened $failed $alive $fd0 $fd1 $rss0 $rss1"
}
idle_test mesd "$pid_mesd" "$vip_web" "$port_web"
check_mesd "the idle connections" || true
idle_test haproxy "$pid_haproxy" 127.0.0.1 "$port_ha_web"
# Let the proxies close their side and nginx drop the idle connections before the runs.
sleep 2

# ---- runs ----------------------------------------------------------------------------------
# One wrk run against URL through the proxy PID (empty: direct):
# "req_per_s p99_ms proxy_cpu_s req_per_proxy_cpu_s errors".
measure_wrk() {  # measure_wrk URL PID [wrk args]
    local u=$1 p=$2 before=0 after=0
    shift 2
    [ -n "$p" ] && before=$(cpu_ticks "$p")
    wrk -t1 -c50 -d"${duration}s" --latency "$@" "$u" > "$work/run.out" 2>&1 || true
    [ -n "$p" ] && after=$(cpu_ticks "$p")
    awk -v ticks=$((after - before)) -v hz="$tick" '
        function ms(v,   n, u) {
            match(v, /[a-z]+$/); n = substr(v, 1, RSTART - 1); u = substr(v, RSTART)
            return u == "us" ? n / 1000 : u == "ms" ? n : u == "s" ? n * 1000 : u == "m" ? n * 60000 : n
        }
        /^ +99% / { p99 = ms($2) }
        /^Requests\/sec:/ { rps = $2 }
        /requests in/ { done = $1 }
        /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
        /Non-2xx or 3xx responses:/ { err += $NF }
        END {
            cpu = ticks / hz
            printf "%.0f %.3f %.2f %.0f %d\n", rps, p99, cpu, cpu ? done / cpu : 0, err
        }' "$work/run.out"
}
# One iperf3 run to HOST PORT through the proxy PID: "gbit_per_s proxy_cpu_s".
measure_bulk() {  # measure_bulk "HOST PORT" PID
    local host port p=$2 before=0 after=0 gbit
    read -r host port <<< "$1"
    [ -n "$p" ] && before=$(cpu_ticks "$p")
    timeout $((bulk_seconds + 30)) iperf3 -c "$host" -p "$port" -t "$bulk_seconds" -J > "$work/bulk.json" 2>&1 || true
    [ -n "$p" ] && after=$(cpu_ticks "$p")
    gbit=$(python3 -c 'import json, sys
try: print("%.2f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e9))
except Exception: print("0")' "$work/bulk.json")
    [ "$gbit" = 0 ] && { echo "  iperf3 to $host:$port failed:" >&2; head -c 600 "$work/bulk.json" >&2; echo >&2; }
    awk -v g="$gbit" -v ticks=$((after - before)) -v hz="$tick" 'BEGIN { printf "%s %.2f\n", g, ticks / hz }'
}

results=$work/results
: > "$results"
record() {  # record TEST TARGET FIGURES: kept unless mesd died meanwhile
    if [ "$2" = mesd ] && ! check_mesd "$1 (round $round)"; then return 0; fi
    echo "$1 $2 $3" >> "$results"
}
for round in $(seq 1 "$rounds"); do
    for t in $targets; do record 1k-ka "$t" "$(measure_wrk "${url[$t]}/1k" "${pid[$t]}")"; done
    for t in $targets; do
        record 1k-close "$t" "$(measure_wrk "${url[$t]}/1k" "${pid[$t]}" -H 'Connection: close')"
    done
    for t in $targets; do record 1m-ka "$t" "$(measure_wrk "${url[$t]}/1m" "${pid[$t]}")"; done
    for t in $targets; do record bulk "$t" "$(measure_bulk "${bulk_addr[$t]}" "${pid[$t]}")"; done
    echo "  round $round of $rounds done"
done
rss_after_mesd_mb=$(rss_mb "$pid_mesd"); rss_after_ha_mb=$(rss_mb "$pid_haproxy")
[ "${#crashes[@]}" -gt 0 ] && rss_after_mesd_mb="$rss_after_mesd_mb (restarted after dying)"

# mesd's own counters, from the admin endpoint it bound on a free port.
metrics=""
admin=$(ss -Hltnp 2> /dev/null | awk -v p="pid=$pid_mesd," -v dns="127.0.0.1:$port_dns" \
        'index($0, p) && $4 ~ /^127\.0\.0\.1:/ && $4 != dns { print $4; exit }' || true)
[ -n "$admin" ] && metrics=$(curl -sf --max-time 2 "http://$admin/metrics" 2> /dev/null |
    grep -E '^mesd_(proxy_connections_(total|active|refused_total)|proxy_unrouted_total|mes_connections_(total|active|refused_total|failed_total))' || true)

# ---- report --------------------------------------------------------------------------------
col() {  # col TEST TARGET COLUMN: the median over the rounds
    awk -v s="$1" -v t="$2" -v c="$3" '$1 == s && $2 == t { print $c }' "$results" | median
}
sum() { awk -v s="$1" -v t="$2" -v c="$3" '$1 == s && $2 == t { n += $c } END { print n + 0 }' "$results"; }
runs() { awk -v s="$1" -v t="$2" '$1 == s && $2 == t { n++ } END { print n + 0 }' "$results"; }

printf '\n%-9s %-8s %10s %9s %12s %16s %7s %5s\n' test target req/s p99_ms proxy_cpu_s req/proxy_cpu_s errors runs
for test in 1k-ka 1k-close 1m-ka; do
    for t in $targets; do
        if [ "$t" = direct ]; then cpu="-"; per="-"
        else cpu=$(printf '%.2f' "$(col "$test" "$t" 5)"); per=$(printf '%.0f' "$(col "$test" "$t" 6)"); fi
        printf '%-9s %-8s %10.0f %9.3f %12s %16s %7s %5s\n' "$test" "$t" "$(col "$test" "$t" 3)" "$(col "$test" "$t" 4)" \
            "$cpu" "$per" "$(sum "$test" "$t" 7)" "$(runs "$test" "$t")"
    done
done
printf '\n%-9s %-8s %10s %12s %16s %5s\n' test target Gbit/s proxy_cpu_s Gbit/proxy_cpu_s runs
for t in $targets; do
    g=$(col bulk "$t" 3)
    if [ "$t" = direct ]; then cpu="-"; per="-"
    else c=$(col bulk "$t" 4); cpu=$(printf '%.2f' "$c"); per=$(awk -v g="$g" -v c="$c" -v s="$bulk_seconds" 'BEGIN { printf "%.2f", c ? g * s / c : 0 }'); fi
    printf '%-9s %-8s %10.2f %12s %16s %5s\n' bulk "$t" "$g" "$cpu" "$per" "$(runs bulk "$t")"
done

verdict() { awk -v v="$1" -v op="$2" -v want="$3" 'BEGIN { ok = op == ">=" ? v >= want : v <= want; print ok ? "met" : "NOT met" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b ? a / b : 0 }'; }
echo
for spec in "1k-ka 1.1 1 KiB keep-alive" "1k-close 1.2 1 KiB connection per request" "1m-ka - 1 MiB keep-alive"; do
    read -r test want label <<< "$spec"
    r_cpu=$(ratio "$(col "$test" mesd 6)" "$(col "$test" haproxy 6)")
    r_rps=$(ratio "$(col "$test" mesd 3)" "$(col "$test" haproxy 3)")
    r_p99=$(ratio "$(col "$test" mesd 4)" "$(col "$test" haproxy 4)")
    if [ "$want" = - ]; then
        printf 'mesd/HAProxy %-32s req per proxy CPU s %.2fx, req/s %.2fx, p99 %.2fx (target <= 1.0x, %s)\n' \
            "$label" "$r_cpu" "$r_rps" "$r_p99" "$(verdict "$r_p99" "<=" 1.0)"
    else
        printf 'mesd/HAProxy %-32s req per proxy CPU s %.2fx (target >= %sx, %s), req/s %.2fx, p99 %.2fx (target <= 1.0x, %s)\n' \
            "$label" "$r_cpu" "$want" "$(verdict "$r_cpu" ">=" "$want")" "$r_rps" "$r_p99" "$(verdict "$r_p99" "<=" 1.0)"
    fi
done
r_bulk=$(ratio "$(col bulk mesd 3)" "$(col bulk haproxy 3)")
printf 'mesd/HAProxy %-32s Gbit/s %.2fx (target >= 1.0x, %s)\n' "bulk (iperf3)" "$r_bulk" "$(verdict "$r_bulk" ">=" 1.0)"

echo
echo "RSS idle after start: mesd $rss_idle_mesd_mb MB, haproxy $rss_idle_ha_mb MB; after the runs: mesd $rss_after_mesd_mb MB, haproxy $rss_after_ha_mb MB"
for t in mesd haproxy; do
    read -r opened failed alive fd0 fd1 rss0 rss1 <<< "${idle[$t]}"
    awk -v t="$t" -v n="$opened" -v f="$failed" -v a="$alive" -v fd0="$fd0" -v fd1="$fd1" -v r0="$rss0" -v r1="$rss1" -v want="$idle_conns" 'BEGIN {
        printf "%-7s %d of %d idle connections open (%d failed, %s still open at the end), descriptors %d -> %d, RSS %.1f -> %.1f MB: %.2f KiB per idle connection\n",
               t, n, want, f, a, fd0, fd1, r0 / 1024, r1 / 1024, n ? (r1 - r0) / n : 0 }'
done
kib_mesd=$(read -r n _ _ _ _ r0 r1 <<< "${idle[mesd]}"; awk -v n="$n" -v a="$r0" -v b="$r1" 'BEGIN { printf "%.2f", n ? (b - a) / n : 0 }')
idle_mb=$(awk -v k="$rss_idle_mesd" 'BEGIN { printf "%.1f", k / 1024 }')
echo "targets: mesd RSS idle $idle_mb MB <= 10 MB ($(verdict "$idle_mb" "<=" 10))," \
     "$kib_mesd KiB per idle connection <= 16 KiB ($(verdict "$kib_mesd" "<=" 16)); idle connections: $idle_conns$idle_note"

# ---- mesd's health over the runs -------------------------------------------------------------
echo
[ -n "$metrics" ] && { echo "mesd counters:"; sed 's/^/  /' <<< "$metrics"; }
if stop "$pid_mesd"; then status="stopped on SIGTERM with exit status $stop_status"
else status="did NOT stop within 10 s of SIGTERM (killed)"; fi
cat "$work/mesd.log" >> "$work/mesd-all.log" 2> /dev/null || true
if grep -q . "$work/mesd-all.log" 2> /dev/null; then
    echo "mesd $status; its logs (warn and above), first 30 lines:"
    head -n 30 "$work/mesd-all.log" | sed 's/^/  /'
else
    echo "mesd $status; nothing logged at warn or above"
fi
if [ "${#crashes[@]}" -gt 0 ]; then
    echo "mesd DIED ${#crashes[@]} time(s); those runs are left out of the medians:"
    printf '  %s\n' "${crashes[@]}"
    exit 1
fi
