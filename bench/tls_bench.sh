#!/usr/bin/env bash
# bench-tls: mesd and HAProxy (mode tcp, one thread) originating TLS to the same nginx: wrk
# speaks plain HTTP to the proxy, the proxy speaks TLS to nginx, all on 127.0.0.1 and the
# loopback VIP pool. The certificates (a private EC P-256 CA and a leaf for backend.test) are
# made with openssl in the work dir. nginx serves two TLS ports: one resumes sessions (shared
# cache and tickets), the other resumes none, so every handshake to it is a full one. Rounds
# are interleaved (mesd, haproxy, mesd, ...) because these machines are shared and noisy; the
# figures printed are medians over the rounds.
#
#   bench/tls_bench.sh [BUILD_DIR]  ROUNDS=4 DURATION=10
#
# For each proxy with and without resumption and each test (1 KiB keep-alive, 1 KiB with a
# new connection, so a new upstream TLS handshake, per request; wrk -t1 -c50): requests per
# second, p99 latency, proxy CPU seconds and requests per proxy CPU second. Ratios are
# mesd/HAProxy, then resumed/full handshakes per proxy; mesd's TLS handshake and resumption
# counters show that it resumed.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

bench_name=bench-tls
build=${1:-build}
rounds=${ROUNDS:-4}
duration=${DURATION:-10}
mesd=$build/cmd/mesd
mesctl=$build/cmd/mesctl

require_tools wrk haproxy nginx openssl curl python3
wait_for_build

# Connections per request need descriptors: a proxy holds two per connection.
raise_open_files

start_work bench-tls

# Connections per request leave sockets in TIME_WAIT; reuse them (restored on exit).
reuse_time_wait

# mesd's TLS handshakes to the endpoints of MES NAME and those that resumed, so far:
# "handshakes resumed" (0 0 when its admin endpoint does not answer).
tls_counts() {  # tls_counts NAME
    { [ -n "$admin" ] && curl -sf --max-time 2 "http://$admin/metrics" 2> /dev/null || true; } | awk -v n="name=\"$1\"" '
        index($1, n) && $1 ~ /^mesd_mes_tls_handshakes_total/ { h = $2 }
        index($1, n) && $1 ~ /^mesd_mes_tls_resumed_total/ { r = $2 }
        END { print h + 0, r + 0 }'
}

# ---- certificates --------------------------------------------------------------------------
# A private CA (EC P-256) and a leaf for backend.test (and 127.0.0.1) signed by it.
cat > "$work/ca.cnf" <<EOF
[req]
prompt = no
distinguished_name = dn
x509_extensions = v3_ca
[dn]
CN = mesd bench CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
cat > "$work/leaf.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:backend.test, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
{
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ca.key" &&
    openssl req -x509 -new -config "$work/ca.cnf" -key "$work/ca.key" -sha256 -days 7 -out "$work/ca.crt" &&
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/backend.key" &&
    openssl req -new -key "$work/backend.key" -subj "/CN=backend.test" -out "$work/backend.csr" &&
    openssl x509 -req -in "$work/backend.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
        -CAserial "$work/ca.srl" -sha256 -days 7 -extfile "$work/leaf.ext" -out "$work/backend.crt" &&
    openssl verify -CAfile "$work/ca.crt" "$work/backend.crt"
} > "$work/openssl.out" 2>&1 || { echo "bench-tls: making the certificates failed:"; cat "$work/openssl.out"; exit 1; }

# ---- servers -------------------------------------------------------------------------------
read -r port_tls port_tls_full port_dns port_mes port_mes_full port_ha port_ha_full <<< "$(free_ports 7)"

mkdir -p "$work/www"
head -c 1024 /dev/urandom > "$work/www/1k"
# Two TLS ports on the same worker: $port_tls resumes sessions (shared cache and tickets),
# $port_tls_full resumes none, so every handshake to it is a full one.
start_nginx <<EOF
    server {
        listen 127.0.0.1:$port_tls ssl;
        root $work/www;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate $work/backend.crt;
        ssl_certificate_key $work/backend.key;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
    }
    server {
        listen 127.0.0.1:$port_tls_full ssl;
        root $work/www;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate $work/backend.crt;
        ssl_certificate_key $work/backend.key;
        ssl_session_cache off;
        ssl_session_tickets off;
    }
