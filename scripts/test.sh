#!/usr/bin/env bash
# The whole stratafs test suite: installs what it needs, builds, runs every unit and
# integration test (the integration tests mount filesystems, hence root), then the later
# stages (pjdfstest, fsx) when they are switched on. CI runs this through .ci/run.
#
#   scripts/test.sh [--pjdfstest] [--fsx] [--all] [--crash-loops=N]   run as root, from anywhere
#
# Environment:
#   STRATAFS_PJDFSTEST=1   same as --pjdfstest          STRATAFS_FSX=1   same as --fsx
#   STRATAFS_PODMAN=0      skip the podman stage (scripts/podman.sh: rootful and rootless
#                          podman with stratafs as mount_program; on by default)
#   STRATAFS_PODMAN_DEBIAN=0  skip the real-client stage (scripts/podman-debian.sh: apt-get,
#                          a 12-step podman build, --user, rootful and rootless, on a Debian
#                          image, compared with podman's native overlay; on by default;
#                          STRATAFS_PODMAN_DEBIAN_TIMEOUT seconds, default 900)
#   STRATAFS_PACKAGE=0     skip the package stage (scripts/package-debian.sh: the .deb of
#                          scripts/package.sh installed with dpkg -i in a fresh Debian 12
#                          root, mount -t fuse.stratafs, man stratafs, dpkg -r; on by default)
#   STRATAFS_GLUSTER=0     skip the GlusterFS stage (scripts/gluster.sh: layers on a one-brick
#                          GlusterFS volume in a private network namespace; on by default)
#   STRATAFS_TEST_TIMEOUT  seconds allowed to each `cargo test` pass (default 1200)
#   STRATAFS_CLASSIC_PASS  the second `cargo test` pass, over /dev/fuse (enable_uring=N):
#                          "adapter" (default: the mounted tests that exercise the transport
#                          adapter, see CLASSIC_TESTS below), "full" (every test) or 0 (none)
#   STRATAFS_CRASH_LOOPS   SIGKILL rounds of tests/crash_loop.rs (default 10; --crash-loops=50
#                          for the full run); STRATAFS_CRASH_SEED repeats a run
#   STRATAFS_FSX_OPS       operations per long fsx run (default 100000; the mapread run does a tenth)
#   PJDFSTEST_CONFIG=FILE  pjdfstest config (default ../shared/testdata/pjdfstest-overlay.toml,
#                          else tests/pjdfstest-overlay.toml)
#   STRATAFS_BIN=PATH      mount PATH instead of target/release/stratafs in the pjdfstest, fsx
#                          and podman stages (to calibrate them against another implementation)
#
# Exit status: 0 only if every test that ran passed and no stratafs mount was left behind.
# The last line is "summary: N passed, N failed, N skipped", counting cargo's tests plus one
# entry per extra stage (the dependency audit, pjdfstest and fsx over each transport, podman,
# podman-deb, package, gluster, the
# left-over-mount check). Here a missing prerequisite is a failure, never a skip: the tests run
# with STRATAFS_TEST_STRICT=1 (see build.rs) and a stage that cannot run fails; only a stage
# switched off by its variable counts as skipped.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/common.sh
. scripts/common.sh

# ---- Stages after cargo test: pjdfstest and fsx against a stratafs mount, on by default ----
# (STRATAFS_PJDFSTEST=0 / STRATAFS_FSX=0 skip them for a quick local run.)
run_pjdfstest_stage=${STRATAFS_PJDFSTEST:-1}
run_fsx_stage=${STRATAFS_FSX:-1}
run_podman_stage=${STRATAFS_PODMAN:-1}
run_podman_debian_stage=${STRATAFS_PODMAN_DEBIAN:-1}
run_gluster_stage=${STRATAFS_GLUSTER:-1}
run_package_stage=${STRATAFS_PACKAGE:-1}
PJDFSTEST_VERSION=0.2.2 # the version ../shared/testdata/pjdfstest-overlay.toml was calibrated with
FSX_VERSION=0.2.0

for arg in "$@"; do
  case "$arg" in
    --pjdfstest) run_pjdfstest_stage=1 ;;
    --fsx) run_fsx_stage=1 ;;
    --all) run_pjdfstest_stage=1 run_fsx_stage=1 ;;
    --crash-loops=*) export STRATAFS_CRASH_LOOPS="${arg#*=}" ;;
    -h | --help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (try --help)" ;;
  esac
done

require_root "scripts/test.sh"

