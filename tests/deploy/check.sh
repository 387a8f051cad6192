#!/usr/bin/env bash
# The deploy files, tried as an operator would use them (called by .ci/run; needs root):
#  1. every Kubernetes manifest parses and passes the Kubernetes schemas, offline
#     (kubernetes-validate ships them);
#  2. the config embedded in the ConfigMap and in deploy/compose.yaml passes `config check`
#     with exactly the files the manifests mount, as the user they run as; the relay pod is
#     unready ("no active key for example.com") on a fresh deployment, and the CronJob's
#     command runs against the same config and makes the first keys (tests/deploy/pods.py);
#  3. the README's systemd steps run as written in a throwaway root (overlays on /etc,
#     /var, /usr/local, /run in a private mount namespace), `systemd-analyze verify` passes
#     on the installed unit, and the service user reads the config and starts `serve`.
# DKIM_RELAY_BIN: the binary to use (default target/debug/dkim-relay, built if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
bin=${DKIM_RELAY_BIN:-$repo/target/debug/dkim-relay}
[ -x "$bin" ] || cargo build --locked
# Loopback ports of this script: 46000-46099.
smtp_port=46001

echo "== tools"
command -v systemd-analyze >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends systemd
if ! python3 -c 'import kubernetes_validate, yaml' 2>/dev/null; then
    python3 -m pip --version >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip
    # Debian's own python3 refuses a plain pip install (PEP 668); a pyenv one does not.
    python3 -m pip install -q kubernetes-validate 2>/dev/null \
        || python3 -m pip install -q --break-system-packages kubernetes-validate
fi
command -v kubernetes-validate >/dev/null || { echo "kubernetes-validate is not on PATH"; exit 1; }

echo "== kubernetes manifests against the schemas (offline)"
# In a network namespace of its own: the schemas come with the package, nothing is fetched.
unshare --net kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml

echo "== kubernetes and compose: the relay with exactly the mounted files"
python3 tests/deploy/pods.py "$bin" "$repo"

echo "== README systemd steps, as written, in a throwaway root"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A checkout with what the steps name: the release binary, the example config (with the
# edit step 1 asks for: the listen address) and the unit.
mkdir -p "$work/checkout/target/release" "$work/checkout/deploy/systemd" "$work/bin" "$work/ns"
cp "$bin" "$work/checkout/target/release/dkim-relay"
cp deploy/systemd/dkim-relay.service "$work/checkout/deploy/systemd/"
sed "s/^listen = \"127.0.0.1:2525\"/listen = \"127.0.0.1:$smtp_port\"/" config.example.toml \
    > "$work/checkout/config.example.toml"
grep -q "127.0.0.1:$smtp_port" "$work/checkout/config.example.toml"
# The steps: the shell block under "## systemd" in README.md.
awk '/^## systemd/{s=1} s&&/^```/{n++; next} s&&n==1{print} n>=2{exit}' README.md > "$work/steps.sh"
[ -s "$work/steps.sh" ] || { echo "no shell block under '## systemd' in README.md"; exit 1; }
cat "$work/steps.sh"
# systemd is not PID 1 here: `systemctl` verifies the unit with systemd-analyze and then
# starts it as systemd would (User=, StateDirectory=, WorkingDirectory=, ExecStart=).
cp tests/deploy/systemctl "$work/bin/systemctl"
chmod 0755 "$work/bin/systemctl"
unshare --mount --propagation private bash -euo pipefail -c '
    work=$1
    mount -t tmpfs tmpfs "$work/ns"
    for top in /etc /var /usr/local /run; do
        name=$(echo "$top" | tr / _)
        mkdir -p "$work/ns/$name-up" "$work/ns/$name-work"
        mount -t overlay overlay -o "lowerdir=$top,upperdir=$work/ns/$name-up,workdir=$work/ns/$name-work" "$top"
    done
    cd "$work/checkout"
    PATH="$work/bin:$PATH" SMTP_PORT=$2 bash -euxo pipefail "$work/steps.sh"
' check "$work" "$smtp_port" 2>&1 || { echo "FAIL: the README systemd steps"; exit 1; }
echo "ok   README systemd steps"