EOF

write_mesd_config "$work" "$port_dns" 127.242.0.0/16
ca_inline=$(sed 's/^/          /' "$work/ca.crt")
mes_yaml() {  # mes_yaml NAME PORT NGINX_PORT
    cat <<EOF
type: MeshExternalService
name: $1
spec:
  match: {port: $2, protocol: tcp}
  endpoints: [{address: 127.0.0.1, port: $3}]
  tls:
    enabled: true
    verification:
      serverName: backend.test
      caCert:
        inlineString: |
$ca_inline
EOF
}
mes_yaml tls "$port_mes" "$port_tls" > "$work/mes-tls.yaml"
mes_yaml tls-noresume "$port_mes_full" "$port_tls_full" > "$work/mes-tls-noresume.yaml"
# "created MeshExternalService default/tls 127.242.0.1": the VIP is the last word.
vip_tls=$("$mesctl" --config "$work/mesd.yaml" apply -f "$work/mes-tls.yaml" | awk '/tls/ { print $NF }')
vip_tls_full=$("$mesctl" --config "$work/mesd.yaml" apply -f "$work/mes-tls-noresume.yaml" | awk '/tls-noresume/ { print $NF }')
case "$vip_tls $vip_tls_full" in
    "127.242."*" 127.242."*) ;;
    *) echo "bench-tls: unexpected VIPs '$vip_tls' '$vip_tls_full'"; exit 1 ;;
esac

# HAProxy reuses TLS sessions to a server unless told not to (no-ssl-reuse); with sni set and
# no verifyhost it checks the certificate against the SNI, as mesd checks it against serverName.
server_tls="ssl verify required ca-file $work/ca.crt sni str(backend.test)"
# Its stats socket gives its TLS session counts for the report.
write_haproxy_config "stats socket $work/haproxy.sock mode 600 level admin" <<EOF
frontend tls
    bind 127.0.0.1:$port_ha
    default_backend tls
backend tls
    server nginx 127.0.0.1:$port_tls $server_tls
frontend tls-noresume
    bind 127.0.0.1:$port_ha_full
    default_backend tls-noresume
backend tls-noresume
    server nginx 127.0.0.1:$port_tls_full $server_tls no-ssl-reuse
EOF

wait_listening "$port_tls" nginx "$work/nginx.err" "$pid_nginx"
wait_listening "$port_tls_full" nginx "$work/nginx.err" "$pid_nginx"

start_mesd "$work"
start_haproxy

# Targets: each proxy to the resuming port and to the port that resumes none. The order is
# the order of the runs within a round, so that the runs compared are next to each other.
targets="mesd-resume haproxy-resume mesd-full haproxy-full"
declare -A pid url
pid[mesd-resume]=$pid_mesd; pid[mesd-full]=$pid_mesd
pid[haproxy-resume]=$pid_haproxy; pid[haproxy-full]=$pid_haproxy
url[mesd-resume]=http://$vip_tls:$port_mes
url[mesd-full]=http://$vip_tls_full:$port_mes_full
url[haproxy-resume]=http://127.0.0.1:$port_ha
url[haproxy-full]=http://127.0.0.1:$port_ha_full
declare -A mes
mes[mesd-resume]=tls; mes[mesd-full]=tls-noresume

# A mesd that dies is reported (exit status, signal, log) and started again, so the rounds
# go on; the run it died in is left out of the medians, and the script exits 1 at the end.
check_mesd() {  # check_mesd WHEN: returns 1 if mesd had died (and was restarted)
    running "$pid_mesd" && return 0
    restart_dead_mesd "$1"
    pid[mesd-resume]=$pid_mesd; pid[mesd-full]=$pid_mesd
    wait_http "${url[mesd-resume]}/1k" mesd "$work/mesd.log" "$pid_mesd"
    find_admin 40
    return 1
}
# nginx directly over TLS, checked against the CA as the proxies check it.
for p in "$port_tls" "$port_tls_full"; do
    wait_http "https://backend.test:$p/1k" nginx "$work/nginx.err" "$pid_nginx" \
        --cacert "$work/ca.crt" --resolve "backend.test:$p:127.0.0.1"
