# shellcheck shell=bash disable=SC2034,SC2154  # the scripts that source this set and read its variables
# What the benchmark scripts (dns_bench.sh, proxy_bench.sh, tls_bench.sh) share, sourced by
# each: stopping the processes a script started and undoing its sysctl, free ports, a process
# tree's CPU, memory and descriptors, waiting for a server, starting nginx, HAProxy and mesd
# (and mesd again when it dies), one wrk run, the CPUs of a worker sweep, and the medians,
# ratios and verdicts of the reports. The functions read the script's own settings where they need them: work (its temp
# dir), pids (what it started), mesd and mesctl (the binaries), duration, nofile, results,
# port_dns (mesd's DNS port) and bench_name (how its messages start).

# /proc counts CPU time in clock ticks.
tick=$(getconf CLK_TCK)

# ---- before the start ----------------------------------------------------------------------
require_tools() {  # require_tools TOOL...: exits naming the first one missing
    local tool
    for tool in "$@"; do
        command -v "$tool" > /dev/null || { echo "$bench_name: $tool is missing (make bench-deps)"; exit 1; }
    done
}
# Another build may be replacing the binaries right now: give it a moment.
wait_for_build() {
    for _ in $(seq 1 60); do [ -x "$mesd" ] && [ -x "$mesctl" ] && break; sleep 1; done
    [ -x "$mesd" ] && [ -x "$mesctl" ] || { echo "$bench_name: no $mesd or $mesctl (make build)"; exit 1; }
}
# Raises the open files limit to 65536, or as far as the hard limit lets it; sets nofile.
raise_open_files() {
    ulimit -n 65536 2> /dev/null || ulimit -n "$(ulimit -Hn)" 2> /dev/null || true
    nofile=$(ulimit -n)
    if [ "$nofile" = unlimited ]; then nofile=1048576; fi
}

# The script's work dir (sets work) and, on exit or interrupt, the stop of every process in
# pids and the removal of that dir.
start_work() {  # start_work NAME
    work=$(mktemp -d "/tmp/mesd-$1-XXXXXX")
    pids=()
    trap stop_all_and_clean_up EXIT
    trap 'exit 130' INT TERM
}

# ---- processes this script started -----------------------------------------------------------
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
# Connections per request leave sockets in TIME_WAIT: reuse_time_wait lets new connections
# reuse them, and stop_all_and_clean_up puts back the setting it found.
tw_old=""
tw_set=""
reuse_time_wait() {
    tw_old=$(sysctl -n net.ipv4.tcp_tw_reuse 2> /dev/null || echo "")
    if [ -n "$tw_old" ] && [ "$tw_old" != 1 ] && sysctl -qw net.ipv4.tcp_tw_reuse=1 2> /dev/null; then tw_set=1; fi
}
# For the EXIT trap: stops every process in pids, puts back tcp_tw_reuse and removes the
# work dir.
stop_all_and_clean_up() {
    local p
    for p in "${pids[@]:-}"; do [ -n "$p" ] && { stop "$p" || true; }; done
    wait 2> /dev/null || true
    [ -n "$tw_set" ] && sysctl -qw net.ipv4.tcp_tw_reuse="$tw_old" 2> /dev/null || true
    rm -rf "$work"
}

# N distinct free ports on 127.0.0.1 (all bound at once, so no two are the same); without
# python3, N distinct ports drawn from 20000-60000.
free_ports() {  # free_ports N
    python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1" 2> /dev/null ||
        shuf -i 20000-60000 -n "$1" | paste -sd ' ' -
}

