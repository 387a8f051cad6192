#!/usr/bin/env bash
# The scenarios of issue 8's targets, one after another, then a summary table:
#   default      5,000 x 4 KiB messages over 20 sessions, closed loop
#   rate500      the same offered at 500 msg/s (p99 end-of-DATA -> 250 target: < 20 ms)
#   25MB         one 25 MB message (peak RSS target: < 3x its size)
#   idle1000     1,000 idle sessions held open (RSS target: < 100 MB)
#   domains1 / domains10000   throughput with 1 and with 10,000 signing domains (within 10%)
#   200x25MB     200 concurrent 25 MB messages (peak RSS target: < 300 MB)
#   headerbomb   one 25 MB header block of tiny fields, refused 552 (target: a few MB)
# Set POSTFIX=1 to run bench/postfix-compare.sh first (needs root).
#
#   bash bench/run-all.sh
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
out=$(mktemp -d /tmp/dkim-relay-bench-all.XXXXXX)
trap 'rm -rf "$out"' EXIT

cargo build --release --benches --locked -q

if [ "${POSTFIX:-0}" = 1 ]; then
    bash bench/postfix-compare.sh | tee "$out/postfix-compare"
fi

scenario() { # name flags...
    local name=$1
    shift
    echo "## $name: cargo bench --bench relay -- $*"
    cargo bench --bench relay --locked -q -- --label "$name" "$@" | tee "$out/$name"
}

scenario default --n 5000 --size 4KiB --concurrency 20
scenario rate500 --n 5000 --size 4KiB --concurrency 20 --rate 500
scenario 25MB --n 1 --size 25MB --concurrency 1
scenario idle1000 --n 0 --idle 1000
scenario domains1 --n 5000 --size 4KiB --concurrency 20 --domains 1
scenario domains10000 --n 5000 --size 4KiB --concurrency 20 --domains 10000
scenario 200x25MB --n 200 --size 25MB --concurrency 200
scenario headerbomb --n 1 --size 25MB --concurrency 1 --header-bomb

value() { sed -n "s/^bench\.$2=//p" "$out/$1"; }
echo
echo "==== summary ===="
printf '%-14s %10s %10s %9s %9s %9s %10s %7s %9s\n' \
    scenario accepted/s delivered/s p50_ms p99_ms max_ms peak_rss_MiB cpu_s idle_MiB
for s in default rate500 25MB idle1000 domains1 domains10000 200x25MB headerbomb; do
    printf '%-14s %10s %10s %9s %9s %9s %10s %7s %9s\n' "$s" \
        "$(value "$s" accepted_per_s)" "$(value "$s" delivered_per_s)" \
        "$(value "$s" p50_ms)" "$(value "$s" p99_ms)" "$(value "$s" max_ms)" \
        "$(value "$s" peak_rss_mib)" "$(value "$s" cpu_s)" "$(value "$s" idle_rss_mib)"
done
if [ -f "$out/postfix-compare" ]; then
    grep '^delivered msg/s' "$out/postfix-compare"
fi
d1=$(value domains1 delivered_per_s)
d10k=$(value domains10000 delivered_per_s)
awk -v a="$d1" -v b="$d10k" 'BEGIN {
    if (a > 0) printf "10,000 domains vs 1: %.1f%% of the throughput\n", 100 * b / a
}'
