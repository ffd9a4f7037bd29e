#!/usr/bin/env bash
# The concurrency stress test (tests/stress.rs) run long: 8 threads for SECS seconds on a
# stratafs mount with the default number of daemon threads, then with threads=8; each run
# prints one "stress[...]" line with the operations completed, ops/s and errors by errno.
#
#   scripts/stress.sh [SECS]     as root, from anywhere in the repository (default 60)
#
# CI runs the same test for 15 s per mount as part of `cargo test` (scripts/test.sh).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/common.sh
. scripts/common.sh

secs=${1:-60}
case "$secs" in
  '' | *[!0-9]*) die "SECS must be a number of seconds, not '$secs'" ;;
esac
require_root "scripts/stress.sh"
require_cargo
ensure_fuse_device
section "Stress: 8 threads x $secs s, per mount"
log=$(mktemp /tmp/sfs-stress.XXXXXX.log)
set +e
STRATAFS_STRESS_SECS=$secs cargo test --release --test stress -- --test-threads=1 --nocapture 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
section "Figures"
grep -E '^stress\[' "$log" || say "(no figures: the test did not get that far)"
say "full log: $log"
exit "$rc"
