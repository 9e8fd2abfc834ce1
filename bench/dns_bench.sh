#!/usr/bin/env bash
# bench-dns: the same zone of generated names served by mesd, Knot and NSD on loopback,
# driven by dnsperf, at N = 1, 2, 4 and 8 workers each (mesd --workers N with workerAffinity
# auto, Knot udp-workers N, NSD server-count N). Rounds are interleaved (mesd, knot, nsd,
# mesd, ...) because these machines are shared and noisy; the figures printed are medians
# over the rounds.
#
#   bench/dns_bench.sh [BUILD_DIR]      ROUNDS=4 DURATION=15 CLIENTS=10 NAMES=10000 BIG=100000 PIN=1
#                                       WORKERS="1 2 4 8"
#
# At each N, for each server and query mix (100% hits, 10% NXDOMAIN): queries per second,
# average and p99 latency (from dnsperf -v), server CPU seconds per 100k queries and queries
# per server CPU second. The one-worker table and its targets (mesd/Knot) come first; then
# the sweep: per N, qps per server CPU, the server CPUs busy, scaling efficiency (qps at N
# over N times qps at 1) and mesd's qps over each peer's. Then RSS at NAMES and BIG names and
# the time from start to the first answer at BIG names, one worker each.
#
# With PIN=1 (the default) every server of a round at N runs on the first N CPUs this script
# may use and dnsperf on the others (-T one thread per CPU, up to CLIENTS x N clients); N is
# left out where fewer than N CPUs would be left for dnsperf (on two CPUs only N = 1 runs:
# servers on CPU 0, dnsperf on CPU 1). Left to the scheduler, a server shares a CPU with
# dnsperf in some runs and not in others, and a server that waits behind dnsperf answers in
# larger, later batches for less CPU per query; where dnsperf is the bottleneck that effect
# decides the ratio more than the servers' own costs do. Knot pins its UDP workers to CPUs 0,
# 1, ... by itself, whatever taskset allowed; they are moved back onto the N CPUs given to it
# (see confine in lib.sh). gen_cores in the sweep is dnsperf's CPU: near the number of CPUs it
# has, the generator and not the server set the figure.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

bench_name=bench-dns
build=${1:-build}
rounds=${ROUNDS:-4}
duration=${DURATION:-15}
clients=${CLIENTS:-10}
names=${NAMES:-10000}
big=${BIG:-100000}
mesd=$build/cmd/mesd
mesctl=$build/cmd/mesctl

require_tools dnsperf knotd dig awk
wait_for_build
sweep_plan "${WORKERS:-1 2 4 8}"
[ -n "$sweep_ns" ] || { echo "bench-dns: nothing to run: $sweep_note"; exit 1; }
start_work bench-dns

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
    # Worker i on the i-th CPU mesd may run on, as Knot pins its UDP workers.
    printf 'workerAffinity: auto\n' >> "$dir/mesd.yaml"
    "$mesctl" --config "$dir/mesd.yaml" apply -f "$dir/mes.yaml" > /dev/null
}

queries() {  # queries N NX_PERCENT FILE
    awk -v n="$1" -v nx="$2" 'BEGIN { srand(1); for (i = 0; i < 200000; i++) {
        if (rand() * 100 < nx) printf "nx-%d.mesh A\n", i; else printf "svc-%d.mesh A\n", int(rand() * n) } }' > "$3"
}

