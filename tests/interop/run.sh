#!/usr/bin/env bash
# Interoperability suite for dkim-relay (issue 6). Run from anywhere:
#
#   bash tests/interop/run.sh
#
# It sends the corpus (tests/interop/corpus, listed in corpus/manifest.json)
# to a real dkim-relay three ways:
#   smtplib  Python's smtplib, one session for the whole corpus, raw bytes
#   swaks    one swaks run per message, with PIPELINING
#   postfix  a throwaway Postfix instance (own config and queue in a temp dir)
#            that uses the relay as its relayhost, fed with Postfix's sendmail
# Each path gets its own relay process and outbox (all share one key store),
# so every signed message is known to come from that path. verify.py then
# checks every DKIM-Signature with dkimpy against the records printed by
# `dkim-relay keys dns --json` (no real DNS), and that tampered copies fail;
# gomsgauth/main.go and opendkim_verify.py check every signature again with
# go-msgauth and OpenDKIM (its offline test mode, records via TestDNSData).
#
# Environment:
#   DKIM_RELAY_BIN   relay binary (default target/debug/dkim-relay, built with
#                    `cargo build` if it is missing)
#   INTEROP_PATHS    which paths to run (default "smtplib swaks postfix")
#   INTEROP_TIMEOUT  seconds to wait for each path's outbox (default 120)
#   INTEROP_KEEP=1   keep the temp dir (it is always kept after a failure)
#   INTEROP_KEYS     file (default) or pkcs11: keys made and used in a SoftHSM 2
#                    token in the work dir ([keys] backend = "pkcs11", docs/hsm.md)
#
# Needs root only to install missing Debian packages and to run Postfix.
# Only loopback addresses are used. The last line printed is
# "N passed, N failed"; the exit status is non-zero on any failure or timeout.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CORPUS=$HERE/corpus
# Debian's python3: python3-dkim and python3-nacl live in its dist-packages,
# which a pyenv/venv python3 earlier on PATH does not see.
PY=/usr/bin/python3
BIN=${DKIM_RELAY_BIN:-$ROOT/target/debug/dkim-relay}
PATHS=${INTEROP_PATHS:-smtplib swaks postfix}
TIMEOUT=${INTEROP_TIMEOUT:-120}
KEYS=${INTEROP_KEYS:-file}
START_TIMEOUT=120   # the first start generates RSA keys, slow in a debug build
# go-msgauth's source from Debian's golang-github-emersion-go-msgauth-dev (GOPATH layout).
GOPATH_DEBIAN=/usr/share/gocode
GOMSGAUTH_SRC=$GOPATH_DEBIAN/src/github.com/emersion/go-msgauth

say() { printf '== %s\n' "$*"; }