section "Dependencies"
# Every package a test or stage runs a program from; scripts/test-programs.txt says which program
# each one is for, and the "deps" stage (scripts/deps-audit.sh) checks the two agree, so that a
# fresh machine installs everything here, not later as some other package's dependency.
ensure_packages fuse3 attr acl libcap2-bin gcc libc6-dev fuse-overlayfs unionfs-fuse squashfs-tools \
  squashfuse fuse2fs dpkg-dev podman runc uidmap catatonit busybox-static debootstrap python3-minimal \
  xfsprogs strace glusterfs-server glusterfs-client glusterfs-cli glusterfs-common iproute2 procps
require_cargo
ensure_fuse_device
cargo --version
rustc --version
# A test whose prerequisite is missing fails here; `cargo test` run by hand reports it as
# ignored instead (build.rs sets the cfg(have = "...") values the tests check).
export STRATAFS_TEST_STRICT=1

section "Left-over mounts"
if cleanup_stratafs_mounts; then say "none"; fi

scratch=$(mktemp -d /tmp/sfs-test.XXXXXX)
chmod 0755 "$scratch" # pjdfstest's unprivileged users must reach the mount point inside it
target_dir=${CARGO_TARGET_DIR:-$repo/target}
logs="$target_dir/test-logs" # kept after the run (target/ is not in git)
mkdir -p "$logs"
secondary="$scratch/secondary"
STRATAFS_PID=
stage_mnt=
# FUSE over io_uring (issue #20): the fuse module's enable_uring is Y for the run, so every
# mount of the suite and of the stages goes over the ring by default; the old value comes back
# at exit. A kernel without the parameter fails the run (the ring passes cannot run).
URING_PARAM=/sys/module/fuse/parameters/enable_uring
uring_old=
cleanup() {
  local rc=$?
  [ -n "$uring_old" ] && printf '%s\n' "$uring_old" >"$URING_PARAM"
  [ -n "$stage_mnt" ] && stop_stratafs "$stage_mnt"
  unmount_path "$secondary" || true
  cleanup_stratafs_mounts || true
  remove_scratch "$scratch" || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

passed=0 failed=0 skipped=0
stage_lines=()
stage_result() { # NAME pass|fail|skip DETAIL
  case "$2" in
    pass) passed=$((passed + 1)) ;;
    fail) failed=$((failed + 1)) ;;
    skip) skipped=$((skipped + 1)) ;;
  esac
  stage_lines+=("$(printf '%-10s %s: %s' "$1" "$2" "$3")")
}

section "Dependency audit"
# Every program the tests and stages run comes from a package installed above
# (scripts/test-programs.txt), and each package of that list is needed.
deps_log="$logs/deps-audit.log"
if scripts/deps-audit.sh >"$deps_log" 2>&1 && scripts/deps-audit.sh --self-test >>"$deps_log" 2>&1; then
  cat "$deps_log"
  stage_result deps pass "$(head -n 1 "$deps_log")"
else
  cat "$deps_log"
  stage_result deps fail "scripts/deps-audit.sh found a program the dependency step does not install (full log: $deps_log)"
fi

section "FUSE over io_uring: $URING_PARAM"
if [ -w "$URING_PARAM" ]; then
  uring_old=$(cat "$URING_PARAM")
  printf 'Y\n' >"$URING_PARAM"
  say "was $uring_old; Y for this run (put back at exit)"
  stage_result io_uring pass "$URING_PARAM set to Y for the run (was $uring_old)"
else
  stage_result io_uring fail "$URING_PARAM is missing: a kernel without FUSE over io_uring; the io_uring passes cannot run"
fi

section "Build"
cargo build --release
bin=${STRATAFS_BIN:-$target_dir/release/stratafs}

# The mounted tests that exercise the transport adapter (dispatcher and front end), run again
# over /dev/fuse by the classic pass.
CLASSIC_TESTS="request_counts stress readdir_streams lower_passthrough remove_privs bad_requests
  rootless dino link_count_race chown_ctime remount differential_read differential_write
  hard_links lower_hard_links mmap_times permissions apptainer file_handles index"