# ---- a process and its descendants -----------------------------------------------------------
# A process and all its descendants (nginx serves from a child of the process started, NSD
# from a grandchild).
tree() {
    local p
    echo "$1"
    for p in $(pgrep -P "$1" 2>/dev/null); do tree "$p"; done
}
# CPU of a server and its descendants.
cpu_ticks() {
    local total=0 p
    for p in $(tree "$1"); do
        # utime and stime, counted after the command name, which may hold spaces ("nsd: main").
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
# "RSS MB (anonymous MB)": file-backed pages (a mapped store, mapped zone files, the binary)
# count in RSS but are page cache the kernel can drop; the anonymous part is the server's own
# memory.
rss_mb() {
    awk -v kb="$(rss_kb "$1")" -v an="$(rss_kb "$1" RssAnon)" 'BEGIN { printf "%.1f (anon %.1f)", kb / 1024, an / 1024 }'
}
fds() {  # open descriptors of a process tree
    local total=0 p
    for p in $(tree "$1"); do total=$((total + $(ls "/proc/$p/fd" 2>/dev/null | wc -l))); done
    echo "$total"
}

# ---- servers -------------------------------------------------------------------------------
# Is 127.0.0.1:PORT listening (from /proc, so no connection is made to the server)?
listening() {
    awk -v want="$(printf ':%04X' "$1")" '$4 == "0A" && substr($2, length($2) - 4) == want { f = 1 } END { exit !f }' /proc/net/tcp
}
wait_listening() {  # wait_listening PORT NAME LOG PID
    for _ in $(seq 1 200); do listening "$1" && return 0; running "$4" || break; sleep 0.05; done
    echo "$bench_name: $2 does not listen on 127.0.0.1:$1"; cat "$3" 2>/dev/null || true; exit 1
}
wait_http() {  # wait_http URL NAME LOG PID [curl args]
    local u=$1 name=$2 log=$3 p=$4
    shift 4
    for _ in $(seq 1 200); do
        curl -sf -o /dev/null --max-time 1 "$@" "$u" && return 0
        running "$p" || break
        sleep 0.05
    done
    echo "$bench_name: $name does not answer $u"; cat "$log" 2>/dev/null || true; exit 1
}

# nginx, nginx_workers workers (default one), its config in $work/nginx.conf with the server
# blocks read from stdin, run through nginx_prefix if set; sets pid_nginx.
start_nginx() {  # start_nginx < SERVER_BLOCKS
    local servers temp_paths m user_line=""
    servers=$(cat)
    mkdir -p "$work/nginx-tmp"
    # nginx's module temp paths exist only for the modules it was built with (nginx-light has fewer).
    temp_paths="client_body_temp_path $work/nginx-tmp/body;"
    for m in proxy fastcgi uwsgi scgi; do
        nginx -V 2>&1 | grep -q -- "--without-http_${m}_module" ||
            temp_paths="$temp_paths ${m}_temp_path $work/nginx-tmp/$m;"
    done
    [ "$(id -u)" -eq 0 ] && user_line="user root;"  # the work dir is 0700: workers must read it
    cat > "$work/nginx.conf" <<EOF
$user_line
worker_processes ${nginx_workers:-1};
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
$servers
}
EOF
    ${nginx_prefix[@]+"${nginx_prefix[@]}"} nginx -p "$work" -e "$work/nginx.err" -c "$work/nginx.conf" > "$work/nginx.out" 2>&1 &
    pid_nginx=$!; pids+=("$pid_nginx")
}

# HAProxy's config in $work/haproxy.cfg: ha_threads threads (default one), mode tcp; each argument is one more
# line of its global section, and its frontends and backends are read from stdin. HAProxy
# refuses to start when maxconn needs more descriptors than it may open (two per
# connection): below 40k open files it gets what fits, and ha_note says so for the heading.
write_haproxy_config() {  # write_haproxy_config [GLOBAL_LINE...] < FRONTENDS_AND_BACKENDS
    local sections line
    sections=$(cat)
    ha_maxconn=20000
    ha_note=""
    if [ $((2 * ha_maxconn + 128)) -gt "$nofile" ]; then
        ha_maxconn=$(((nofile - 128) / 2))
        ha_note=", HAProxy maxconn $ha_maxconn (not 20000: open files limit $nofile)"
    fi
    {
        printf 'global\n    nbthread %s\n    maxconn %s\n' "${ha_threads:-1}" "$ha_maxconn"
        for line in "$@"; do printf '    %s\n' "$line"; done
        cat <<EOF
defaults
    mode tcp
    maxconn $ha_maxconn
    timeout connect 5s
    timeout client 1h
    timeout server 1h
$sections
EOF
    } > "$work/haproxy.cfg"
}
start_haproxy() {  # HAProxy on $work/haproxy.cfg, through haproxy_prefix if set; sets pid_haproxy
    ${haproxy_prefix[@]+"${haproxy_prefix[@]}"} haproxy -db -f "$work/haproxy.cfg" > "$work/haproxy.out" 2>&1 &
    pid_haproxy=$!; pids+=("$pid_haproxy")
}

