#!/usr/bin/env bash
# bench-proxy: the same nginx reached directly, through mesd (a MES whose VIP is on loopback)
# and through HAProxy (mode tcp, one thread), driven by wrk and iperf3, all on 127.0.0.1 and
# the loopback VIP pool. Rounds are interleaved (direct, mesd, haproxy, direct, ...) because
# these machines are shared and noisy; the figures printed are medians over the rounds.
#
#   bench/proxy_bench.sh [BUILD_DIR]  ROUNDS=4 DURATION=10 BULK_SECONDS=10 WORKERS="1 2 4 8" PIN=1
#                                     ACCESS_LOG_ROUNDS=ROUNDS ACCESS_LOG_FORMAT=logfmt
#
# For each target and test (1 KiB keep-alive, 1 KiB with a new connection per request, 1 MiB
# keep-alive; wrk -t1 -c50): requests per second, p99 latency, proxy CPU seconds and requests
# per proxy CPU second; bulk TCP throughput with iperf3 (Gbit/s); then mesd's and HAProxy's
# RSS at idle and per idle connection (IDLE_CONNS=10000 held open through each). Ratios are
# mesd/HAProxy.
#
# Then the access log's cost: mesd with proxy.accessLog to a file against mesd without, 1 KiB
# with a connection per request and keep-alive; the on/off ratios of req/s, req per proxy CPU
# second and p99, and the lines written.
#
# Then a worker sweep, 1 KiB keep-alive and with a connection per request: mesd --workers N
# (workerAffinity auto) against HAProxy nbthread N, each pinned to the first N CPUs this
# script may use; wrk and nginx share the others (wrk -t and nginx workers half of them each,
# 50 connections per worker). N is left out where fewer than N CPUs would be left for them
# (on two CPUs only N = 1 runs: proxies on CPU 0, wrk and nginx on CPU 1). Per N: req/s, per
# proxy CPU, the proxy's CPUs busy, scaling efficiency (req/s at N over N times req/s at 1),
# p99 and mesd's req/s over HAProxy's; direct (wrk to nginx on the same CPUs) is the ceiling
# the load side allows, and a proxy near it is marked "load-bound".
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

bench_name=bench-proxy
build=${1:-build}
rounds=${ROUNDS:-4}
duration=${DURATION:-10}
bulk_seconds=${BULK_SECONDS:-10}
idle_conns=${IDLE_CONNS:-10000}
mesd=$build/cmd/mesd
mesctl=$build/cmd/mesctl

require_tools wrk iperf3 haproxy nginx curl python3 taskset
wait_for_build
sweep_plan "${WORKERS:-1 2 4 8}"

# Idle connections and connections per request need descriptors: a proxy holds two per
# connection. Where the hard limit is lower than 65536 the idle count is capped to fit.
raise_open_files
idle_cap=$(((nofile - 256) / 2))
idle_note=""
if [ "$idle_conns" -gt "$idle_cap" ]; then
    idle_note=" (capped from $idle_conns: open files limit $nofile)"
    idle_conns=$idle_cap
fi

start_work bench-proxy

# Connections per request leave sockets in TIME_WAIT; reuse them (restored on exit).
reuse_time_wait

# ---- servers -------------------------------------------------------------------------------
read -r port_nginx port_iperf port_dns port_web port_bulk port_ha_web port_ha_bulk <<< "$(free_ports 7)"

mkdir -p "$work/www"
head -c 1024 /dev/urandom > "$work/www/1k"
head -c 1048576 /dev/urandom > "$work/www/1m"
start_nginx <<EOF
    server {
        listen 127.0.0.1:$port_nginx;
        root $work/www;
    }
EOF

iperf3 -s -B 127.0.0.1 -p "$port_iperf" > "$work/iperf3.out" 2>&1 &
pid_iperf=$!; pids+=("$pid_iperf")

write_mesd_config "$work" "$port_dns" 127.242.0.0/16
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

# Like the idle count, HAProxy's maxconn is capped to what the open files limit holds.
ha_sections=$(cat <<EOF
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
)
write_haproxy_config <<< "$ha_sections"