done
# A proxy that fails its TLS handshakes to nginx closes the connection: its log says why.
wait_http "${url[mesd-resume]}/1k" mesd "$work/mesd.log" "$pid_mesd"
wait_http "${url[mesd-full]}/1k" mesd "$work/mesd.log" "$pid_mesd"
wait_http "${url[haproxy-resume]}/1k" haproxy "$work/haproxy.out" "$pid_haproxy"
wait_http "${url[haproxy-full]}/1k" haproxy "$work/haproxy.out" "$pid_haproxy"
find_admin 40

# The 1 KiB file arrives intact through each proxy and port.
for t in $targets; do
    curl -sf --max-time 10 -o "$work/got-1k" "${url[$t]}/1k" && cmp -s "$work/got-1k" "$work/www/1k" ||
        { echo "bench-tls: 1 KiB through $t differs or failed"; exit 1; }
done

echo "bench-tls: $rounds interleaved rounds of ${duration}s (wrk -t1 -c50, plain HTTP to the proxy, TLS on to nginx),"
echo "  nginx one worker, mesd $vip_tls:$port_mes (resume) and $vip_tls_full:$port_mes_full (full handshakes),"
echo "  HAProxy nbthread 1 mode tcp, all on loopback; open files $nofile$ha_note"

# ---- runs ----------------------------------------------------------------------------------
results=$work/results
: > "$results"
record() {  # record TEST TARGET FIGURES: kept unless mesd died meanwhile
    if [[ "$2" = mesd* ]] && ! check_mesd "$1 $2 (round $round)"; then return 0; fi
    echo "$1 $2 $3" >> "$results"
}
for round in $(seq 1 "$rounds"); do
    for t in $targets; do record 1k-ka "$t" "$(measure_wrk "${url[$t]}/1k" "${pid[$t]}")"; done
    for t in $targets; do
        # mesd's handshakes and resumptions over this run: "target before_h before_r after_h after_r".
        c0=""; [ -n "${mes[$t]:-}" ] && c0=$(tls_counts "${mes[$t]}")
        figures=$(measure_wrk "${url[$t]}/1k" "${pid[$t]}" -H 'Connection: close')
        [ -n "$c0" ] && running "$pid_mesd" && echo "$t $c0 $(tls_counts "${mes[$t]}")" >> "$work/tls-close"
        record 1k-close "$t" "$figures"
    done
    echo "  round $round of $rounds done"
done

# mesd's own counters, from the admin endpoint it bound on a free port.
metrics=""
[ -n "$admin" ] && metrics=$(curl -sf --max-time 2 "http://$admin/metrics" 2> /dev/null |
    grep -E '^mesd_(mes_tls_(handshakes|resumed|handshake_failures)_total|mes_connections_(total|failed_total))' || true)
