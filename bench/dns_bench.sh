#!/usr/bin/env bash
# bench-dns: the same zone of generated names served by mesd, Knot and NSD, one worker each,
# on loopback, driven by dnsperf. Rounds are interleaved (mesd, knot, nsd, mesd, ...) because
# these machines are shared and noisy; the figures printed are medians over the rounds.
#
#   bench/dns_bench.sh [BUILD_DIR]      ROUNDS=4 DURATION=15 CLIENTS=10 NAMES=10000 BIG=100000 PIN=1
#
# For each server and query mix (100% hits, 10% NXDOMAIN): queries per second, average and
# p99 latency (from dnsperf -v), server CPU seconds per 100k queries and queries per server
# CPU second; then RSS at NAMES and BIG names and the time from start to the first answer at
# BIG names. Ratios are mesd/Knot.
#
# With PIN=1 (the default) on a machine of two or more CPUs, every server runs on CPU 0 and
# dnsperf on CPU 1. Knot pins its UDP worker to CPU 0 by itself; left to the scheduler, the
# others share a CPU with dnsperf in some runs and not in others, and a server that waits
# behind dnsperf answers in larger, later batches for less CPU per query. On a machine where
# dnsperf is the bottleneck that effect decides the ratio more than the servers' own costs do.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

build=${1:-build}
rounds=${ROUNDS:-4}
duration=${DURATION:-15}
clients=${CLIENTS:-10}
names=${NAMES:-10000}
big=${BIG:-100000}
mesd=$build/cmd/mesd
mesctl=$build/cmd/mesctl
server_cpu=()
client_cpu=()
if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    server_cpu=(taskset -c 0)
    client_cpu=(taskset -c 1)
fi
mesd_prefix=("${server_cpu[@]}")

work=$(mktemp -d /tmp/mesd-bench-dns-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# ---- data: the same names for every server --------------------------------------------------
make_data() {  # make_data N DIR
    local n=$1 dir=$2
    mkdir -p "$dir"
    awk -v n="$n" 'BEGIN {
        print "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n  template: \"{{ .Name }}.mesh\""
        for (i = 0; i < n; i++)
            printf "---\ntype: MeshExternalService\nname: svc-%d\nspec:\n  match: {port: 80}\n  endpoints: [{address: 10.0.0.1, port: 80}]\n", i
    }' > "$dir/mes.yaml"
    # VIPs are handed out in order from 127.240.0.1 (the first address of the pool).
    awk -v n="$n" 'BEGIN {
        print "$ORIGIN mesh.\n$TTL 30"
        print "@ SOA localhost. hostmaster.mesh. 1 3600 600 86400 30"
        print "@ NS localhost."
        for (i = 0; i < n; i++) { v = i + 1; printf "svc-%d A 127.%d.%d.%d\n", i, 240 + int(v / 65536), int(v / 256) % 256, v % 256 }
    }' > "$dir/mesh.zone"
    write_mesd_config "$dir" "$3" 127.240.0.0/12
    # The proxy in redirect mode, as a store this size needs: it holds nothing for a MES until
    # a connection needs it (bind mode would open a listener per MES, and 100,000 of them
    # would exceed the open-files limit).
    printf 'proxy:\n  mode: redirect\n  redirectListen: 127.0.0.1:0\n' >> "$dir/mesd.yaml"
    "$mesctl" --config "$dir/mesd.yaml" apply -f "$dir/mes.yaml" > /dev/null
}

queries() {  # queries N NX_PERCENT FILE
    awk -v n="$1" -v nx="$2" 'BEGIN { srand(1); for (i = 0; i < 200000; i++) {
        if (rand() * 100 < nx) printf "nx-%d.mesh A\n", i; else printf "svc-%d.mesh A\n", int(rand() * n) } }' > "$3"
}