# cargo_pass NAME Y|N [cargo test args...]: one `cargo test` pass with enable_uring=Y|N, its
# results counted in the summary.
cargo_pass() {
  local name=$1 uring=$2 log="$logs/cargo-test-$1.log" rc p f g
  shift 2
  section "cargo test --release, $name pass (enable_uring=$uring)"
  [ -w "$URING_PARAM" ] && printf '%s\n' "$uring" >"$URING_PARAM"
  set +e
  timeout --kill-after=30 "${STRATAFS_TEST_TIMEOUT:-1200}" \
    cargo test --release --no-fail-fast "$@" -- --test-threads=2 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" = 124 ] && say "cargo test was stopped after ${STRATAFS_TEST_TIMEOUT:-1200} s"
  read -r p f g < <(awk '/^test result:/ {
      for (i = 1; i <= NF; i++) {
        if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i
      }
    } END { print p+0, f+0, g+0 }' "$log")
  passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + g))
  if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
    # The tests did not build, a test binary crashed, or the run timed out: count it once.
    stage_result "cargo test" fail "$name pass: exit status $rc with no failed test reported (build error, crash or timeout)"
  fi
  cargo_lines+=("cargo test, $name pass (enable_uring=$uring): $p passed, $f failed, $g ignored (exit status $rc)")
  test_logs+=("$log")
}
cargo_lines=() test_logs=()
if [ -w "$URING_PARAM" ]; then
  cargo_pass io_uring Y
fi
case "${STRATAFS_CLASSIC_PASS:-adapter}" in
  0) say "classic pass off (STRATAFS_CLASSIC_PASS=0)" ;;
  full) cargo_pass classic N ;;
  *)
    classic_args=()
    for t in $CLASSIC_TESTS; do classic_args+=(--test "$t"); done
    cargo_pass classic N "${classic_args[@]}"
    ;;
esac
# The stages run over the ring.
[ -w "$URING_PARAM" ] && printf 'Y\n' >"$URING_PARAM"

# Stages mount with -o io_uring (the ring or no mount) when the ring passes run on our binary.
stage_uring=
[ -w "$URING_PARAM" ] && [ -z "${STRATAFS_BIN:-}" ] && stage_uring=,io_uring

# stage_mount NAME [TRANSPORT]: a fresh lower/upper/work under the scratch dir and a
# read-write stratafs mount of it at $stage_mnt, over the ring (TRANSPORT empty: $stage_uring)
# or over /dev/fuse (TRANSPORT ",noio_uring"). Options can be changed with STRATAFS_STAGE_OPTS.
stage_mount() {
  local d="$scratch/$1" transport=${2-$stage_uring}
  mkdir -p "$d/lower" "$d/upper" "$d/work" "$d/mnt"
  printf 'a file that starts in the lower layer\n' >"$d/lower/lower-file"
  stage_mnt="$d/mnt"
  mount_stratafs "$bin" \
    "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work,${STRATAFS_STAGE_OPTS:-allow_other,default_permissions$transport}" \
    "$stage_mnt" "$d/stratafs.log"
}
stage_unmount() {
  stop_stratafs "$stage_mnt"
  stage_mnt=
}

# ---- pjdfstest (POSIX conformance), gated by STRATAFS_PJDFSTEST / --pjdfstest ----
# run_pjdfstest [classic]: over the ring (as the stages run), or over /dev/fuse.
run_pjdfstest() {
  local name=pjdfstest${1:+-$1} transport=${1:+,noio_uring}
  local config log="$logs/$name.log" rc summary
  config=${PJDFSTEST_CONFIG:-$repo/../shared/testdata/pjdfstest-overlay.toml}
  [ -f "$config" ] || config="$repo/tests/pjdfstest-overlay.toml"
  if [ ! -f "$config" ]; then
    stage_result "$name" fail "no config (../shared/testdata/pjdfstest-overlay.toml nor tests/pjdfstest-overlay.toml)"
    return
  fi
  if ! cargo install --locked --version "$PJDFSTEST_VERSION" pjdfstest; then
    stage_result "$name" fail "cargo install pjdfstest failed"
    return
  fi
  # A second filesystem for the EXDEV cases.
  mkdir -p "$secondary"
  if ! mount -t tmpfs -o size=64m sfs-secondary "$secondary"; then
    stage_result "$name" fail "could not mount the secondary tmpfs"
    return
  fi
  if ! stage_mount "$name" "${transport:-$stage_uring}"; then
    stage_result "$name" fail "mount failed"
    return
  fi
  set +e
  (cd "$stage_mnt" && timeout 1200 pjdfstest -c "$config" -s "$secondary" -p "$stage_mnt") >"$log" 2>&1
  rc=$?
  set -e
  stage_unmount
  unmount_path "$secondary" || true
  # One line per test in the log; show the unexpected failures and pjdfstest's own summary.
  grep -E 'FAILED$' "$log" || true
  summary=$(grep -E '^Summary:' "$log" | tail -n 1)
  [ -n "$summary" ] || tail -n 40 "$log"
  if [ "$rc" = 0 ]; then
    stage_result "$name" pass "${summary:-exit status 0} (config $config)"
  else
    stage_result "$name" fail "${summary:-exit status $rc} (full log: $log)"
  fi
}