# HAProxy's own, per server (its SSL module): sessions established anew (full handshakes) and
# sessions reused (resumed), counted apart.
ha_stats=$(python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(sys.argv[1]); s.sendall(b"show stat\n")
data = b""
while True:
    b = s.recv(65536)
    if not b: break
    data += b
print(data.decode())' "$work/haproxy.sock" 2> /dev/null |
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
             $2 == "nginx" && c["ssl_sess"] { printf "%s %s %s\n", $1, $c["ssl_sess"], $c["ssl_reused_sess"] }' || true)

# ---- report --------------------------------------------------------------------------------
printf '\n%-9s %-15s %10s %9s %12s %16s %7s %5s\n' test target req/s p99_ms proxy_cpu_s req/proxy_cpu_s errors runs
for test in 1k-ka 1k-close; do
    for t in $targets; do
        printf '%-9s %-15s %10.0f %9.3f %12.2f %16.0f %7s %5s\n' "$test" "$t" "$(col "$test" "$t" 3)" \
            "$(col "$test" "$t" 4)" "$(col "$test" "$t" 5)" "$(col "$test" "$t" 6)" "$(sum "$test" "$t" 7)" "$(runs "$test" "$t")"
    done
done

echo
for spec in "1k-ka resume 1.0 1 KiB keep-alive, resumption" "1k-ka full 1.0 1 KiB keep-alive, full handshakes" \
            "1k-close resume 1.5 1 KiB conn per request, resumption" "1k-close full - 1 KiB conn per request, full handshakes"; do
    read -r test kind want label <<< "$spec"
    r_cpu=$(ratio "$(col "$test" "mesd-$kind" 6)" "$(col "$test" "haproxy-$kind" 6)")
    r_rps=$(ratio "$(col "$test" "mesd-$kind" 3)" "$(col "$test" "haproxy-$kind" 3)")
    r_p99=$(ratio "$(col "$test" "mesd-$kind" 4)" "$(col "$test" "haproxy-$kind" 4)")
    if [ "$want" = - ]; then
        printf 'mesd/HAProxy %-42s req per proxy CPU s %.2fx, req/s %.2fx, p99 %.2fx\n' \
            "$label" "$r_cpu" "$r_rps" "$r_p99"
    else
        printf 'mesd/HAProxy %-42s req per proxy CPU s %.2fx (target >= %sx, %s), req/s %.2fx, p99 %.2fx\n' \
            "$label" "$r_cpu" "$want" "$(verdict "$r_cpu" ">=" "$want")" "$r_rps" "$r_p99"
    fi
done
# Resumption skips the certificate chain and its signature checks: with a connection per
# request it should show in the requests each proxy serves per CPU second.
for p in mesd haproxy; do
    r=$(ratio "$(col 1k-close "$p-resume" 6)" "$(col 1k-close "$p-full" 6)")
    r_rps=$(ratio "$(col 1k-close "$p-resume" 3)" "$(col 1k-close "$p-full" 3)")
    printf '%-7s resumed/full handshakes, 1 KiB conn per request: req per proxy CPU s %.2fx (resumption visibly cheaper than full handshakes: target >= 1.1x, %s), req/s %.2fx\n' \
        "$p" "$r" "$(verdict "$r" ">=" 1.1)" "$r_rps"
done

# ---- resumption, as the proxies count it ------------------------------------------------------
echo
if [ -n "$ha_stats" ]; then
    echo "HAProxy TLS sessions to nginx over the whole run (ssl_sess full, ssl_reused_sess resumed):"
    while read -r be n reused; do
        awk -v b="$be" -v n="$n" -v r="$reused" 'BEGIN { printf "  %-13s %d of %d handshakes resumed (%.1f%%)\n", b, r, n + r, n + r ? 100 * r / (n + r) : 0 }'
    done <<< "$ha_stats"
fi
[ "${#crashes[@]}" -gt 0 ] && echo "mesd was restarted after dying: its counters cover only the runs since."
if [ -n "$metrics" ]; then
    echo "mesd counters:"
    sed 's/^/  /' <<< "$metrics"
    echo "mesd TLS handshakes to nginx over the whole run, and over the connection-per-request runs alone:"
    for t in mesd-resume mesd-full; do
        awk -v n="name=\"${mes[$t]}\"" '
            index($1, n) && $1 ~ /^mesd_mes_tls_handshakes_total/ { h = $2 }
            index($1, n) && $1 ~ /^mesd_mes_tls_resumed_total/ { r = $2 }
            END { printf "  %-13s %d of %d handshakes resumed (%.1f%%)", substr(n, 7, length(n) - 7), r, h, h ? 100 * r / h : 0 }' <<< "$metrics"
        awk -v t="$t" '$1 == t { h += $4 - $2; r += $5 - $3 }
            END { printf "; conn per request: %d of %d (%.1f%%)\n", r, h, h ? 100 * r / h : 0 }' "$work/tls-close" 2> /dev/null || echo
    done
else
    echo "mesd counters: the admin endpoint did not answer (admin '$admin')"
fi

# ---- mesd's health over the runs -------------------------------------------------------------
echo
report_mesd_health
