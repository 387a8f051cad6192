#!/usr/bin/env bash
# Builds the project's Dockerfile with podman, exactly as committed, and smoke-tests the
# image: SMTP greeting, a message signed and verified with dkimpy, the HEALTHCHECK, a
# non-root process and a clean stop on SIGTERM. DESIGN §11 explains the podman setup.
#
# No registry can be reached, so the two base images are made here and cached in podman's
# storage (and as tarballs in $CACHE_DIR): debian:bookworm-slim by debootstrap from the
# machine's Debian mirror, and a stand-in rust:1.95-slim-bookworm from that image plus the
# machine's Rust toolchain (tests/container/rust-standin.Containerfile).
#
# Run as root: bash tests/container/run.sh. Needs podman runc debootstrap python3-dkim
# python3-nacl (installed by .ci/run). Prints "PASS|FAIL container CHECK detail" lines and
# a closing "N passed, N failed"; exits 1 when anything failed.
# Environment: DKIM_RELAY_CI_CACHE (tarball cache dir), DEBIAN_MIRROR (default: the one
# apt uses), CONTAINER_TIMEOUT (seconds for each wait, default 60), KEEP_IMAGE=1 (keep the
# built image, tagged localhost/dkim-relay:ci).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/tests/container
PY=/usr/bin/python3
CACHE_DIR=${DKIM_RELAY_CI_CACHE:-/var/cache/dkim-relay-ci}
TIMEOUT=${CONTAINER_TIMEOUT:-60}
DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
RUN_ID="$(date +%Y%m%d%H%M%S)-$$"
IMAGE=localhost/dkim-relay:ci-$RUN_ID
NAME=dkim-relay-ci-$RUN_ID
LABEL=dkim-relay-ci.key

WORK=$(mktemp -d /var/tmp/dkim-relay-container.XXXXXX)
PASSED=0
FAILED=0
CONTAINER_STARTED=0

say() { printf '%s [%ss] %s\n' "--" "$SECONDS" "$*"; }
note() { # note PASS|FAIL CHECK DETAIL
    printf '%s container %s: %s\n' "$1" "$2" "$3"
    if [ "$1" = PASS ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
}

cleanup() {
    local rc=$?
    set +e
    if [ "$CONTAINER_STARTED" = 1 ]; then
        if [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ]; then
            echo "---- podman logs $NAME (last 60 lines)"
            podman logs --tail 60 "$NAME" 2>&1
            echo "---- state: $(podman inspect --format '{{.State.Status}} exit={{.State.ExitCode}} health={{.State.Health.Status}}' "$NAME" 2>&1)"
        fi
        podman rm --force --volumes --time 0 "$NAME" >/dev/null 2>&1
    fi
    if [ "${KEEP_IMAGE:-0}" = 1 ] && podman image exists "$IMAGE" 2>/dev/null; then
        podman tag "$IMAGE" localhost/dkim-relay:ci
    fi
    podman rmi "$IMAGE" >/dev/null 2>&1
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in podman runc debootstrap "$PY"; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is missing (apt-get install podman runc debootstrap python3-dkim python3-nacl)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run.sh: run as root (rootful podman, debootstrap)" >&2; exit 1; }

# ---------------------------------------------------------------- podman setup (§11)
hard_nofile=$(ulimit -Hn)
if [ "$hard_nofile" = unlimited ] || [ "$hard_nofile" -gt 1048576 ]; then hard_nofile=1048576; fi
cgroup_manager=cgroupfs
if [ -d /run/systemd/system ]; then cgroup_manager=systemd; fi
cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$hard_nofile:$hard_nofile", "nproc=32768:32768"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "$cgroup_manager"
events_logger = "file"
EOF
export CONTAINERS_CONF=$WORK/containers.conf
say "podman $(podman version --format '{{.Client.Version}}'), runtime $(podman info --format '{{.Host.OCIRuntime.Name}}'), storage $(podman info --format '{{.Store.GraphDriverName}}'), nofile $hard_nofile"

# Proxy settings reach the build steps only when the machine has them.
BUILD_ARGS=()
for var in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
    if [ -n "${!var:-}" ]; then BUILD_ARGS+=(--build-arg "$var=${!var}"); fi
done
# Build steps use the machine's network (and so its DNS and proxy) as cargo on it does.
BUILD_FLAGS=(--format docker --pull=never --layers=false --network=host --runtime runc)

# ---------------------------------------------------------------- base images
# ensure_image IMAGE KEY MAKE_FUNCTION: present with label KEY, else loaded from the
# tarball cache, else made by MAKE_FUNCTION (which tags IMAGE with the label) and saved.
ensure_image() {
    local image=$1 key=$2 make=$3 have="" tarball
    tarball="$CACHE_DIR/$(printf '%s' "$image" | tr '/:' '__')-$key.tar"
    if podman image exists "$image"; then
        have=$(podman image inspect --format "{{index .Labels \"$LABEL\"}}" "$image" 2>/dev/null || true)
    fi
    if [ "$have" = "$key" ]; then
        say "$image: cached in podman storage ($key)"
        return 0
    fi
    if [ -f "$tarball" ]; then
        say "$image: loading $tarball"
        if podman load -q -i "$tarball" >/dev/null &&
            [ "$(podman image inspect --format "{{index .Labels \"$LABEL\"}}" "$image" 2>/dev/null)" = "$key" ]; then
            return 0
        fi
        say "$image: cached tarball unusable, making the image again"
        rm -f "$tarball"
    fi
    say "$image: making it (${have:+stale key $have, }no cache)"
    local old_id=""
    old_id=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    "$make" "$image" "$key"
    # The stale image lost its tag to the new one: drop it rather than leave it dangling.
    if [ -n "$old_id" ] && [ "$old_id" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
        podman rmi "$old_id" >/dev/null 2>&1 || true
    fi
    mkdir -p "$CACHE_DIR"
    rm -f "$CACHE_DIR/$(printf '%s' "$image" | tr '/:' '__')"-*.tar
    if podman save -q --format docker-archive -o "$tarball.part" "$image"; then
        mv "$tarball.part" "$tarball"
        say "$image: made and saved to $tarball"
    else
        rm -f "$tarball.part"
        say "$image: made (saving it to $CACHE_DIR failed; only podman storage caches it)"
    fi
}

debian_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        case $f in
        *.sources) awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "$f" ;;
        *) awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; break } }' "$f" ;;
        esac
    done | grep -E '/debian/?$' | head -n 1 || true
}

