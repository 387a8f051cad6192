#!/usr/bin/env bash
# Postfix + OpenDKIM against dkim-relay under the identical load (the same generator and
# sink: cargo bench --bench relay), on this machine, in one run. Installs postfix, opendkim
# and opendkim-tools from Debian, sets up a throwaway Postfix instance (its own
# config_directory and queue_directory under a temp dir, loopback only, relayhost = the
# bench's sink) whose smtpd hands every message to a throwaway OpenDKIM milter signing with
# RSA-2048 and Ed25519 (two signatures, like dkim-relay; two chained OpenDKIM instances), then prints both result blocks
# and the ratio of delivered msg/s. Needs root (apt-get, Postfix).
#
#   bash bench/postfix-compare.sh [--n N] [--size S] [--concurrency C] [other bench flags]
#
# The issue's setup (Postfix's smtp-source as the load, one message per connection, and
# smtp-sink as the upstream of both servers):
#
#   bash bench/postfix-compare.sh --postfix-tools --per-connection --n 2000 --size 4KB --concurrency 20
#
# --per-connection alone keeps the bench's own generator (which also gives end-of-DATA->250
# latencies) and sink (which checks the DKIM signatures) with one message per connection.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bench_args=("$@")
[ ${#bench_args[@]} -gt 0 ] || bench_args=(--n 5000 --size 4KiB --concurrency 20)
smtpd_port=${POSTFIX_PORT:-20025}
milter_port=${MILTER_PORT:-20891}
sink_port=${SINK_PORT:-20026}

install_packages() {
    local missing=()
    for p in postfix opendkim opendkim-tools; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
}

work=$(mktemp -d /tmp/postfix-bench.XXXXXX)
chmod 755 "$work"
cleanup() {
    postfix -c "$work/etc" stop >/dev/null 2>&1 || true
    for pid in "$work"/*.pid; do
        [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

make_keys() {
    mkdir -p "$work/keys"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/keys/rsa.pem" 2>/dev/null
    openssl genpkey -algorithm ED25519 -out "$work/keys/ed.pem"
    chown -R opendkim:opendkim "$work/keys"
    chmod 600 "$work/keys/"*.pem
}

# OpenDKIM 2.11 applies its one SignatureAlgorithm to every key it signs with, so RSA and
# Ed25519 take two instances, chained as two milters.
start_opendkim() { # name algorithm port key
    local name=$1 alg=$2 port=$3 key=$4
    echo "$name._domainkey.bench.test bench.test:$name:$key" >"$work/$name.KeyTable"
    echo "*@bench.test $name._domainkey.bench.test" >"$work/$name.SigningTable"
    # The same signing policy as dkim-relay: relaxed/relaxed, From oversigned.
    cat >"$work/$name.conf" <<EOF
Syslog no
Mode s
Socket inet:$port@127.0.0.1
PidFile $work/$name.pid
UserID opendkim
KeyTable file:$work/$name.KeyTable
SigningTable refile:$work/$name.SigningTable
SignatureAlgorithm $alg
Canonicalization relaxed/relaxed
OversignHeaders From
RequireSafeKeys false
EOF
    opendkim -x "$work/$name.conf"
}

configure_postfix() {
    local etc=$work/etc
    mkdir -p "$etc" "$work/queue" "$work/data"
    chown postfix "$work/data"
    cat >"$etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $work/queue
data_directory = $work/data
maillog_file = $work/maillog
maillog_file_prefixes = $work
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:$sink_port
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
default_destination_concurrency_limit = 20
default_process_limit = 200
alias_maps =
alias_database =
local_recipient_maps =
smtpd_milters = inet:127.0.0.1:$milter_port, inet:127.0.0.1:$((milter_port + 1))
non_smtpd_milters =
milter_default_action = tempfail
EOF
    # Only the services a relay needs, none chrooted; smtpd on the bench port.
    {
        echo "127.0.0.1:$smtpd_port inet n - n - - smtpd"
        cat "$here/tests/postfix/master-services.cf"
    } >"$etc/master.cf"
    postfix -c "$etc" check || { cat "$work/maillog" >&2; exit 1; }
    postfix -c "$etc" start
}

install_packages
cd "$here"
cargo build --release --benches --locked -q
make_keys
start_opendkim rsa rsa-sha256 "$milter_port" "$work/keys/rsa.pem"
start_opendkim ed ed25519-sha256 "$((milter_port + 1))" "$work/keys/ed.pem"
configure_postfix

# Poll (for at most 10 s) until the milter and smtpd accept connections.
wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1 (see $work/maillog)" >&2
    exit 1
}
wait_port "$milter_port"
wait_port "$((milter_port + 1))"
wait_port "$smtpd_port"

out_pf=$work/postfix.out
out_dr=$work/dkim-relay.out
cargo bench --bench relay --locked -q -- "${bench_args[@]}" \
    --target "127.0.0.1:$smtpd_port" --sink-port "$sink_port" \
    --watch "$work" --label "postfix+opendkim" | tee "$out_pf"
cargo bench --bench relay --locked -q -- "${bench_args[@]}" | tee "$out_dr"

value() { sed -n "s/^bench\.$2=//p" "$1"; }
pf=$(value "$out_pf" delivered_per_s)
dr=$(value "$out_dr" delivered_per_s)
pf_cpu=$(value "$out_pf" cpu_ms_per_msg)
dr_cpu=$(value "$out_dr" cpu_ms_per_msg)
echo "==== ratio ===="
echo "conditions: $(sed -n 's/^conditions  //p' "$out_dr")"
awk -v pf="$pf" -v dr="$dr" 'BEGIN {
    printf "delivered msg/s: dkim-relay %s, postfix+opendkim %s, ratio %.2fx\n", dr, pf, (pf > 0 ? dr / pf : 0)
}'
echo "CPU per delivered message: dkim-relay $dr_cpu ms, postfix+opendkim $pf_cpu ms (all of its processes)"
echo "bench.ratio_delivered=$(awk -v pf="$pf" -v dr="$dr" 'BEGIN { printf "%.2f", (pf > 0 ? dr / pf : 0) }')"