# ---- fsx (random read/write/truncate/mmap, data verified), gated by STRATAFS_FSX / --fsx ----
# run_fsx [classic]: over the ring (as the stages run), or over /dev/fuse with a fifth of the
# operations (the long runs are the ring's; this one shows the classic path's data is right).
run_fsx() {
  local name=fsx${1:+-$1} transport=${1:+,noio_uring}
  local log="$logs/$name.log" rc=0 ops=${STRATAFS_FSX_OPS:-100000} run target config n
  [ -z "${1:-}" ] || ops=$((ops / 5))
  if ! cargo install --locked --version "$FSX_VERSION" fsx; then
    stage_result "$name" fail "cargo install fsx failed"
    return
  fi
  if ! stage_mount "$name" "${transport:-$stage_uring}"; then
    stage_result "$name" fail "mount failed"
    return
  fi
  # A file created in the upper; one that starts in the lower (copied up when fsx opens
  # it); every forwarded operation (fallocate, punch hole, copy_file_range, sendfile, fsync);
  # and a short run with mapread, which fsx 0.2 never unmaps (so only short runs).
  : >"$log"
  for run in "new-file:tests/fsx/long.toml:$ops" "lower-file:tests/fsx/long.toml:$ops" \
    "all-ops-file:tests/fsx/all-ops.toml:$ops" "mapread-file::$((ops / 10))"; do
    IFS=: read -r target config n <<<"$run"
    say "fsx -N $n -S 1 ${config:+-f $config }$target"
    timeout 600 fsx -q -N "$n" -S 1 ${config:+-f "$repo/$config"} "$stage_mnt/$target" >>"$log" 2>&1 || rc=$?
    [ "$rc" = 0 ] || break
  done
  tail -n 40 "$log"
  stage_unmount
  if [ "$rc" = 0 ]; then
    stage_result "$name" pass "$ops operations each on a new file, a lower file and with every operation; $((ops / 10)) with mapread"
  else
    stage_result "$name" fail "exit status $rc (full log: $log)"
  fi
}

section "pjdfstest"
if [ "$run_pjdfstest_stage" = 1 ]; then
  run_pjdfstest
  section "pjdfstest over /dev/fuse (-o noio_uring)"
  if [ -z "${STRATAFS_BIN:-}" ]; then
    run_pjdfstest classic
  else
    stage_result pjdfstest-classic skip "STRATAFS_BIN is another program: no -o noio_uring"
  fi
else
  say "off (STRATAFS_PJDFSTEST=0)"
  stage_result pjdfstest skip "switched off by STRATAFS_PJDFSTEST=0"
fi

section "fsx"
if [ "$run_fsx_stage" = 1 ]; then
  run_fsx
  section "fsx over /dev/fuse (-o noio_uring)"
  if [ -z "${STRATAFS_BIN:-}" ]; then
    run_fsx classic
  else
    stage_result fsx-classic skip "STRATAFS_BIN is another program: no -o noio_uring"
  fi
else
  say "off (STRATAFS_FSX=0)"
  stage_result fsx skip "switched off by STRATAFS_FSX=0"
fi

# ---- podman with stratafs as mount_program (scripts/podman.sh), STRATAFS_PODMAN=0 skips ----
run_podman() {
  local log="$logs/podman.log" rc t0 summary
  t0=$(date +%s)
  set +e
  STRATAFS_BIN="$bin" timeout --kill-after=30 600 "$repo/scripts/podman.sh" >"$log" 2>&1
  rc=$?
  set -e
  grep -E '^(FAIL|SKIP|NOTE): ' "$log" || true
  summary=$(grep '^podman: ' "$log" | tail -n 1 || true)
  case "$rc" in
    0) stage_result podman pass "$summary, rootful and rootless (run, commit, build) in $(($(date +%s) - t0)) s" ;;
    77) stage_result podman fail "a prerequisite is missing: $(sed -n 's/^SKIP: //p' "$log" | head -n 1)" ;;
    *)
      tail -n 40 "$log"
      stage_result podman fail "exit status $rc, ${summary:-no summary} (full log: $log)"
      ;;
  esac
}

section "podman"
if [ "$run_podman_stage" = 1 ]; then
  run_podman
else
  say "off (STRATAFS_PODMAN=0)"
  stage_result podman skip "switched off by STRATAFS_PODMAN=0"
fi