# ---- servers -------------------------------------------------------------------------------
start_knot() {  # start_knot DIR PORT
    mkdir -p "$1/knot"
    cat > "$1/knot.conf" <<EOF
server:
    listen: 127.0.0.1@$2
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
    rundir: $1/knot
log:
  - target: stderr
    any: error
database:
    storage: $1/knot
template:
  - id: default
    storage: $1
    semantic-checks: off
zone:
  - domain: mesh
    file: mesh.zone
EOF
    "${server_cpu[@]}" knotd -c "$1/knot.conf" > "$1/knot.out" 2> "$1/knot.log" &
    echo $!
}
start_nsd() {  # start_nsd DIR PORT
    mkdir -p "$1/nsd"
    cat > "$1/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@$2
    server-count: 1
    minimal-responses: yes
    rrl-ratelimit: 0
    username: ""
    chroot: ""
    zonesdir: "$1"
    pidfile: "$1/nsd/nsd.pid"
    database: ""
    zonelistfile: "$1/nsd/zone.list"
    xfrdfile: "$1/nsd/xfrd.state"
    xfrdir: "$1/nsd"
    verbosity: 0
remote-control:
    control-enable: no
zone:
    name: mesh
    zonefile: mesh.zone
EOF
    "${server_cpu[@]}" nsd -d -c "$1/nsd.conf" > "$1/nsd.out" 2> "$1/nsd.log" &
    echo $!
}

# Waits until PORT answers svc-(N-1).mesh; prints the seconds since START (date +%s.%N).
wait_answer() {  # wait_answer PORT N START
    local want
    want=$(awk -v i="$(($2 - 1))" 'BEGIN { v = i + 1; printf "127.%d.%d.%d", 240 + int(v / 65536), int(v / 256) % 256, v % 256 }')
    for _ in $(seq 1 500); do
        if [ "$(dig @127.0.0.1 -p "$1" "svc-$(($2 - 1)).mesh" +short +time=1 +tries=1 2>/dev/null)" = "$want" ]; then
            awk -v s="$3" -v e="$(date +%s.%N)" 'BEGIN { printf "%.3f", e - s }'
            return 0
        fi
        sleep 0.01
    done
    echo "never"
    return 1
}

# One dnsperf run against PORT served by PID: "qps avg_ms p99_ms cpu_s_per_100k q_per_cpu_s".
measure() {  # measure PORT PID FILE
    local before after
    before=$(cpu_ticks "$2")
    "${client_cpu[@]}" dnsperf -s 127.0.0.1 -p "$1" -d "$3" -l "$duration" -c "$clients" -v > "$work/run.out" 2>&1
    after=$(cpu_ticks "$2")
    local p99
    p99=$(awk '/^> / { print $NF }' "$work/run.out" | sort -g |
          awk '{ v[NR] = $1 } END { i = int(NR * 0.99) + 1; if (i > NR) i = NR; if (NR) print v[i]; else print 0 }')
    awk -v ticks=$((after - before)) -v hz="$tick" -v p99="$p99" '
        /^> / { sum += $NF; n++ }
        /Queries per second/ { qps = $4 }
        /Queries completed/ { done = $3 }
        END {
            cpu = ticks / hz
            printf "%.0f %.3f %.3f %.3f %.0f\n", qps, n ? 1000 * sum / n : 0, 1000 * p99,
                   done ? 100000 * cpu / done : 0, cpu ? done / cpu : 0
        }' "$work/run.out"
}

echo "bench-dns: $names names, $rounds interleaved rounds of ${duration}s, dnsperf -c $clients, one worker per server$([ ${#server_cpu[@]} -gt 0 ] && echo ", servers on CPU 0 and dnsperf on CPU 1")"
read -r port_mesd port_knot port_nsd <<< "$(free_ports 3)"
make_data "$names" "$work/small" "$port_mesd"
queries "$names" 0 "$work/hits.txt"
queries "$names" 10 "$work/nx.txt"