make_debian() {
    local image=$1 key=$2 rootfs=$WORK/rootfs
    say "debootstrap --variant=minbase bookworm from $MIRROR"
    if ! timeout 900 debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
        tail -n 30 "$WORK/debootstrap.log" >&2
        [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
        echo "run.sh: debootstrap failed" >&2
        exit 1
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
    tar --numeric-owner -C "$rootfs" -c . |
        podman import --quiet --change 'CMD ["bash"]' --change "LABEL $LABEL=$key" - "$image" >/dev/null
    rm -rf "$rootfs"
}

make_rust() {
    local image=$1 key=$2 stage=$WORK/rust-standin d
    mkdir -p "$stage/tc" "$stage/host/cargo"
    # Hard links where the toolchain is on the same file system (instant), else a copy.
    for d in bin lib libexec; do
        [ -d "$SYSROOT/$d" ] || continue
        cp -al "$SYSROOT/$d" "$stage/tc/" 2>/dev/null || cp -a "$SYSROOT/$d" "$stage/tc/"
    done
    cp "$CA_BUNDLE" "$stage/host/ca-certificates.crt"
    if [ -n "$CARGO_CONFIG" ]; then cp "$CARGO_CONFIG" "$stage/host/cargo/config.toml"; fi
    timeout 1800 podman build "${BUILD_FLAGS[@]}" "${BUILD_ARGS[@]}" \
        --build-context tc="$stage/tc" --build-context host="$stage/host" \
        --label "$LABEL=$key" -t "$image" -f "$HERE/rust-standin.Containerfile" "$stage" \
        >"$WORK/rust-standin.log" 2>&1 || {
        tail -n 40 "$WORK/rust-standin.log" >&2
        echo "run.sh: building the rust stand-in failed" >&2
        exit 1
    }
    rm -rf "$stage"
}

MIRROR=${DEBIAN_MIRROR:-$(debian_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SYSROOT=$(rustc --print sysroot)
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
[ -r "$CA_BUNDLE" ] || { echo "run.sh: no CA bundle at $CA_BUNDLE" >&2; exit 1; }
CARGO_CONFIG=""
for f in "${CARGO_HOME:-$HOME/.cargo}/config.toml" "${CARGO_HOME:-$HOME/.cargo}/config"; do
    if [ -f "$f" ]; then CARGO_CONFIG=$f; break; fi
done
case "$(rustc --version)" in
"rustc 1.95."*) ;;
*) say "warning: the machine's $(rustc --version) stands in for rust:1.95" ;;
esac

debian_key=$(printf 'minbase bookworm %s v1' "$MIRROR" | sha256sum | cut -c1-16)
ensure_image "$DEBIAN_IMAGE" "$debian_key" make_debian
rust_key=$( {
    echo "$debian_key"
    cat "$HERE/rust-standin.Containerfile" "$CA_BUNDLE"
    rustc -vV
    cargo -V
    if [ -n "$CARGO_CONFIG" ]; then cat "$CARGO_CONFIG"; fi
} | sha256sum | cut -c1-16)
ensure_image "$RUST_IMAGE" "$rust_key" make_rust

# ---------------------------------------------------------------- the project's image
say "podman build -f Dockerfile (as committed) -t $IMAGE"
build_start=$SECONDS
if timeout 2700 podman build "${BUILD_FLAGS[@]}" "${BUILD_ARGS[@]}" -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT" \
    >"$WORK/build.log" 2>&1; then
    note PASS build "Dockerfile built in $((SECONDS - build_start))s"
else
    tail -n 60 "$WORK/build.log"
    note FAIL build "podman build failed after $((SECONDS - build_start))s (log above)"
    echo "$PASSED passed, $FAILED failed"
    exit 1
fi
health_cmd=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE" 2>/dev/null || true)
if [ -z "$health_cmd" ] || [ "$health_cmd" = null ]; then
    note FAIL image-healthcheck "the image has no HEALTHCHECK (built without --format docker?)"
fi

# ---------------------------------------------------------------- run it
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
SMTP_PORT=$(free_port)
METRICS_PORT=$(free_port)
while [ "$METRICS_PORT" = "$SMTP_PORT" ]; do METRICS_PORT=$(free_port); done
OUTBOX=$WORK/outbox
mkdir -p "$OUTBOX"
# The image's user (uid 10001 in the Dockerfile) writes the outbox; rootful podman, no userns.
uid=$(podman run --rm --entrypoint id "$IMAGE" -u 2>/dev/null || echo 10001)
chown "$uid" "$OUTBOX"
cp "$HERE/config.toml" "$WORK/config.toml"
chmod 644 "$WORK/config.toml"

say "podman run $NAME: SMTP on 127.0.0.1:$SMTP_PORT, metrics on 127.0.0.1:$METRICS_PORT"
CONTAINER_STARTED=1
if ! podman run --detach --name "$NAME" \
    --publish "127.0.0.1:$SMTP_PORT:2525" --publish "127.0.0.1:$METRICS_PORT:9325" \
    --volume "$WORK/config.toml:/etc/dkim-relay/config.toml:ro" \
    --volume "$OUTBOX:/var/lib/dkim-relay/outbox" \
    "$IMAGE" >/dev/null 2>"$WORK/run.err"; then
    cat "$WORK/run.err"
    note FAIL start "podman run failed"
    echo "$PASSED passed, $FAILED failed"
    exit 1
fi

# Without systemd podman cannot schedule the health timer and says so; the check below
# runs the HEALTHCHECK itself.
grep -v 'unable to get systemd connection' "$WORK/run.err" || true

running() { [ "$(podman inspect --format '{{.State.Running}}' "$NAME" 2>/dev/null)" = true ]; }

# (a) SMTP greeting from the host.
deadline=$((SECONDS + TIMEOUT))
greeting=""
while :; do
    if greeting=$("$PY" "$HERE/smtp.py" greet "$SMTP_PORT" 2>"$WORK/greet.err"); then break; fi
    if ! running || [ $SECONDS -ge $deadline ]; then greeting=""; break; fi
    sleep 0.5
done
if [ -n "$greeting" ]; then
    note PASS smtp-220 "127.0.0.1:$SMTP_PORT: $greeting"
else
    note FAIL smtp-220 "no 220 greeting within ${TIMEOUT}s (running: $(running && echo yes || echo no)): $(tail -n 1 "$WORK/greet.err")"
fi

# (b) A message goes in by SMTP and comes out signed; dkimpy verifies it against the
# records the relay itself prints (keys dns --json inside the container).
if [ -n "$greeting" ] && reply=$("$PY" "$HERE/smtp.py" send "$SMTP_PORT" 2>"$WORK/send.err"); then
    note PASS smtp-send "accepted: $reply"
    deadline=$((SECONDS + TIMEOUT))
    until compgen -G "$OUTBOX/*.eml" >/dev/null || [ $SECONDS -ge $deadline ]; do sleep 0.2; done
    if ! compgen -G "$OUTBOX/*.eml" >/dev/null; then
        note FAIL signed "no .eml in the bind-mounted outbox within ${TIMEOUT}s"
    elif ! podman exec "$NAME" dkim-relay --config /etc/dkim-relay/config.toml keys dns --json \
        >"$WORK/records.json" 2>"$WORK/records.err"; then
        note FAIL signed "podman exec ... keys dns --json failed: $(tr '\n' ' ' <"$WORK/records.err" | head -c 300)"
    elif "$PY" "$ROOT/tests/interop/verify.py" --records "$WORK/records.json" "container=$OUTBOX" \
        >"$WORK/verify.log" 2>&1; then
        note PASS signed "$(basename "$(compgen -G "$OUTBOX/*.eml" | head -n 1)") verified by dkimpy: $(tail -n 1 "$WORK/verify.log")"
    else
        cat "$WORK/verify.log"
        note FAIL signed "dkimpy did not verify the delivered message (verify.py output above)"
    fi
else
    note FAIL smtp-send "message not accepted: $(tail -n 1 "$WORK/send.err" 2>/dev/null)"
fi

# /healthz through the published metrics port.
if body=$("$PY" "$HERE/smtp.py" http "$METRICS_PORT" /healthz 2>"$WORK/http.err"); then
    note PASS metrics-port "GET 127.0.0.1:$METRICS_PORT/healthz: $body"
else
    note FAIL metrics-port "GET /healthz on 127.0.0.1:$METRICS_PORT: $(tail -n 1 "$WORK/http.err")"
fi

# (c) The image's HEALTHCHECK, run on demand (no systemd timer here).
deadline=$((SECONDS + TIMEOUT))
health=""
while :; do
    health=$(podman healthcheck run "$NAME" 2>&1) && break
    if ! running || [ $SECONDS -ge $deadline ]; then break; fi
    sleep 1
done
status=$(podman inspect --format '{{.State.Health.Status}}' "$NAME" 2>/dev/null || true)
if [ "$status" = healthy ]; then
    note PASS healthcheck "podman healthcheck run: ${health:-ok}; status $status"
else
    note FAIL healthcheck "podman healthcheck run: $health; status ${status:-unknown}"
fi

# (d) Not root, seen from inside and from the host.
inner_uid=$(podman exec "$NAME" id -u 2>&1 || true)
top_users=$(podman top "$NAME" user huser 2>&1 | tail -n +2 | tr -s ' \n' ' ' || true)
if [[ "$inner_uid" =~ ^[0-9]+$ ]] && [ "$inner_uid" != 0 ] && [ -n "$top_users" ] && ! grep -qw root <<<"$top_users"; then
    note PASS non-root "id -u in the container: $inner_uid; podman top (user huser): $top_users"
else
    note FAIL non-root "id -u: $inner_uid; podman top (user huser): $top_users"
fi

# (e) SIGTERM (the image's STOPSIGNAL) stops it cleanly within the stop timeout.
if running; then
    stop_start=$SECONDS
    podman stop --time 30 "$NAME" >/dev/null 2>"$WORK/stop.err" || true
    took=$((SECONDS - stop_start))
    exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME" 2>/dev/null || echo "?")
    podman logs "$NAME" >"$WORK/container.log" 2>&1 || true
    # serve logs "shutting down" at the signal and "stopped" once the relay has drained.
    if [ "$exit_code" = 0 ] && [ "$took" -lt 30 ] && grep -qE ' INFO shutting down$' "$WORK/container.log" &&
        grep -qE ' INFO stopped$' "$WORK/container.log"; then
        note PASS sigterm "podman stop --time 30: exit 0 after ${took}s, log: $(grep -E ' INFO (shutting down|stopped)$' "$WORK/container.log" | sed 's/^[^ ]* *//' | tr '\n' ';')"
    else
        note FAIL sigterm "podman stop --time 30: exit $exit_code after ${took}s; $(tr '\n' ' ' <"$WORK/stop.err")"
    fi
else
    note FAIL sigterm "the container was not running any more (exit $(podman inspect --format '{{.State.ExitCode}}' "$NAME" 2>/dev/null))"
fi

echo "container: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