# ---- podman on a real Debian image against the native overlay driver (scripts/podman-debian.sh),
# STRATAFS_PODMAN_DEBIAN=0 skips ----
run_podman_debian() {
  local log="$logs/podman-debian.log" rc t0 summary
  t0=$(date +%s)
  set +e
  STRATAFS_BIN="$bin" timeout --kill-after=30 "${STRATAFS_PODMAN_DEBIAN_TIMEOUT:-900}" \
    "$repo/scripts/podman-debian.sh" >"$log" 2>&1
  rc=$?
  set -e
  # The failures with the differences under them, and the notes (the tarball, /dev/fuse).
  grep -E -A12 '^(FAIL|SKIP): ' "$log" | grep -E '^(FAIL|SKIP|    )' || true
  grep -E '^(NOTE: |ok: Debian minbase tarball)' "$log" || true
  summary=$(grep '^podman-debian: ' "$log" | tail -n 1 || true)
  case "$rc" in
    0) stage_result podman-deb pass "$summary, rootful and rootless, stratafs against native overlay in $(($(date +%s) - t0)) s" ;;
    77) stage_result podman-deb fail "a prerequisite is missing: $(sed -n 's/^SKIP: //p' "$log" | head -n 1)" ;;
    124 | 137) stage_result podman-deb fail "stopped after ${STRATAFS_PODMAN_DEBIAN_TIMEOUT:-900} s, ${summary:-no summary} (full log: $log)" ;;
    *) stage_result podman-deb fail "exit status $rc, ${summary:-no summary} in $(($(date +%s) - t0)) s (full log: $log)" ;;
  esac
}

section "podman on Debian"
if [ "$run_podman_debian_stage" = 1 ]; then
  run_podman_debian
else
  say "off (STRATAFS_PODMAN_DEBIAN=0)"
  stage_result podman-deb skip "switched off by STRATAFS_PODMAN_DEBIAN=0"
fi

# ---- The Debian package in a fresh Debian 12 root (scripts/package-debian.sh), STRATAFS_PACKAGE=0
# skips ----
run_package() {
  local log="$logs/package-debian.log" rc t0 summary
  t0=$(date +%s)
  set +e
  timeout --kill-after=30 900 "$repo/scripts/package-debian.sh" >"$log" 2>&1
  rc=$?
  set -e
  grep -E '^(ok|FAIL): ' "$log" || true
  summary=$(grep '^package-debian: ' "$log" | tail -n 1 || true)
  if [ "$rc" = 0 ]; then
    stage_result package pass "$summary (dpkg -i, mount -t fuse.stratafs, man, dpkg -r) in $(($(date +%s) - t0)) s"
  else
    tail -n 30 "$log"
    stage_result package fail "exit status $rc, ${summary:-no summary} (full log: $log)"
  fi
}

section "Debian package"
if [ "$run_package_stage" = 1 ]; then
  run_package
else
  say "off (STRATAFS_PACKAGE=0)"
  stage_result package skip "switched off by STRATAFS_PACKAGE=0"
fi

# ---- Layers on GlusterFS (scripts/gluster.sh), STRATAFS_GLUSTER=0 skips ----
run_gluster() {
  local log="$logs/gluster.log" rc t0 summary
  t0=$(date +%s)
  set +e
  STRATAFS_BIN="$bin" timeout --kill-after=30 420 "$repo/scripts/gluster.sh" >"$log" 2>&1
  rc=$?
  set -e
  grep -E '^(FAIL|SKIP|time): ' "$log" || true
  summary=$(grep '^gluster: ' "$log" | tail -n 1 || true)
  case "$rc" in
    0) stage_result gluster pass "$summary (layers, merged view, writes, upper on the volume, two mounts, brick faults in walks, copy-ups, open files) in $(($(date +%s) - t0)) s" ;;
    77) stage_result gluster fail "a prerequisite is missing: $(sed -n 's/^SKIP: //p' "$log" | head -n 1)" ;;
    *)
      tail -n 40 "$log"
      stage_result gluster fail "exit status $rc, ${summary:-no summary} (full log: $log)"
      ;;
  esac
}

section "GlusterFS"
if [ "$run_gluster_stage" = 1 ]; then
  run_gluster
else
  say "off (STRATAFS_GLUSTER=0)"
  stage_result gluster skip "switched off by STRATAFS_GLUSTER=0"
fi

section "Left-over mounts after the tests"
if cleanup_stratafs_mounts; then
  say "none"
  stage_result mounts pass "no stratafs mount left behind"
else
  stage_result mounts fail "a test left a stratafs mount behind (unmounted now)"
fi

section "Summary"
grep -h '^test result:' "${test_logs[@]}" || say "(cargo test printed no result line)"
printf '%s\n' "${stage_lines[@]}"
printf '%s\n' "${cargo_lines[@]}"
say "summary: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