# ------------------------------------------------------------ packages
install_packages() {
    local need=()
    [ -x "$PY" ] || need+=(python3)
    "$PY" -c 'import dkim, nacl' 2>/dev/null || need+=(python3-dkim python3-nacl)
    "$PY" -c 'import cryptography' 2>/dev/null || need+=(python3-cryptography)
    command -v swaks >/dev/null || need+=(swaks)
    [ -x /usr/sbin/postfix ] || need+=(postfix)
    command -v go >/dev/null || need+=(golang-go)
    command -v opendkim >/dev/null || need+=(opendkim)
    if [ "$KEYS" = pkcs11 ]; then
        command -v softhsm2-util >/dev/null || need+=(softhsm2)
    fi
    [ -d "$GOMSGAUTH_SRC" ] || need+=(golang-github-emersion-go-msgauth-dev)
    perl -MMail::DKIM::Verifier -MNet::DNS::Resolver -e 1 2>/dev/null ||
        need+=(libmail-dkim-perl libnet-dns-perl)
    command -v rspamd >/dev/null || need+=(rspamd)
    [ ${#need[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "run.sh: missing packages (${need[*]}); install them or run as root" >&2
        exit 2
    fi
    say "installing ${need[*]}"
    # Without this the postfix package asks which setup to write to /etc/postfix.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
}
install_packages

if [ ! -x "$BIN" ]; then
    if [ -n "${DKIM_RELAY_BIN:-}" ]; then
        echo "run.sh: DKIM_RELAY_BIN=$BIN is not executable" >&2
        exit 2
    fi
    say "building dkim-relay"
    (cd "$ROOT" && cargo build)
fi

WORK=$(mktemp -d /tmp/dkim-interop.XXXXXX)
# Postfix daemons run as user postfix and must reach their queue under here.
chmod 755 "$WORK"
HARNESS=$WORK/harness.log   # "PASS|FAIL path check detail" lines
KEYS_EXTRA=
if [ "$KEYS" = pkcs11 ]; then
    # One token for every path's relay (they share the key store), and for `keys dns`.
    SOFTHSM_MODULE=
    for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do
        [ -e "$m" ] && SOFTHSM_MODULE=$m && break
    done
    [ -n "$SOFTHSM_MODULE" ] || { echo "run.sh: INTEROP_KEYS=pkcs11 needs softhsm2" >&2; exit 2; }
    mkdir -p "$WORK/tokens"
    printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/tokens" >"$WORK/softhsm2.conf"
    export SOFTHSM2_CONF=$WORK/softhsm2.conf
    softhsm2-util --init-token --free --label interop --so-pin 97531 --pin 24680 >/dev/null
    echo 24680 >"$WORK/token.pin"
    chmod 600 "$WORK/token.pin"
    KEYS_EXTRA="backend = \"pkcs11\"
module = \"$SOFTHSM_MODULE\"
token_label = \"interop\"
pin_file = \"$WORK/token.pin\""
fi
: >"$HARNESS"
RELAY_PID=
PFX=
POSTFIX_UP=0
DNSD_PID=

cleanup() {
    local rc=$?
    stop_relay
    [ -n "$DNSD_PID" ] && kill "$DNSD_PID" 2>/dev/null
    if [ -n "$PFX" ] && [ -f "$PFX/data/master.lock" ]; then
        /usr/sbin/postfix -c "$PFX/etc" stop >/dev/null 2>&1 || true
    fi
    if [ "$rc" = 0 ] && [ -z "${INTEROP_KEEP:-}" ]; then
        rm -rf "$WORK"
    else
        echo "(work dir kept: $WORK)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

note() {  # note PASS|FAIL PATH CHECK DETAIL...
    local verdict=$1 path=$2 check=$3
    shift 3
    printf '%s %s %s %s\n' "$verdict" "$path" "$check" "$*" | tee -a "$HARNESS"
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The relay answers when an SMTP client gets its 220 greeting and EHLO reply.
smtp_answers() {
    "$PY" -c 'import smtplib, sys; s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=2); s.ehlo(); s.quit()' \
        "$1" >/dev/null 2>&1
}

count_eml() { find "$1" -maxdepth 1 -name '*.eml' -type f 2>/dev/null | wc -l; }

# ------------------------------------------------------------ relay
start_relay() {  # start_relay PATH -> sets RELAY_PID, PORT, CONFIG, OUTBOX
    local path=$1 dir=$WORK/$1
    mkdir -p "$dir"
    PORT=$(free_port)
    CONFIG=$dir/relay.toml
    OUTBOX=$dir/outbox
    cat >"$CONFIG" <<EOF
hostname = "relay.test"
[smtp]
listen = "127.0.0.1:$PORT"
# corpus/repair-cron-unqualified-from.eml: cron's bare "From: root (Cron Daemon)".
[[smtp.origins]]
networks = ["127.0.0.0/8"]
qualify_domain = "alpha.example"
[spool]
dir = "$dir/spool"
[keys]
dir = "$WORK/keys"
generate_missing = true
$KEYS_EXTRA
[[domains]]
name = "alpha.example"
ed25519 = true
[[domains]]
name = "beta.example"
ed25519 = true
[delivery]
outbox_dir = "$OUTBOX"
# alpha.example and beta.example are not in any DNS: first keys become active without
# waiting for DNS to serve them (dkimpy checks them against the keys dns output instead).
[rotation]
dns_check = false
propagation_wait = "0s"
EOF
    "$BIN" serve --config "$CONFIG" 2>"$dir/relay.log" &
    RELAY_PID=$!
    local deadline=$((SECONDS + START_TIMEOUT))
    until smtp_answers "$PORT"; do
        if ! kill -0 "$RELAY_PID" 2>/dev/null; then
            wait "$RELAY_PID" && rc=0 || rc=$?
            RELAY_PID=
            note FAIL "$path" relay-start "relay exited with status $rc; log: $(tail -n 5 "$dir/relay.log" | tr '\n' ' ')"
            return 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            note FAIL "$path" relay-start "no SMTP answer on 127.0.0.1:$PORT after ${START_TIMEOUT}s"
            stop_relay
            return 1
        fi
        sleep 0.2
    done
    note PASS "$path" relay-start "listening on 127.0.0.1:$PORT (pid $RELAY_PID)"
}

stop_relay() {
    [ -n "$RELAY_PID" ] || return 0
    kill "$RELAY_PID" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while kill -0 "$RELAY_PID" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -9 "$RELAY_PID" 2>/dev/null || true
    wait "$RELAY_PID" 2>/dev/null || true
    RELAY_PID=
}

# Poll (bounded by INTEROP_TIMEOUT) until the command succeeds; give up early
# if the relay dies.
wait_until() {  # wait_until PATH WHAT COMMAND...
    local path=$1 what=$2
    shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        if [ $SECONDS -ge $deadline ]; then
            note FAIL "$path" outbox "timeout after ${TIMEOUT}s waiting for $what; $(count_eml "$OUTBOX") messages in the outbox"
            return 1
        fi
        if [ -n "$RELAY_PID" ] && ! kill -0 "$RELAY_PID" 2>/dev/null; then
            note FAIL "$path" outbox "relay died while waiting for $what; log: $(tail -n 5 "$WORK/$path/relay.log" | tr '\n' ' ')"
            RELAY_PID=
            return 1
        fi
        sleep 0.2
    done
}

outbox_has() { [ "$(count_eml "$OUTBOX")" -ge "$1" ]; }

# The relay writes one outbox file per accepted message.
check_outbox() {  # check_outbox PATH N
    local path=$1 n=$2 have
    # A relay that wrote a message twice would show up as a count above n.
    sleep 0.5
    have=$(count_eml "$OUTBOX")
    if [ "$have" -eq "$n" ]; then
        note PASS "$path" outbox "$have of $n accepted messages signed and written"
    else
        note FAIL "$path" outbox "$have messages in the outbox, expected $n"
    fi
}

accepted() { grep -c "^PASS $1 sent " "$HARNESS" || true; }

# One line per corpus message: NAME<TAB>MAIL-FROM (or <>)<TAB>RCPT,RCPT
manifest_lines() {
    "$PY" - "$CORPUS/manifest.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
for name in sorted(m):
    print(name, m[name]["mail_from"] or "<>", ",".join(m[name]["rcpt_to"]), sep="\t")
EOF
}
NMSG=$(manifest_lines | wc -l)

fetch_records() {
    if "$BIN" keys dns --config "$CONFIG" --json >"$WORK/records.json" 2>"$WORK/keys-dns.log" &&
        "$PY" -c 'import json, sys; r = json.load(open(sys.argv[1])); assert isinstance(r, list) and r' \
            "$WORK/records.json" 2>/dev/null; then
        note PASS keys records "$("$PY" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' "$WORK/records.json") TXT records from keys dns --json"
    else
        note FAIL keys records "keys dns --json failed: $(tr '\n' ' ' <"$WORK/keys-dns.log" | head -c 400)"
        return 1
    fi
    # DESIGN §6: private key files are 0600.
    local f found=0 mode
    while IFS= read -r f; do
        found=1
        mode=$(stat -c %a "$f")
        if [ "$mode" = 600 ]; then
            note PASS keys key-mode "${f#"$WORK"/} is 0600"
        else
            note FAIL keys key-mode "${f#"$WORK"/} has mode $mode, expected 600"
        fi
    done < <(grep -rl -- 'PRIVATE KEY' "$WORK/keys" 2>/dev/null | sort)
    if [ "$KEYS" = pkcs11 ]; then
        # The keys are in the token: no private key may be on disk at all.
        if [ "$found" = 0 ]; then
            note PASS keys key-mode "no private key under $WORK/keys (they are in the SoftHSM token)"
        else
            note FAIL keys key-mode "a private key is on disk with backend = pkcs11"
        fi
    else
        [ "$found" = 1 ] || note FAIL keys key-mode "no PEM private key found under $WORK/keys"
    fi
}

# ------------------------------------------------------------ the three paths
send_smtplib() {
    "$PY" "$HERE/smtp_send.py" --port "$PORT" --corpus "$CORPUS" | tee -a "$HARNESS" || true
}

send_swaks() {
    local data=$WORK/swaks/data logs=$WORK/swaks/logs name from rcpts rc reply
    mkdir -p "$data" "$logs"
    # --no-data-fixup makes swaks send the file exactly as it is (no header
    # rewriting, no token replacement, no extra trailing line), which also
    # means no dot-stuffing: do that (RFC 5321 4.5.2) and the final dot here.
    "$PY" - "$CORPUS" "$data" <<'EOF'
import os, re, sys
src, dst = sys.argv[1:]
for n in os.listdir(src):
    if n.endswith(".eml"):
        raw = open(os.path.join(src, n), "rb").read()
        open(os.path.join(dst, n), "wb").write(re.sub(rb"(?m)^\.", b"..", raw) + b".")
EOF
    while IFS=$'\t' read -r name from rcpts; do
        swaks --server 127.0.0.1 --port "$PORT" --helo swaks.interop.test \
            --from "$from" --to "$rcpts" --pipeline --timeout 30 \
            --no-data-fixup --data "@$data/$name" --suppress-data \
            >"$logs/$name.log" 2>&1 && rc=0 || rc=$?
        if [ "$rc" = 0 ]; then
            note PASS swaks sent "$name: accepted"
        else
            # swaks marks the server reply it did not expect with "<**".
            reply=$(grep -m1 '<\*\*' "$logs/$name.log" | sed 's/^ *<\*\* *//' || true)
            note FAIL swaks sent "$name: swaks exit $rc: ${reply:-$(tail -n 2 "$logs/$name.log" | tr '\n' ' ')}"
        fi
    done < <(manifest_lines)
}

# A Postfix instance of our own: config, queue and data under $WORK/postfix,
# no inet listener, no DNS, its log in a file (there is no syslog here), and
# nothing of the system's Postfix (/etc/postfix/main.cf, /var/spool/postfix)
# used or touched.
setup_postfix() {
    PFX=$WORK/postfix
    mkdir -p "$PFX/etc" "$PFX/queue" "$PFX/data"
    chown postfix "$PFX/data"   # master.lock and caches are written as postfix
    cat >"$PFX/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PFX/queue
data_directory = $PFX/data
mail_owner = postfix
setgid_group = postdrop
# As a host of the signing domain is named: Postfix qualifies cron's bare root as
# root@client.alpha.example (myorigin), which the relay signs with alpha.example's
# keys (subdomains, issue 14 item 5) rather than refusing.
myhostname = client.alpha.example
mydomain = alpha.example
myorigin = \$myhostname
# Nothing is delivered locally: every recipient goes to the relayhost.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
relayhost = [127.0.0.1]:$PORT
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
# No syslog here: log to a file, through postlogd (see master.cf).
maillog_file = $PFX/maillog
maillog_file_prefixes = $PFX
# A refusal by the relay is reported in the maillog and retried, not turned
# into a bounce that Postfix would then try to send through the relay too.
soft_bounce = yes
# Retry a temporary failure within the suite's time limit.
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 10s
EOF
    # Only the services a sendmail -> relayhost client needs; no chroot (the
    # queue has no copy of /etc and libraries) and no smtpd listener.
    cp "$ROOT/tests/postfix/master-services.cf" "$PFX/etc/master.cf"
    # `check` creates the queue directories with their owners and modes.
    # Postfix commands print errors only to a terminal; the rest is in maillog.
    if ! /usr/sbin/postfix -c "$PFX/etc" check >"$PFX/check.log" 2>&1 ||
        ! /usr/sbin/postfix -c "$PFX/etc" start >"$PFX/start.log" 2>&1; then
        note FAIL postfix start "postfix check/start failed: $(cat "$PFX/check.log" "$PFX/start.log" "$PFX/maillog" 2>/dev/null | tail -n 5 | tr '\n' ' ')"
        return 1
    fi
    POSTFIX_UP=1
    note PASS postfix start "Postfix $(/usr/sbin/postconf -c "$PFX/etc" -h mail_version) running, relayhost [127.0.0.1]:$PORT"
}

# Postfix is done when nothing is waiting for a first attempt (maildrop,
# incoming, active) and every message either reached the outbox or was
# deferred (soft_bounce turns a refusal into a deferral, logged in maillog).
postfix_settled() {
    local pending deferred
    read -r pending deferred < <(/usr/sbin/postqueue -c "$PFX/etc" -j 2>/dev/null | "$PY" -c '
import json, sys
q = [json.loads(line)["queue_name"] for line in sys.stdin if line.strip()]
print(sum(n != "deferred" for n in q), q.count("deferred"))')
    PF_DEFERRED=$deferred
    [ "$pending" = 0 ] && outbox_has $(($(accepted postfix) - deferred))
}

send_postfix() {
    setup_postfix || return 0
    local name from rcpts rc
    while IFS=$'\t' read -r name from rcpts; do
        # -i: a line with a single dot is message text, not the end of input.
        # shellcheck disable=SC2086  # rcpts split on commas into arguments
        /usr/sbin/sendmail -C "$PFX/etc" -i -f "$from" -- ${rcpts//,/ } \
            <"$CORPUS/$name" >"$PFX/sendmail.log" 2>&1 && rc=0 || rc=$?
        if [ "$rc" = 0 ]; then
            note PASS postfix sent "$name: queued by sendmail"
        else
            note FAIL postfix sent "$name: sendmail exit $rc: $(tr '\n' ' ' <"$PFX/sendmail.log")"
        fi
    done < <(manifest_lines)
}

postfix_report() {
    # What Postfix's smtp client was told by the relay, for anything not sent.
    local line
    while IFS= read -r line; do
        note FAIL postfix delivery "$line"
    done < <(grep -E 'status=(deferred|bounced|undeliverable|SOFTBOUNCE)' "$PFX/maillog" 2>/dev/null |
        sed -E 's/^.*: ([0-9A-F]+): (to=<[^>]*>).* (status=.*)$/\1 \2 \3/' | sort -u)
    if grep -q 'status=sent' "$PFX/maillog" 2>/dev/null; then
        note PASS postfix delivery "$(grep -c 'status=sent' "$PFX/maillog") recipient deliveries to the relay logged as sent"
    fi
}

# ------------------------------------------------------------ run
say "verifier self-test (dkimpy signs the corpus itself; verify.py must accept it and catch broken signatures)"
if "$PY" "$HERE/selftest.py" | tee "$WORK/selftest.log"; then
    note PASS selftest verify.py "accepts good signatures, rejects each kind of bad one"
else
    note FAIL selftest verify.py "see the self-test output above"
fi

say "relay: $BIN; keys: $KEYS; corpus: $NMSG messages; work dir: $WORK"
have_records=0
groups=()
for path in $PATHS; do
    say "path $path"
    start_relay "$path" || continue
    if [ "$have_records" = 0 ]; then
        fetch_records && have_records=1
    fi
    case $path in
        smtplib) send_smtplib ;;
        swaks) send_swaks ;;
        postfix) send_postfix ;;
        *) note FAIL "$path" unknown "no such path (use smtplib, swaks, postfix)"; stop_relay; continue ;;
    esac
    if [ "$path" = postfix ]; then
        # Nothing to wait for when the Postfix instance did not start.
        if [ "$POSTFIX_UP" = 1 ]; then
            PF_DEFERRED=0
            wait_until "$path" "Postfix to hand every message to the relay" postfix_settled &&
                check_outbox "$path" $(($(accepted postfix) - PF_DEFERRED))
            postfix_report
            /usr/sbin/postfix -c "$PFX/etc" stop >/dev/null 2>&1 || true
        fi
    else
        n=$(accepted "$path")
        wait_until "$path" "$n messages in the outbox" outbox_has "$n" && check_outbox "$path" "$n"
    fi
    stop_relay
    groups+=("$path=$OUTBOX")
done

say "dkimpy verification"
if [ "$have_records" = 1 ] && [ ${#groups[@]} -gt 0 ]; then
    "$PY" "$HERE/verify.py" --records "$WORK/records.json" --corpus "$CORPUS" \
        --summary-json "$WORK/verify-summary.json" "${groups[@]}" || true
else
    note FAIL verify dkimpy "nothing to verify (no records or no path ran)"
fi

say "go-msgauth verification (tests/interop/gomsgauth)"
# A second independent verifier: go-msgauth compares h= names by spelling and
# fails signatures dkimpy passes (Message-Id vs Message-ID), so both must pass.
if [ "$have_records" = 1 ] && [ ${#groups[@]} -gt 0 ]; then
    if (cd "$HERE/gomsgauth" && GO111MODULE=off GOPATH=$GOPATH_DEBIAN GOCACHE=$WORK/gocache \
            go build -o "$WORK/gomsgauth" .) 2>"$WORK/gomsgauth-build.log"; then
        "$WORK/gomsgauth" "$WORK/records.json" "${groups[@]}" >"$WORK/gomsgauth.log" || true
        grep '^FAIL' "$WORK/gomsgauth.log" || true
        cat "$WORK/gomsgauth.log" >>"$HARNESS"
    else
        note FAIL verify go-msgauth "build failed: $(tr '\n' ' ' <"$WORK/gomsgauth-build.log" | head -c 400)"
    fi
else
    note FAIL verify go-msgauth "nothing to verify (no records or no path ran)"
fi

say "OpenDKIM verification (tests/interop/opendkim_verify.py)"
if [ "$have_records" = 1 ] && [ ${#groups[@]} -gt 0 ]; then
    "$PY" "$HERE/opendkim_verify.py" --records "$WORK/records.json" "${groups[@]}" \
        >"$WORK/opendkim.log" 2>&1 || true
    grep -v '^PASS' "$WORK/opendkim.log" || true
    grep -E '^(PASS|FAIL) ' "$WORK/opendkim.log" >>"$HARNESS" ||
        note FAIL verify opendkim "no result: $(tail -n 3 "$WORK/opendkim.log" | tr '\n' ' ')"
else
    note FAIL verify opendkim "nothing to verify (no records or no path ran)"
fi

say "DNS server for Mail::DKIM and rspamd (tests/interop/dnsd.py)"
# Neither reads keys offline: they get them (and rspamd every other lookup) from a
# DNS server on 127.0.0.1 that serves the records of `keys dns --json`.
DNS_PORT=
if [ "$have_records" = 1 ] && [ ${#groups[@]} -gt 0 ]; then
    "$PY" "$HERE/dnsd.py" --records "$WORK/records.json" --port-file "$WORK/dnsd.port" \
        2>"$WORK/dnsd.log" &
    DNSD_PID=$!
    for _ in $(seq 1 50); do
        [ -s "$WORK/dnsd.port" ] && break
        sleep 0.1
    done
    DNS_PORT=$(cat "$WORK/dnsd.port" 2>/dev/null || true)
    [ -n "$DNS_PORT" ] || note FAIL verify dnsd "did not start: $(tail -n 3 "$WORK/dnsd.log" | tr '\n' ' ')"
fi

# Both must be able to say no: a copy of one signed message with its Subject changed
# must fail in each (verify.py's self-test does the same for dkimpy).
TAMPERED=$WORK/tampered
mkdir -p "$TAMPERED"
first=$(ls "${groups[0]#*=}"/*.eml 2>/dev/null | head -n 1 || true)
[ -n "$first" ] && sed 's/^Subject: \(.*\)$/Subject: \1 (changed)/' "$first" >"$TAMPERED/changed.eml"
expect_fail() {  # expect_fail VERIFIER LOG: every signature line of the tampered copy is FAIL
    if [ -z "$first" ]; then
        note FAIL "$1" tamper "no signed message to tamper with"
    elif grep -q '^FAIL tampered ' "$2" && ! grep -E '^PASS tampered [a-z]+-(message|rsa|ed25519-sha256)' "$2" >/dev/null; then
        note PASS "$1" tamper "a changed Subject fails every signature"
    else
        note FAIL "$1" tamper "a changed Subject was not caught: $(tr '\n' ' ' <"$2" | head -c 300)"
    fi
}

say "Mail::DKIM verification (tests/interop/maildkim_verify.pl)"
if [ -n "$DNS_PORT" ]; then
    perl "$HERE/maildkim_verify.pl" "$DNS_PORT" "${groups[@]}" >"$WORK/maildkim.log" 2>&1 || true
    grep -v '^PASS' "$WORK/maildkim.log" || true
    grep -E '^(PASS|FAIL) ' "$WORK/maildkim.log" >>"$HARNESS" ||
        note FAIL verify maildkim "no result: $(tail -n 3 "$WORK/maildkim.log" | tr '\n' ' ')"
    perl "$HERE/maildkim_verify.pl" "$DNS_PORT" "tampered=$TAMPERED" >"$WORK/maildkim-tampered.log" 2>&1 || true
    expect_fail maildkim "$WORK/maildkim-tampered.log"
else
    note FAIL verify maildkim "nothing to verify (no DNS server, records or path)"
fi

say "rspamd verification (tests/interop/rspamd_verify.py)"
if [ -n "$DNS_PORT" ]; then
    mkdir -p "$WORK/rspamd"
    "$PY" "$HERE/rspamd_verify.py" --dns-port "$DNS_PORT" --records "$WORK/records.json" \
        --work "$WORK/rspamd" "${groups[@]}" "tampered=$TAMPERED" >"$WORK/rspamd.log" 2>&1 || true
    # One rspamd start for both: the tampered copy's lines go to their own check.
    grep '^[A-Z]* tampered ' "$WORK/rspamd.log" >"$WORK/rspamd-tampered.log" || true
    sed -i '/^[A-Z]* tampered /d' "$WORK/rspamd.log"
    expect_fail rspamd "$WORK/rspamd-tampered.log"
    grep -v '^PASS' "$WORK/rspamd.log" || true
    grep -E '^(PASS|FAIL) ' "$WORK/rspamd.log" >>"$HARNESS" ||
        note FAIL verify rspamd "no result: $(tail -n 3 "$WORK/rspamd.log" | tr '\n' ' ')"
else
    note FAIL verify rspamd "nothing to verify (no DNS server, records or path)"
fi

say "summary"
"$PY" - "$HARNESS" "$WORK/verify-summary.json" <<'EOF'
import collections, json, os, sys
harness, summary = sys.argv[1:]
counts = collections.OrderedDict()
failures = []
for line in open(harness):
    verdict, path, check, detail = (line.rstrip("\n").split(" ", 3) + [""])[:4]
    c = counts.setdefault((path, check), [0, 0])
    c[verdict != "PASS"] += 1
    if verdict != "PASS":
        failures.append("[%s] %s: %s" % (path, check, detail))
passed = sum(c[0] for c in counts.values())
failed = sum(c[1] for c in counts.values())
if os.path.exists(summary):
    # verify.py has listed its own failures above.
    s = json.load(open(summary))
    passed += s["passed"]
    failed += s["failed"]
    print("%-10s %-12s %d passed, %d failed" % ("dkimpy", "(all)", s["passed"], s["failed"]))
for (path, check), (p, f) in counts.items():
    print("%-10s %-12s %d passed, %d failed" % (path, check, p, f))
if failures:
    print("\nHarness failures:")
    for f in failures:
        print("  " + f)
print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
EOF
