# shellcheck shell=bash disable=SC2034  # sourced by dns.sh and proxy.sh, which read what it sets
# What dns.sh and proxy.sh share for the worker sweep: the CPUs of each N, keeping servers on
# them, CPU time, medians and the results file. Needs bash, awk, sed and taskset only: the
# machine these run on has nothing else installed.

# The CPUs this shell may run on, in order.
allowed_cpus() { expand_cpus "$(taskset -pc $$ | sed 's/.*: *//')"; }
# "0-3,8" -> "0 1 2 3 8"
expand_cpus() {
  awk -F, '{ for (i = 1; i <= NF; i++) { if (split($i, r, "-") == 2) for (c = r[1] + 0; c <= r[2] + 0; c++) printf "%d ", c; else printf "%d ", $i } }' <<< "$1"
}
join_cpus() { local IFS=,; echo "$*"; }

# layout N sets SRV (the server's N CPUs), GEN (the load generator's, up to 8) and NGEN, as
# taskset lists; returns 1 when the machine has too few CPUs for N. On 16 or more CPUs the
# servers take CPUs 2..N+1 (0 and 1 take most of the interrupts) and the generator the 8
# highest of the rest (8-15 for N <= 4; 0, 1 and 10-15 for N = 8). On fewer, as a check that
# the scripts run: the first N CPUs serve and the rest generate, at least N of them.
layout() {  # layout N
  local n=$1 c cpus=() srv=() gen=() base=0
  read -r -a cpus <<< "$(allowed_cpus)"
  [ "${#cpus[@]}" -ge 16 ] && base=2
  [ $((base + n)) -le "${#cpus[@]}" ] || return 1
  srv=("${cpus[@]:base:n}")
  for ((c = ${#cpus[@]} - 1; c >= 0 && ${#gen[@]} < 8; c--)); do
    case " ${srv[*]} " in *" ${cpus[c]} "*) ;; *) gen=("${cpus[c]}" "${gen[@]}") ;; esac
  done
  [ "${#gen[@]}" -ge "$n" ] || return 1
  SRV=$(join_cpus "${srv[@]}"); GEN=$(join_cpus "${gen[@]}"); NGEN=${#gen[@]}
}
# plan "1 2 4 8" sets NS (the N that fit) and SKIPPED (a line naming the others), or empty.
plan() {
  local n skipped=""
  NS=""
  for n in $1; do if layout "$n"; then NS="$NS $n"; else skipped="$skipped $n"; fi; done
  NS=${NS# }
  SKIPPED=""
  [ -n "$skipped" ] && SKIPPED="N =$(echo "$skipped" | sed 's/ /, /g; s/^,//') left out: $(nproc) CPUs here, too few for N server CPUs and as many for the load"
  return 0
}

# Knot pins UDP worker i to CPU i mod (CPUs online) whatever taskset allowed it, so its
# workers would leave the CPUs given to it. confine PID CPUS puts a process tree that left
# CPUS back: a thread pinned to one CPU c goes to the (c mod N)-th of CPUS (the workers stay
# one per CPU, as the server meant), any other thread to all of CPUS. Prints what it moved.
confine() {  # confine PID CPU,CPU,...
  local p t c a outside want list=() n
  read -r -a list <<< "$(expand_cpus "$2")"
  n=${#list[@]}
  for p in $(tree "$1"); do
    outside=""
    for t in /proc/"$p"/task/*; do
      a=$(awk '$1 == "Cpus_allowed_list:" { print $2 }' "$t/status" 2> /dev/null) || continue
      for c in $(expand_cpus "$a"); do case " ${list[*]} " in *" $c "*) ;; *) outside=1 ;; esac; done
    done
    [ -n "$outside" ] || continue
    for t in /proc/"$p"/task/*; do
      a=$(awk '$1 == "Cpus_allowed_list:" { print $2 }' "$t/status" 2> /dev/null) || continue
      if [[ $a =~ ^[0-9]+$ ]]; then want=${list[$((a % n))]}; else want=$2; fi
      taskset -pc "$want" "${t##*/}" > /dev/null 2>&1 || true
    done
    printf '%s ' "$(cat "/proc/$p/comm" 2> /dev/null)"
  done
}
tree() {  # a process and its descendants
  local c
  echo "$1"
  for c in $(cat /proc/"$1"/task/*/children 2> /dev/null); do tree "$c"; done
}
# utime+stime in clock ticks of every process running bundle/bin/NAME (NSD serves from forks).
cpu() {
  local p v t=0
  for p in /proc/[0-9]*; do
    grep -qa "bundle/bin/$1" "$p/cmdline" 2> /dev/null || continue
    v=$(sed 's/.*) //' "$p/stat" 2> /dev/null | awk '{ print $12 + $13 }')
    [ -n "$v" ] && t=$((t + v))
  done
  echo $t
}
rss_mb() {  # RSS of a process tree in MB
  local p t=0
  for p in $(tree "$1"); do t=$((t + $(awk '$1 == "VmRSS:" { print $2 }' "/proc/$p/status" 2> /dev/null || echo 0))); done
  awk -v k="$t" 'BEGIN { printf "%.1f", k / 1024 }'
}
# Stops PIDs: SIGTERM, then SIGKILL for any still there after 10 s.
stop_all() {
  local p
  kill "$@" 2> /dev/null
  for _ in $(seq 1 100); do
    for p in "$@"; do kill -0 "$p" 2> /dev/null && break; p=""; done
    [ -z "$p" ] && break
    sleep 0.1
  done
  kill -9 "$@" 2> /dev/null
  wait "$@" 2> /dev/null
  return 0
}
median() { sort -g | awk '{ v[NR] = $1 } END { if (!NR) print 0; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
TICK=$(getconf CLK_TCK 2> /dev/null || echo 100)