declare -A pid port
pid[mesd]=$(start_mesd "$work/small" && echo "$pid_mesd"); pids+=("${pid[mesd]}"); port[mesd]=$port_mesd
pid[knot]=$(start_knot "$work/small" "$port_knot"); pids+=("${pid[knot]}"); port[knot]=$port_knot
servers="mesd knot"
if command -v nsd > /dev/null; then
    pid[nsd]=$(start_nsd "$work/small" "$port_nsd"); pids+=("${pid[nsd]}"); port[nsd]=$port_nsd
    servers="mesd knot nsd"
fi
for s in $servers; do
    wait_answer "${port[$s]}" "$names" "$(date +%s.%N)" > /dev/null || { echo "$s does not answer"; exit 1; }
done

results=$work/results
: > "$results"
for round in $(seq 1 "$rounds"); do
    for mix in hits nx; do
        for s in $servers; do
            echo "$s $mix $(measure "${port[$s]}" "${pid[$s]}" "$work/$mix.txt")" >> "$results"
        done
    done
    echo "  round $round of $rounds done"
done
declare -A rss_small
for s in $servers; do rss_small[$s]=$(rss_mb "${pid[$s]}"); kill "${pid[$s]}"; done
wait 2>/dev/null || true

printf '\n%-6s %-5s %10s %9s %9s %12s %14s\n' server mix qps avg_ms p99_ms cpu_s/100k queries/cpu_s
for mix in hits nx; do
    for s in $servers; do
        row=""
        for col in 3 4 5 6 7; do
            row="$row $(awk -v s="$s" -v m="$mix" -v c="$col" '$1 == s && $2 == m { print $c }' "$results" | median)"
        done
        # shellcheck disable=SC2086
        printf '%-6s %-5s %10.0f %9.3f %9.3f %12.3f %14.0f\n' "$s" "$mix" $row
    done
done
echo
for mix in hits nx; do
    qm=$(awk -v m="$mix" '$1 == "mesd" && $2 == m { print $7 }' "$results" | median)
    qk=$(awk -v m="$mix" '$1 == "knot" && $2 == m { print $7 }' "$results" | median)
    pm=$(awk -v m="$mix" '$1 == "mesd" && $2 == m { print $5 }' "$results" | median)
    pk=$(awk -v m="$mix" '$1 == "knot" && $2 == m { print $5 }' "$results" | median)
    awk -v m="$mix" -v qm="$qm" -v qk="$qk" -v pm="$pm" -v pk="$pk" 'BEGIN {
        printf "mesd/knot %-5s queries per server CPU second %.2fx (target >= 1.2x), p99 %.2fx (target <= 1.0x)\n", m, qm / qk, pm / pk }'
done

# ---- memory and start-up at BIG names ------------------------------------------------------
echo
echo "RSS after the runs at $names names: $(for s in $servers; do printf '%s %s MB  ' "$s" "${rss_small[$s]}"; done)"
read -r big_port big_knot big_nsd <<< "$(free_ports 3)"
make_data "$big" "$work/big" "$big_port"
queries "$big" 0 "$work/big-hits.txt"
for s in $servers; do
    start=$(date +%s.%N)
    case $s in
        mesd) p=$(start_mesd "$work/big" && echo "$pid_mesd"); bp=$big_port ;;
        knot) p=$(start_knot "$work/big" "$big_knot"); bp=$big_knot ;;
        nsd) p=$(start_nsd "$work/big" "$big_nsd"); bp=$big_nsd ;;
    esac
    pids+=("$p")
    first=$(wait_answer "$bp" "$big" "$start")
    "${client_cpu[@]}" dnsperf -s 127.0.0.1 -p "$bp" -d "$work/big-hits.txt" -l 5 -c "$clients" > /dev/null 2>&1
    printf '%-5s at %d names: first answer %s s after start, RSS %s MB\n' "$s" "$big" "$first" "$(rss_mb "$p")"
    kill "$p"
    wait "$p" 2>/dev/null || true
done
echo "targets: mesd RSS <= 20 MB and first answer < 0.25 s at $big names"