# ---- servers -------------------------------------------------------------------------------
start_knot() {  # start_knot DIR PORT [WORKERS]
    mkdir -p "$1/knot"
    cat > "$1/knot.conf" <<EOF
server:
    listen: 127.0.0.1@$2
    udp-workers: ${3:-1}
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
    ${srv_pin[@]+"${srv_pin[@]}"} knotd -c "$1/knot.conf" > "$1/knot.out" 2> "$1/knot.log" &
    echo $!
}
start_nsd() {  # start_nsd DIR PORT [WORKERS]: with reuseport each server process has a socket of its own
    mkdir -p "$1/nsd"
    cat > "$1/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@$2
    server-count: ${3:-1}
    reuseport: yes
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
    ${srv_pin[@]+"${srv_pin[@]}"} nsd -d -c "$1/nsd.conf" > "$1/nsd.out" 2> "$1/nsd.log" &
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

# One dnsperf run against PORT served by PID, with the sweep's dnsperf settings (gen_pin,
# dnsperf_args): "qps avg_ms p99_ms cpu_s_per_100k q_per_cpu_s server_cores gen_cores".
# p99 from every answer's latency (dnsperf -v), counted per microsecond rather than sorted,
# as a run at several workers prints millions of them.
measure() {  # measure PORT PID FILE
    local before after times TIMEFORMAT='%R %U %S'
    before=$(cpu_ticks "$2")
    { time ${gen_pin[@]+"${gen_pin[@]}"} timeout -k 5 $((duration + 30)) dnsperf -s 127.0.0.1 -p "$1" -d "$3" -l "$duration" \
        "${dnsperf_args[@]}" -v > "$work/run.out" 2>&1; } 2> "$work/time.out" || true
    after=$(cpu_ticks "$2")
    times=$(tail -n 1 "$work/time.out")
    local p99
    p99=$(awk '/^> / { h[int($NF * 1e6 + 0.5)]++ } END { for (k in h) print k, h[k] }' "$work/run.out" | sort -n |
          awk '{ k[NR] = $1; c[NR] = $2; n += $2 } END { want = n * 0.99; for (i = 1; i <= NR; i++) { s += c[i]; if (s >= want) { print k[i] / 1e6; exit } } print 0 }')
    awk -v ticks=$((after - before)) -v hz="$tick" -v p99="$p99" -v times="$times" -v l="$duration" '
        /^> / { sum += $NF; n++ }
        /Queries per second/ { qps = $4 }
        /Queries completed/ { done = $3 }
        END {
            cpu = ticks / hz
            split(times, t, " ")
            printf "%.0f %.3f %.3f %.3f %.0f %.2f %.2f\n", qps, n ? 1000 * sum / n : 0, 1000 * p99,
                   done ? 100000 * cpu / done : 0, cpu ? done / cpu : 0, cpu / l, t[1] ? (t[2] + t[3]) / t[1] : 0
        }' "$work/run.out"
}

read -r port_mesd port_knot port_nsd <<< "$(free_ports 3)"
make_data "$names" "$work/small" "$port_mesd"
queries "$names" 0 "$work/hits.txt"
queries "$names" 10 "$work/nx.txt"
servers="mesd knot"
command -v nsd > /dev/null && servers="mesd knot nsd"

echo "bench-dns: $names names, $rounds interleaved rounds of ${duration}s at N = ${sweep_ns// /, } workers per server, dnsperf -c $clients per worker"
[ -n "$sweep_note" ] && echo "  $sweep_note"

results=$work/results
: > "$results"
declare -A pid port rss_small
port[mesd]=$port_mesd; port[knot]=$port_knot; port[nsd]=$port_nsd
for n in $sweep_ns; do
    sweep_cpus "$n"
    # Clients and outstanding queries grow with N so that each worker sees the load one did at
    # N = 1; one dnsperf thread per generator CPU, no more than there are clients.
    nclients=$((clients * n))
    read -r -a gen_list <<< "$(expand_cpus "$gen_cpus")"
    threads=${#gen_list[@]}
    [ "$threads" -gt "$nclients" ] && threads=$nclients
    dnsperf_args=(-c "$nclients" -T "$threads" -q $((100 * n)))
    mesd_prefix=(${srv_pin[@]+"${srv_pin[@]}"}); mesd_args=(--workers "$n")
    start_mesd "$work/small"; pid[mesd]=$pid_mesd
    pid[knot]=$(start_knot "$work/small" "$port_knot" "$n"); pids+=("${pid[knot]}")
    [[ $servers == *nsd* ]] && { pid[nsd]=$(start_nsd "$work/small" "$port_nsd" "$n"); pids+=("${pid[nsd]}"); }
    for s in $servers; do
        wait_answer "${port[$s]}" "$names" "$(date +%s.%N)" > /dev/null || { echo "$s does not answer"; cat "$work/small/$s.log"; exit 1; }
    done
    moved=""
    if [ ${#srv_pin[@]} -gt 0 ]; then for s in $servers; do moved="$moved$(confine "${pid[$s]}" "$srv_cpus")"; done; fi
    echo "  N=$n: servers on CPUs $srv_cpus, dnsperf -c $nclients -T $threads on CPUs $gen_cpus${moved:+ (moved back onto $srv_cpus: $moved)}"
    for round in $(seq 1 "$rounds"); do
        for mix in hits nx; do
            for s in $servers; do
                echo "$n $s $mix $(measure "${port[$s]}" "${pid[$s]}" "$work/$mix.txt")" >> "$results"
                running "${pid[$s]}" || { echo "bench-dns: $s died at N=$n:"; tail -n 20 "$work/small/$s.log"; exit 1; }
            done
        done
        echo "  N=$n: round $round of $rounds done"
    done
    for s in $servers; do
        [ "$n" = 1 ] && rss_small[$s]=$(rss_mb "${pid[$s]}")
        stop "${pid[$s]}" || true
    done
done

# The median of COLUMN over the rounds of server S, mix M at N workers.
med() {  # med N S M COLUMN
    awk -v n="$1" -v s="$2" -v m="$3" -v c="$4" '$1 == n && $2 == s && $3 == m { print $c }' "$results" | median
}
if [[ " $sweep_ns " == *" 1 "* ]]; then
    printf '\none worker each\n%-6s %-5s %10s %9s %9s %12s %14s\n' server mix qps avg_ms p99_ms cpu_s/100k queries/cpu_s
    for mix in hits nx; do
        for s in $servers; do
            row=""
            for c in 4 5 6 7 8; do row="$row $(med 1 "$s" "$mix" "$c")"; done
            # shellcheck disable=SC2086
            printf '%-6s %-5s %10.0f %9.3f %9.3f %12.3f %14.0f\n' "$s" "$mix" $row
        done
    done
    echo
    for mix in hits nx; do
        awk -v m="$mix" -v qm="$(med 1 mesd "$mix" 8)" -v qk="$(med 1 knot "$mix" 8)" -v pm="$(med 1 mesd "$mix" 6)" -v pk="$(med 1 knot "$mix" 6)" 'BEGIN {
            printf "mesd/knot %-5s queries per server CPU second %.2fx (target >= 1.2x), p99 %.2fx (target <= 1.0x)\n", m, qk ? qm / qk : 0, pk ? pm / pk : 0 }'
    done
fi

# The sweep: per N, qps per server CPU, scaling efficiency and mesd's qps over each peer's.
echo
echo "worker sweep (medians over $rounds rounds): qps/core = qps / N; busy = server CPUs busy; eff = qps / (N x qps at N=1);"
echo "gen = dnsperf's CPUs busy; mesd/peer = mesd's qps / this server's qps"
for mix in hits nx; do
    printf '\n%-5s %3s %-6s %10s %10s %6s %10s %6s %8s %8s %6s %10s\n' mix N server qps qps/core busy q/cpu_s eff avg_ms p99_ms gen mesd/peer
    for n in $sweep_ns; do
        for s in $servers; do
            qps=$(med "$n" "$s" "$mix" 4)
            q1=$( [[ " $sweep_ns " == *" 1 "* ]] && med 1 "$s" "$mix" 4 || echo 0)
            qm=$(med "$n" mesd "$mix" 4)
            awk -v mix="$mix" -v n="$n" -v s="$s" -v q="$qps" -v q1="$q1" -v qm="$qm" -v busy="$(med "$n" "$s" "$mix" 9)" \
                -v qc="$(med "$n" "$s" "$mix" 8)" -v avg="$(med "$n" "$s" "$mix" 5)" -v p99="$(med "$n" "$s" "$mix" 6)" \
                -v gen="$(med "$n" "$s" "$mix" 10)" 'BEGIN {
                eff = q1 ? sprintf("%.2f", q / (n * q1)) : "-"
                ratio = s == "mesd" ? "-" : (q ? sprintf("%.2fx", qm / q) : "-")
                printf "%-5s %3d %-6s %10.0f %10.0f %6.2f %10.0f %6s %8.3f %8.3f %6.2f %10s\n", mix, n, s, q, q / n, busy, qc, eff, avg, p99, gen, ratio }'
        done
    done
done

# ---- memory and start-up at BIG names ------------------------------------------------------
echo
[ -n "${rss_small[mesd]:-}" ] &&
    echo "RSS after the runs at $names names, one worker: $(for s in $servers; do printf '%s %s MB  ' "$s" "${rss_small[$s]}"; done)"
# One worker each, on the first CPU, dnsperf on the others.
sweep_cpus 1
dnsperf_args=(-c "$clients")
mesd_prefix=(${srv_pin[@]+"${srv_pin[@]}"}); mesd_args=(--workers 1)
read -r big_port big_knot big_nsd <<< "$(free_ports 3)"
make_data "$big" "$work/big" "$big_port"
queries "$big" 0 "$work/big-hits.txt"
for s in $servers; do
    start=$(date +%s.%N)
    case $s in
        mesd) start_mesd "$work/big"; p=$pid_mesd; bp=$big_port ;;
        knot) p=$(start_knot "$work/big" "$big_knot"); bp=$big_knot ;;
        nsd) p=$(start_nsd "$work/big" "$big_nsd"); bp=$big_nsd ;;
    esac
    [ "$s" = mesd ] || pids+=("$p")
    first=$(wait_answer "$bp" "$big" "$start")
    [ ${#srv_pin[@]} -gt 0 ] && confine "$p" "$srv_cpus" > /dev/null
    ${gen_pin[@]+"${gen_pin[@]}"} timeout -k 5 35 dnsperf -s 127.0.0.1 -p "$bp" -d "$work/big-hits.txt" -l 5 -c "$clients" > /dev/null 2>&1 || true
    printf '%-5s at %d names: first answer %s s after start, RSS %s MB\n' "$s" "$big" "$first" "$(rss_mb "$p")"
    stop "$p" || true
done
echo "targets: mesd RSS <= 20 MB and first answer < 0.25 s at $big names"
