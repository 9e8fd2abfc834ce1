#!/usr/bin/env bash
# bench-dns-types: whether one query type is a lever against the others. One mesd (1,000 MES,
# two hostnames each) on loopback; dnsperf at full speed with A, TXT and PTR hits in turn
# (queries per second, mesd's CPU); then a flood of each type from one dnsperf while a second
# sends A hits at a fixed rate, and how many of those the flood cost (the flood asks for
# 100,000 and 200,000 queries a second with up to 8,000 outstanding). Usage:
#   bench/dns_types_bench.sh BUILD_DIR [MESD_BINARY]
# (a second binary, such as an older build, is measured the same way for comparison).
set -euo pipefail
build=${1:-build}
mesd=${2:-$build/cmd/mesd}
mesctl=$build/cmd/mesctl
duration=${DURATION:-4}
legit_rate=${LEGIT_QPS:-5000}
command -v dnsperf > /dev/null || { echo "bench-dns-types: dnsperf is missing (make bench-deps)"; exit 1; }

work=$(mktemp -d /tmp/mesd-dns-types-XXXXXX)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2> /dev/null && wait "$pid" 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/mesd.yaml" <<EOF
dataDir: $work/store
vip:
  ipv4: 127.240.0.0/16
dns:
  listen: ["127.0.0.1:$port"]
  forward:
    enabled: false
admin:
  listen: 127.0.0.1:0
proxy:
  mode: redirect
  redirectListen: 127.0.0.1:0
log:
  level: warn
EOF
n=1000
awk -v n="$n" 'BEGIN {
    print "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n  template: \"{{ .Name }}.mesh\""
    print "---\ntype: HostnameGenerator\nname: alt\nspec:\n  selector:\n    meshExternalService: {}\n  template: \"{{ .Name }}.alt.mesh\""
    for (i = 0; i < n; i++)
        printf "---\ntype: MeshExternalService\nname: svc-%d\nspec:\n  match: {port: 443}\n  endpoints: [{address: svc-%d.example.com, port: 443}]\n  tls: {enabled: true}\n", i, i
}' > "$work/mes.yaml"
"$mesctl" --config "$work/mesd.yaml" apply -f "$work/mes.yaml" > /dev/null
# VIPs are handed out in order from 127.240.0.1.
awk -v n="$n" 'BEGIN { srand(1); for (i = 0; i < 100000; i++) {
    k = int(rand() * n); v = k + 1
    printf "svc-%d.mesh A\n", k > "'"$work"'/a.txt"
    printf "svc-%d.mesh TXT\n", k > "'"$work"'/txt.txt"
    printf "%d.%d.240.127.in-addr.arpa PTR\n", v % 256, int(v / 256) > "'"$work"'/ptr.txt"
} }'

"$mesd" --config "$work/mesd.yaml" > "$work/mesd.out" 2> "$work/mesd.log" &
pid=$!
for _ in $(seq 1 100); do dig @127.0.0.1 -p "$port" +short +tries=1 +time=1 svc-1.mesh > /dev/null 2>&1 && break; sleep 0.1; done

cpu() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
tick=$(getconf CLK_TCK)
echo "bench-dns-types: $mesd, $n MES, ${duration}s runs, dnsperf -c 40 -T 8"
printf '%-5s %12s %18s\n' type "queries/s" "mesd CPU us/query"
for t in a txt ptr; do
    before=$(cpu)
    out=$(dnsperf -s 127.0.0.1 -p "$port" -d "$work/$t.txt" -l "$duration" -c 40 -T 8 -q 4000 2>&1)
    after=$(cpu)
    qps=$(awk '/Queries per second/ { print $4 }' <<< "$out")
    done_q=$(awk '/Queries completed/ { print $3 }' <<< "$out")
    awk -v t="$t" -v q="$qps" -v c="$((after - before))" -v tick="$tick" -v n="$done_q" \
        'BEGIN { printf "%-5s %12.0f %18.2f\n", toupper(t), q, c / tick / n * 1e6 }'
done
echo "A hits at $legit_rate/s beside a flood of each type from another dnsperf:"
for rate in 100000 200000; do
    for t in a txt ptr; do
        dnsperf -s 127.0.0.1 -p "$port" -d "$work/$t.txt" -l "$((duration + 1))" -c 40 -T 8 -q 8000 -Q "$rate" \
            > "$work/flood.out" 2>&1 &
        flood=$!
        sleep 0.5
        legit=$(dnsperf -s 127.0.0.1 -p "$port" -d "$work/a.txt" -l "$duration" -Q "$legit_rate" -t 1 2>&1)
        wait "$flood" || true
        fqps=$(awk '/Queries per second/ { print $4 }' "$work/flood.out")
        lost=$(awk '/Queries lost/ { print $3, $4 }' <<< "$legit")
        printf '  %-4s flood asked at %6d/s, answered %8.0f/s: A queries lost %s\n' "$(tr a-z A-Z <<< "$t")" "$rate" "$fqps" "$lost"
    done
done
