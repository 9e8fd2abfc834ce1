#!/usr/bin/env bash
# bench-soak: a million short connections through mesd, then a look at what they left. nginx
# serves a 1 KiB file on loopback behind one MES; wrk (-t1 -c50, a new connection per
# request) runs in 10 s slices until mesd's connection counter has moved by CONNECTIONS or
# MAX_SECONDS have passed. Before and after (once every connection has closed): mesd's open
# descriptors and RSS. Descriptors must come back to where they were, and RSS may grow by
# at most 2 MB (the allocator keeps some pages), else the script exits 1.
#
#   bench/proxy_soak.sh [BUILD_DIR]   CONNECTIONS=1000000 MAX_SECONDS=600
#
# With the sanitizer build (bench/proxy_soak.sh build-sanitize) mesd's leak check runs when
# it stops, and anything it reports fails the run. It stands in for the RSS check there:
# AddressSanitizer holds freed memory in quarantine (256 MB) and maps shadow memory, so RSS
# grows with no leak.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

bench_name=bench-soak
build=${1:-build}
connections=${CONNECTIONS:-1000000}
max_seconds=${MAX_SECONDS:-600}
duration=10
mesd=$build/cmd/mesd
mesctl=$build/cmd/mesctl

require_tools wrk nginx curl
wait_for_build
raise_open_files

start_work bench-soak
reuse_time_wait

read -r port_nginx port_dns port_web <<< "$(free_ports 3)"
mkdir -p "$work/www"
head -c 1024 /dev/urandom > "$work/www/1k"
start_nginx <<EOF
    server {
        listen 127.0.0.1:$port_nginx;
        root $work/www;
    }
EOF
write_mesd_config "$work" "$port_dns" 127.242.0.0/16
cat > "$work/mes.yaml" <<EOF
type: MeshExternalService
name: web
spec:
  match: {port: $port_web, protocol: tcp}
  endpoints: [{address: 127.0.0.1, port: $port_nginx}]
EOF
vip=$("$mesctl" --config "$work/mesd.yaml" apply -f "$work/mes.yaml" | awk '/web/ { print $NF }')
wait_listening "$port_nginx" nginx "$work/nginx.err" "$pid_nginx"
start_mesd "$work"
url=http://$vip:$port_web/1k
wait_http "$url" mesd "$work/mesd.log" "$pid_mesd"
find_admin 40
[ -n "$admin" ] || { echo "bench-soak: mesd's admin endpoint not found"; exit 1; }

metric() { curl -sf --max-time 5 "http://$admin/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
# Until no connection is open (or 30 s).
settle() {
    for _ in $(seq 1 300); do [ "$(metric mesd_proxy_connections_active)" = 0 ] && return 0; sleep 0.1; done
    return 1
}

# A first slice lets the block pool and the allocator reach their working size.
wrk -t1 -c50 -d5s -H "Connection: close" "$url" > /dev/null 2>&1 || true
settle
fd_before=$(fds "$pid_mesd"); rss_before=$(rss_kb "$pid_mesd")
total_before=$(metric mesd_proxy_connections_total)
failed_before=$(metric mesd_proxy_connections_refused_total)
echo "bench-soak: $connections connections through mesd ($url, wrk -t1 -c50, Connection: close), at most ${max_seconds}s"

start=$(date +%s)
done_so_far=0
while [ "$done_so_far" -lt "$connections" ] && [ $(($(date +%s) - start)) -lt "$max_seconds" ]; do
    wrk -t1 -c50 -d"${duration}s" -H "Connection: close" "$url" > "$work/run.out" 2>&1 || true
    running "$pid_mesd" || { echo "bench-soak: mesd died"; exit 1; }
    done_so_far=$(($(metric mesd_proxy_connections_total) - total_before))
    echo "  $done_so_far connections after $(($(date +%s) - start)) s"
done
elapsed=$(($(date +%s) - start))
settle || echo "bench-soak: connections still open 30 s after the load"
fd_after=$(fds "$pid_mesd"); rss_after=$(rss_kb "$pid_mesd")
refused=$(($(metric mesd_proxy_connections_refused_total) - failed_before))

echo
echo "connections: $done_so_far in ${elapsed}s ($((done_so_far / (elapsed > 0 ? elapsed : 1)))/s), refused $refused"
echo "descriptors: $fd_before -> $fd_after"
echo "RSS: $rss_before -> $rss_after KiB"
status=0
[ "$done_so_far" -ge "$connections" ] || { echo "NOT reached: $connections connections within ${max_seconds}s"; status=1; }
[ "$fd_after" -eq "$fd_before" ] || { echo "LEAK: descriptors did not come back"; status=1; }
sanitized=""
ldd "$mesd" 2> /dev/null | grep -q libasan && sanitized=1
if [ -z "$sanitized" ]; then
    [ $((rss_after - rss_before)) -le 2048 ] || { echo "LEAK: RSS grew by more than 2 MB"; status=1; }
fi

report_mesd_health
if grep -q "Sanitizer" "$work/mesd-all.log" 2> /dev/null || [ "$stop_status" -ne 0 ]; then
    echo "mesd's sanitizer or exit status reports a problem"
    status=1
fi
if [ "$status" -eq 0 ]; then
    if [ -n "$sanitized" ]; then echo "no leak: descriptors back to $fd_before, and LeakSanitizer found none"
    else echo "no leak: descriptors back to $fd_before, RSS within 2 MB"; fi
fi
exit "$status"