# mesd's config in DIR/mesd.yaml: its store in DIR, DNS on 127.0.0.1:PORT and VIPs from POOL;
# the admin endpoint binds a free port (find_admin finds it) and only warnings are logged.
# One worker, as the peers it is compared with get one (Knot's udp-workers, HAProxy's
# nbthread); mesd's default would be one per CPU it may run on. A worker sweep passes
# --workers N, which overrides this.
write_mesd_config() {  # write_mesd_config DIR PORT POOL
    cat > "$1/mesd.yaml" <<EOF
dataDir: $1/store
workers: 1
vip:
  ipv4: $3
dns:
  listen: ["127.0.0.1:$2"]
  forward:
    enabled: false
admin:
  listen: 127.0.0.1:0
log:
  level: warn
EOF
}
# A script may set mesd_prefix to a command mesd is run through (taskset -c 0, say) and
# mesd_args to more flags (--workers 4).
start_mesd() {  # start_mesd DIR: mesd on DIR/mesd.yaml, its output in DIR; sets pid_mesd
    ${mesd_prefix[@]+"${mesd_prefix[@]}"} "$mesd" --config "$1/mesd.yaml" ${mesd_args[@]+"${mesd_args[@]}"} \
        > "$1/mesd.out" 2> "$1/mesd.log" &
    pid_mesd=$!; pids+=("$pid_mesd")
}
# A mesd that died during WHEN is reaped, reported (exit status, signal, its log kept in
# $work/mesd-all.log) and started again; crashes lists when, for the end of the report.
crashes=()
restart_dead_mesd() {  # restart_dead_mesd WHEN
    local rc=0 sig=""
    wait "$pid_mesd" 2> /dev/null || rc=$?
    stopped[$pid_mesd]=1
    [ "$rc" -gt 128 ] && sig=" (SIG$(kill -l $((rc - 128)) 2> /dev/null || echo $((rc - 128))))"
    crashes+=("during $1: exit status $rc$sig")
    echo "  mesd died during $1: exit status $rc$sig; starting it again" >&2
    { echo "--- mesd died during $1: exit status $rc$sig"; cat "$work/mesd.log"; } >> "$work/mesd-all.log"
    start_mesd "$work"
}
# mesd's admin endpoint, bound on a free port: the one of its listeners that is not DNS.
# Looks TRIES times, 50 ms apart; admin is left empty if none shows.
admin=""
find_admin() {  # find_admin TRIES
    admin=""
    for _ in $(seq 1 "$1"); do
        admin=$(ss -Hltnp 2> /dev/null | awk -v p="pid=$pid_mesd," -v dns="127.0.0.1:$port_dns" \
                'index($0, p) && $4 ~ /^127\.0\.0\.1:/ && $4 != dns { print $4; exit }' || true)
        [ -n "$admin" ] && return 0
        sleep 0.05
    done
}
# How mesd stopped and what it logged over the runs, before any restart too; exits 1 if it
# died meanwhile, saying when.
report_mesd_health() {
    local status
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
}