wait_listening "$port_nginx" nginx "$work/nginx.err" "$pid_nginx"
wait_listening "$port_iperf" iperf3 "$work/iperf3.out" "$pid_iperf"

start_mesd "$work"
start_haproxy

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
check_mesd() {  # check_mesd WHEN: returns 1 if mesd had died (and was restarted)
    running "$pid_mesd" && return 0
    restart_dead_mesd "$1"
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
find_admin 1
[ -n "$admin" ] && metrics=$(curl -sf --max-time 2 "http://$admin/metrics" 2> /dev/null |
    grep -E '^mesd_(proxy_connections_(total|active|refused_total)|proxy_unrouted_total|mes_connections_(total|active|refused_total|failed_total))' || true)

# ---- report --------------------------------------------------------------------------------
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

# ---- the access log's cost ------------------------------------------------------------------
# A second mesd, the same MES on a store of its own (VIP pool 127.243.0.0/16, so both run at
# once), with proxy.accessLog to a file; rounds interleaved with the first (access log off),
# 1 KiB with a connection per request (a line per request: the worst case) and keep-alive.
alog_rounds=${ACCESS_LOG_ROUNDS:-$rounds}
alog_format=${ACCESS_LOG_FORMAT:-logfmt}
mkdir -p "$work/alog"
read -r port_dns_alog <<< "$(free_ports 1)"
write_mesd_config "$work/alog" "$port_dns_alog" 127.243.0.0/16
printf 'proxy:\n  accessLog: {path: %s, format: %s}\n' "$work/alog/access.log" "$alog_format" >> "$work/alog/mesd.yaml"
vip_alog=$("$mesctl" --config "$work/alog/mesd.yaml" apply -f "$work/mes.yaml" | awk '/web/ { print $NF }')
pid_plain=$pid_mesd
start_mesd "$work/alog"
pid_alog=$pid_mesd; pid_mesd=$pid_plain
url_alog=http://$vip_alog:$port_web
wait_http "$url_alog/1k" "mesd (access log)" "$work/alog/mesd.log" "$pid_alog"
alog_results=$work/alog/results
: > "$alog_results"
for round in $(seq 1 "$alog_rounds"); do
    for test in 1k-close 1k-ka; do
        extra=(); [ "$test" = 1k-close ] && extra=(-H 'Connection: close')
        echo "$test off $(measure_wrk "${url[mesd]}/1k" "$pid_plain" ${extra[@]+"${extra[@]}"})" >> "$alog_results"
        echo "$test on $(measure_wrk "$url_alog/1k" "$pid_alog" ${extra[@]+"${extra[@]}"})" >> "$alog_results"
    done
done
alog_lines=$(wc -l < "$work/alog/access.log")
alog_bytes=$(wc -c < "$work/alog/access.log")
running "$pid_alog" || { echo "bench-proxy: mesd with the access log died"; tail -n 20 "$work/alog/mesd.log"; exit 1; }
stop "$pid_alog" || true
# Lines of $alog_results: "TEST off|on req_per_s p99_ms proxy_cpu_s req_per_proxy_cpu_s errors".
amed() { awk -v s="$1" -v t="$2" -v c="$3" '$1 == s && $2 == t { print $c }' "$alog_results" | median; }
echo
echo "access log ($alog_format, to a file): mesd alone, off against on, $alog_rounds interleaved rounds of ${duration}s (wrk -t1 -c50)"
printf '%-9s %-4s %10s %9s %12s %16s %7s\n' test log req/s p99_ms proxy_cpu_s req/proxy_cpu_s errors
for test in 1k-close 1k-ka; do
    for t in off on; do
        printf '%-9s %-4s %10.0f %9.3f %12.2f %16.0f %7s\n' "$test" "$t" "$(amed "$test" "$t" 3)" "$(amed "$test" "$t" 4)" \
            "$(amed "$test" "$t" 5)" "$(amed "$test" "$t" 6)" \
            "$(awk -v s="$test" -v t="$t" '$1 == s && $2 == t { e += $7 } END { print e + 0 }' "$alog_results")"
    done
    printf '%-9s on/off: req/s %sx, req per proxy CPU s %sx, p99 %sx\n' "$test" "$(ratio "$(amed "$test" on 3)" "$(amed "$test" off 3)")" \
        "$(ratio "$(amed "$test" on 6)" "$(amed "$test" off 6)")" "$(ratio "$(amed "$test" on 4)" "$(amed "$test" off 4)")"
done
awk -v n="$alog_lines" -v b="$alog_bytes" 'BEGIN { printf "access log: %d lines, %.0f bytes per line\n", n, n ? b / n : 0 }'

# ---- mesd's health over the runs -------------------------------------------------------------
echo
[ -n "$metrics" ] && { echo "mesd counters:"; sed 's/^/  /' <<< "$metrics"; }
# report_mesd_health exits 1 here if mesd died in the runs above, before the sweep.
report_mesd_health

# ---- worker sweep --------------------------------------------------------------------------
# mesd again on the same store and VIPs, worker i pinned to the i-th CPU it may use.
mkdir -p "$work/sweep"
{ cat "$work/mesd.yaml"; echo "workerAffinity: auto"; } > "$work/sweep/mesd.yaml"
stop "$pid_haproxy" || true
stop "$pid_nginx" || true
sweep=$work/sweep/results
: > "$sweep"
sweep_crashes=()
echo
echo "worker sweep: 1 KiB keep-alive and a connection per request, $rounds interleaved rounds of ${duration}s at N = ${sweep_ns// /, }"
[ -n "$sweep_note" ] && echo "  $sweep_note"
for n in $sweep_ns; do
    sweep_cpus "$n"
    # wrk on the first half of the load CPUs, nginx on the rest (both on the one, if one).
    read -r -a load <<< "$(expand_cpus "$gen_cpus")"
    half=$(((${#load[@]} + 1) / 2))
    wrk_list=$(IFS=,; echo "${load[*]:0:$half}")
    ngx_list=$(IFS=,; echo "${load[*]:$half}")
    [ -n "$ngx_list" ] || ngx_list=$wrk_list
    wrk_threads=$half
    nginx_workers=$((${#load[@]} - half)); [ "$nginx_workers" -ge 1 ] || nginx_workers=1
    wrk_conns=$((50 * n)); [ "$wrk_conns" -ge "$wrk_threads" ] || wrk_conns=$wrk_threads
    wrk_prefix=(); nginx_prefix=()
    if [ ${#gen_pin[@]} -gt 0 ]; then wrk_prefix=(taskset -c "$wrk_list"); nginx_prefix=(taskset -c "$ngx_list"); fi
    start_nginx <<EOF
    server {
        listen 127.0.0.1:$port_nginx;
        root $work/www;
    }
EOF
    ha_threads=$n; haproxy_prefix=(${srv_pin[@]+"${srv_pin[@]}"})
    write_haproxy_config <<< "$ha_sections"
    start_haproxy
    mesd_prefix=(${srv_pin[@]+"${srv_pin[@]}"}); mesd_args=(--workers "$n")
    start_mesd "$work/sweep"
    wait_http "${url[direct]}/1k" nginx "$work/nginx.err" "$pid_nginx"
    wait_http "${url[mesd]}/1k" mesd "$work/sweep/mesd.log" "$pid_mesd"
    wait_http "${url[haproxy]}/1k" haproxy "$work/haproxy.out" "$pid_haproxy"
    pid[mesd]=$pid_mesd; pid[haproxy]=$pid_haproxy
    moved=""
    if [ ${#srv_pin[@]} -gt 0 ]; then for t in mesd haproxy; do moved="$moved$(confine "${pid[$t]}" "$srv_cpus")"; done; fi
    echo "  N=$n: proxies on CPUs $srv_cpus, wrk -t$wrk_threads -c$wrk_conns on $wrk_list, nginx $nginx_workers worker(s) on $ngx_list${moved:+ (moved back onto $srv_cpus: $moved)}"
    for round in $(seq 1 "$rounds"); do
        for test in 1k-ka 1k-close; do
            extra=(); [ "$test" = 1k-close ] && extra=(-H 'Connection: close')
            for t in $targets; do
                figures=$(measure_wrk "${url[$t]}/1k" "${pid[$t]}" ${extra[@]+"${extra[@]}"})
                if [ "$t" = mesd ] && ! running "$pid_mesd"; then
                    # Left out of the medians; mesd is started again for the next run.
                    wait "$pid_mesd" 2> /dev/null || true
                    stopped[$pid_mesd]=1
                    sweep_crashes+=("N=$n $test round $round")
                    { echo "--- mesd died at N=$n, $test, round $round"; cat "$work/sweep/mesd.log"; } >> "$work/sweep/mesd-all.log"
                    start_mesd "$work/sweep"; pid[mesd]=$pid_mesd
                    wait_http "${url[mesd]}/1k" mesd "$work/sweep/mesd.log" "$pid_mesd"
                    continue
                fi
                echo "$n $test $t $figures" >> "$sweep"
            done
        done
        echo "  N=$n: round $round of $rounds done"
    done
    stop "$pid_mesd" || true; stop "$pid_haproxy" || true; stop "$pid_nginx" || true
done

smed() {  # smed N TEST TARGET COLUMN: the median over the rounds
    awk -v n="$1" -v s="$2" -v t="$3" -v c="$4" '$1 == n && $2 == s && $3 == t { print $c }' "$sweep" | median
}
echo
echo "req/s/core = req/s / N; busy = proxy CPUs busy; eff = req/s / (N x req/s at N=1); mesd/HAProxy = mesd's req/s / HAProxy's;"
echo "load-bound: within 10% of direct, the most wrk and nginx carried on their CPUs"
printf '\n%-9s %3s %-8s %10s %10s %6s %15s %6s %9s %7s %12s %s\n' test N target req/s req/s/core busy req/proxy_cpu_s eff p99_ms errors mesd/HAProxy note
for test in 1k-ka 1k-close; do
    for n in $sweep_ns; do
        for t in $targets; do
            r1=0
            [[ " $sweep_ns " == *" 1 "* ]] && r1=$(smed 1 "$test" "$t" 4)
            errors=$(awk -v n="$n" -v s="$test" -v t="$t" '$1 == n && $2 == s && $3 == t { e += $8 } END { print e + 0 }' "$sweep")
            awk -v test="$test" -v n="$n" -v t="$t" -v r="$(smed "$n" "$test" "$t" 4)" -v r1="$r1" -v d="$(smed "$n" "$test" direct 4)" \
                -v p99="$(smed "$n" "$test" "$t" 5)" -v cpu="$(smed "$n" "$test" "$t" 6)" -v per="$(smed "$n" "$test" "$t" 7)" \
                -v l="$duration" -v err="$errors" -v rm="$(smed "$n" "$test" mesd 4)" -v rh="$(smed "$n" "$test" haproxy 4)" 'BEGIN {
                proxy = t != "direct"
                printf "%-9s %3d %-8s %10.0f %10s %6s %15s %6s %9.3f %7d %12s %s\n", test, n, t, r,
                    proxy ? sprintf("%.0f", r / n) : "-", proxy ? sprintf("%.2f", cpu / l) : "-", proxy ? sprintf("%.0f", per) : "-",
                    proxy && r1 ? sprintf("%.2f", r / (n * r1)) : "-", p99, err,
                    t == "haproxy" && rh ? sprintf("%.2fx", rm / rh) : "-", (proxy && d && r >= 0.9 * d) ? "load-bound" : "" }'
        done
    done
done
if [ "${#sweep_crashes[@]}" -gt 0 ]; then
    echo "mesd DIED ${#sweep_crashes[@]} time(s) in the sweep; those runs are left out of the medians:"
    printf '  %s\n' "${sweep_crashes[@]}"
    head -n 30 "$work/sweep/mesd-all.log" | sed 's/^/  /'
    exit 1
fi