# ---- a worker sweep: N CPUs for the server, others for the load generator --------------------
# The CPUs this script may run on, in order (sched_getaffinity: what taskset and mesd see).
allowed_cpus() {
    python3 -c 'import os; print(" ".join(map(str, sorted(os.sched_getaffinity(0)))))' 2> /dev/null ||
        seq -s ' ' 0 $(($(nproc) - 1))
}
# "0-3,8" -> "0 1 2 3 8"
expand_cpus() {
    awk -F, '{ for (i = 1; i <= NF; i++) { if (split($i, r, "-") == 2) for (c = r[1] + 0; c <= r[2] + 0; c++) printf "%d ", c; else printf "%d ", $i } }' <<< "$1"
}
# sweep_plan "N..." sets sweep_ns (the N this machine can run: N CPUs for the server and at
# least N others for the load generator) and sweep_note (the N it cannot, and why). On a
# one-CPU machine N = 1 runs with server and generator sharing the CPU.
sweep_plan() {  # sweep_plan "1 2 4 8"
    local n cpus skipped=""
    read -r -a cpus <<< "$(allowed_cpus)"
    sweep_ns=""
    for n in $1; do
        if [ $((2 * n)) -le "${#cpus[@]}" ] || { [ "$n" = 1 ] && [ "${#cpus[@]}" = 1 ]; }; then sweep_ns="$sweep_ns $n"
        else skipped="$skipped $n"; fi
    done
    sweep_ns=${sweep_ns# }
    sweep_note=""
    [ -n "$skipped" ] && sweep_note="N =${skipped// /,} left out: ${#cpus[@]} CPUs here, and N workers need N CPUs for the server and at least N more for the load generator"
    sweep_note=${sweep_note/N =,/N = }
}
# sweep_cpus N sets srv_cpus (the first N allowed CPUs) and gen_cpus (the others), both as
# taskset lists ("0,1"), and srv_pin and gen_pin to the taskset commands (empty with PIN=0 or
# on a one-CPU machine, where nothing is pinned).
sweep_cpus() {  # sweep_cpus N
    local cpus
    read -r -a cpus <<< "$(allowed_cpus)"
    srv_cpus=$(IFS=,; echo "${cpus[*]:0:$1}")
    gen_cpus=$(IFS=,; echo "${cpus[*]:$1}")
    srv_pin=(); gen_pin=()
    if [ "${PIN:-1}" = 1 ] && [ -n "$gen_cpus" ]; then
        srv_pin=(taskset -c "$srv_cpus"); gen_pin=(taskset -c "$gen_cpus")
    else
        [ -n "$gen_cpus" ] || gen_cpus=$srv_cpus
    fi
}
# Some servers pin their own threads whatever taskset allowed them: Knot pins UDP worker i to
# CPU i mod (CPUs online), outside the N CPUs given to it unless those happen to be the first
# N. confine PID CPUS puts a process tree that left CPUS back into them: a thread pinned to
# one CPU c goes to the (c mod N)-th of CPUS, so the workers stay one per CPU as the server
# meant, any other thread to all of CPUS. Prints the names of the processes it moved.
confine() {  # confine PID CPU,CPU,...
    local p t c allowed outside want list n
    read -r -a list <<< "$(expand_cpus "$2")"
    n=${#list[@]}
    for p in $(tree "$1"); do
        outside=""
        for t in /proc/"$p"/task/*; do
            allowed=$(awk '$1 == "Cpus_allowed_list:" { print $2 }' "$t/status" 2> /dev/null) || continue
            for c in $(expand_cpus "$allowed"); do
                case " ${list[*]} " in *" $c "*) ;; *) outside=1 ;; esac
            done
        done
        [ -n "$outside" ] || continue
        for t in /proc/"$p"/task/*; do
            allowed=$(awk '$1 == "Cpus_allowed_list:" { print $2 }' "$t/status" 2> /dev/null) || continue
            if [[ $allowed =~ ^[0-9]+$ ]]; then want=${list[$((allowed % n))]}; else want=$2; fi
            taskset -pc "$want" "${t##*/}" > /dev/null 2>&1 || true
        done
        printf '%s ' "$(cat "/proc/$p/comm" 2> /dev/null)"
    done
}

# ---- runs and reports ----------------------------------------------------------------------
# One wrk run against URL through the proxy PID (empty: direct), wrk_threads threads and
# wrk_conns connections (default 1 and 50), run through wrk_prefix if set:
# "req_per_s p99_ms proxy_cpu_s req_per_proxy_cpu_s errors".
measure_wrk() {  # measure_wrk URL PID [wrk args]
    local u=$1 p=$2 before=0 after=0
    shift 2
    [ -n "$p" ] && before=$(cpu_ticks "$p")
    ${wrk_prefix[@]+"${wrk_prefix[@]}"} timeout -k 5 $((duration + 30)) wrk -t"${wrk_threads:-1}" -c"${wrk_conns:-50}" -d"${duration}s" --latency "$@" "$u" \
        > "$work/run.out" 2>&1 || true
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

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# The results file holds a line per run: "TEST TARGET FIGURES...", the figures from column 3.
col() {  # col TEST TARGET COLUMN: the median over the rounds
    awk -v s="$1" -v t="$2" -v c="$3" '$1 == s && $2 == t { print $c }' "$results" | median
}
sum() { awk -v s="$1" -v t="$2" -v c="$3" '$1 == s && $2 == t { n += $c } END { print n + 0 }' "$results"; }
runs() { awk -v s="$1" -v t="$2" '$1 == s && $2 == t { n++ } END { print n + 0 }' "$results"; }
verdict() { awk -v v="$1" -v op="$2" -v want="$3" 'BEGIN { ok = op == ">=" ? v >= want : v <= want; print ok ? "met" : "NOT met" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b ? a / b : 0 }'; }
