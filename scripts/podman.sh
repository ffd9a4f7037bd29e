#!/usr/bin/env bash
# stratafs as podman's overlay mount_program, end to end, rootful and rootless.
#
#   scripts/podman.sh [--rootful-only | --rootless-only] [--keep]   as root, from the repository
#
# For each mode it imports a busybox-static image offline into a private storage (--root and
# --runroot under a scratch dir: the host's podman storage is never touched), runs a container
# that reads, writes, deletes a lower file and a lower directory, deletes and recreates a lower
# directory, renames a lower directory and hard-links a lower file; checks the live view,
# `podman commit`s the container and checks the committed image; then a `podman build` with
# `RUN rm` and `RUN mkdir` steps (in separate layers) and checks the built image. Every
# container checks that its / is a fuse.stratafs mount, and the mount program is a small
# wrapper that logs podman's argv before exec'ing stratafs (printed at the end of each mode).
#
# Rootless runs the same as the user stratafs-podman (created if missing, with /etc/subuid
# and /etc/subgid ranges; newuidmap from the uidmap package). /dev/fuse must be usable by that
# user: if it is not world read-writable the script makes it 0666 for the run (and says so),
# then puts the old mode back.
#
# Environment: STRATAFS_BIN=PATH  mount program to test (default target/release/stratafs,
# built if missing); STRATAFS_PODMAN_USER=NAME  the rootless test user (default stratafs-podman).
#
# Output: one "PASS: ..." or "FAIL: ..." line per check, a last "podman: N passed, N failed"
# line. Exit status 0 when everything passed, 1 on any failure, 77 (with one "SKIP: reason"
# line) only when podman cannot run on this host at all.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 1
# shellcheck source=scripts/common.sh
. scripts/common.sh

do_rootful=1 do_rootless=1 keep=0
for arg in "$@"; do
  case "$arg" in
    --rootful-only) do_rootless=0 ;;
    --rootless-only) do_rootful=0 ;;
    --keep) keep=1 ;;
    -h | --help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (try --help)" ;;
  esac
done

require_root "scripts/podman.sh"

skip() { say "SKIP: $*"; exit 77; }

# ---- What podman needs ----
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 ||
  ! command -v busybox >/dev/null 2>&1 || ! command -v newuidmap >/dev/null 2>&1; then
  # Quietly: the reason line is what matters if this fails.
  ( ensure_packages podman runc uidmap catatonit busybox-static fuse3 ) >/dev/null 2>&1 ||
    skip "podman could not be installed (apt-get install podman runc uidmap catatonit busybox-static failed)"
fi
command -v podman >/dev/null 2>&1 || skip "podman is not installed and could not be installed"
command -v runc >/dev/null 2>&1 || skip "runc is not installed and could not be installed"
[ -c /dev/fuse ] || skip "/dev/fuse is missing: no FUSE on this host"
busybox=$(command -v busybox)

bin=${STRATAFS_BIN:-$repo/target/release/stratafs}
if [ ! -x "$bin" ]; then
  require_cargo
  cargo build --release -q || die "cargo build --release failed"
fi
test_user=${STRATAFS_PODMAN_USER:-stratafs-podman}

scratch=$(mktemp -d /tmp/sfs-podman.XXXXXX)
chmod 0755 "$scratch"
fuse_mode_restore=
pause_pids=()
cleanup() {
  local rc=$? p
  # The rootless pause process keeps the user namespace: end it by its recorded pid.
  for p in "${pause_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "$keep" = 0 ]; then
    # Mounts under the scratch dir are ours (containers still mounted after a failure).
    unmount_below "$scratch"
    remove_scratch "$scratch" || note "left $scratch behind"
  else
    say "kept $scratch"
  fi
  [ -n "$fuse_mode_restore" ] && chmod "$fuse_mode_restore" /dev/fuse
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

passed=0 failed=0
pass() { passed=$((passed + 1)); say "PASS: $*"; }
fail() { failed=$((failed + 1)); say "FAIL: $*"; }

# The mount program: stratafs itself, behind a wrapper that logs the exact argv (both in the
# scratch dir, world-readable, so the rootless user can run them whatever the repo's mode).
install -m 0755 "$bin" "$scratch/stratafs"
mkdir -m 1777 "$scratch/argv"
cat >"$scratch/mount-program" <<EOF
#!/bin/sh
{ printf 'uid=%s argv:' "\$(id -u)"; for a in "\$@"; do printf ' %s' "\$a"; done; echo; } >>"$scratch/argv/argv.log" 2>/dev/null
exec "$scratch/stratafs" "\$@"
EOF
chmod 0755 "$scratch/mount-program"

# ---- The image: busybox-static and a /data tree the container then changes ----
rootfs="$scratch/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/data/dir-del/inner" \
  "$rootfs/data/dir-recreate/old-sub" "$rootfs/data/dir-ren/sub"
cp "$busybox" "$rootfs/bin/busybox"
for a in sh cat echo ls rm mkdir mv ln stat test grep wc find sort tr head sleep; do ln -s busybox "$rootfs/bin/$a"; done
printf 'keep\n' >"$rootfs/data/read-me"
printf 'delete me\n' >"$rootfs/data/del-me"
printf 'a\n' >"$rootfs/data/dir-del/a"
printf 'i\n' >"$rootfs/data/dir-del/inner/i"
printf 'old\n' >"$rootfs/data/dir-recreate/old"
printf 'old2\n' >"$rootfs/data/dir-recreate/old-sub/o"
printf 'b\n' >"$rootfs/data/dir-ren/sub/b"
printf 'c\n' >"$rootfs/data/dir-ren/c"
printf 'linked\n' >"$rootfs/data/link-src"
chmod 1777 "$rootfs/tmp"

# Checks run inside a container: one PASS/FAIL line each. $1 says which view.
cat >"$rootfs/bin/check-data" <<'EOF'
#!/bin/sh
view=$1
ok() { echo "PASS: $view: $1"; }
no() { echo "FAIL: $view: $1"; }
t() { d=$1; shift; if "$@"; then ok "$d"; else no "$d"; fi; }
if grep -q '^[^ ]* / fuse.stratafs ' /proc/mounts; then ok "/ is a fuse.stratafs mount"
else no "/ is not a fuse.stratafs mount: $(grep '^[^ ]* / ' /proc/mounts)"; fi
cd /data || { no "no /data"; exit 0; }
t "lower file modified" test "$(cat read-me)" = "keep
appended"
t "new file written" test "$(cat new-file)" = "written"
t "lower file deleted" test ! -e del-me
t "lower directory deleted" test ! -e dir-del
t "recreated directory holds only the new entry (opaque)" test "$(ls -A dir-recreate)" = "new"
t "recreated directory's new file" test "$(cat dir-recreate/new)" = "new"
t "renamed directory gone from the old name" test ! -e dir-ren
t "renamed directory's contents under the new name" test "$(cat dir-renamed/sub/b)$(cat dir-renamed/c)" = "bc"
t "renamed directory lists its entries" test "$(ls dir-renamed | tr '\n' ' ')" = "c sub "
t "hard link has the data" test "$(cat link-dst)" = "linked"
t "hard-link source still there" test "$(cat link-src)" = "linked"
if [ "$view" = "live container" ]; then
  t "hard link has two names" test "$(stat -c %h link-dst)" = 2
  # The source's number changes with the link (an upper file with several names shows its
  # own number); stratafs has the kernel drop the stale entry just after the link: allow
  # that a moment on a loaded machine.
  i=0
  while [ "$(stat -c %i:%h link-dst)" != "$(stat -c %i:%h link-src)" ] && [ $i -lt 50 ]; do
    sleep 0.1; i=$((i + 1))
  done
  t "hard link and its source are one file (same inode number and link count)" \
    test "$(stat -c %i:%h link-dst)" = "$(stat -c %i:%h link-src)"
fi
t "/data lists exactly the expected names" \
  test "$(ls -A | tr '\n' ' ')" = "dir-recreate dir-renamed link-dst link-src new-file read-me "
EOF
cat >"$rootfs/bin/change-data" <<'EOF'
#!/bin/sh
set -e
cd /data
test "$(cat read-me)" = keep
echo appended >>read-me
echo written >new-file
rm del-me
rm -r dir-del
rm -r dir-recreate
mkdir dir-recreate
echo new >dir-recreate/new
mv dir-ren dir-renamed
ln link-src link-dst
EOF
cat >"$rootfs/bin/check-built" <<'EOF'
#!/bin/sh
ok() { echo "PASS: built image: $1"; }
no() { echo "FAIL: built image: $1"; }
t() { d=$1; shift; if "$@"; then ok "$d"; else no "$d"; fi; }
cd /data || { no "no /data"; exit 0; }
t "RUN rm removed a lower file" test ! -e del-me
t "RUN rm -r removed a lower directory" test ! -e dir-del
t "RUN mkdir recreated a directory removed by the step before, empty (opaque)" \
  test -d dir-recreate -a -z "$(ls -A dir-recreate)"
t "RUN mkdir made a new directory with its file" test "$(cat made-by-build/f)" = built
t "untouched lower content" test "$(cat read-me)$(cat dir-ren/sub/b)" = "keepb"
t "/data lists exactly the expected names" \
  test "$(ls -A | tr '\n' ' ')" = "dir-recreate dir-ren link-src made-by-build read-me "
EOF
chmod 0755 "$rootfs/bin/check-data" "$rootfs/bin/change-data" "$rootfs/bin/check-built"

mkdir -p "$scratch/build"
cat >"$scratch/build/Containerfile" <<'EOF'
FROM localhost/stratafs-test
RUN rm /data/del-me && rm -r /data/dir-del /data/dir-recreate
RUN mkdir /data/dir-recreate /data/made-by-build && echo built >/data/made-by-build/f
EOF

# count_lines FILE: adds the PASS/FAIL lines a container printed to the totals.
count_lines() {
  local n
  cat "$1"
  n=$(grep -c '^PASS: ' "$1") passed=$((passed + n))
  n=$(grep -c '^FAIL: ' "$1") failed=$((failed + n))
}

# run_mode MODE: the whole sequence with $pm (an array: the podman command line).
run_mode() {
  local mode=$1 home=$2 out="$scratch/$1.out" t0 t1 argv_log
  local runargs=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --network none)
  t0=$(date +%s.%N)
  section "podman, $mode"
  say "storage: --root $home/root --runroot $home/runroot, mount_program $scratch/mount-program"
  if tar -C "$rootfs" --numeric-owner --owner=0 --group=0 -c . | "${pm[@]}" import -q - localhost/stratafs-test >"$out" 2>&1; then
    pass "$mode: podman import of the busybox rootfs"
  else
    fail "$mode: podman import: $(tail -n 3 "$out")"
    return
  fi
  # 1. A container changes the lower layer; the live view is checked in the same container.
  if "${pm[@]}" run --name sfs-change "${runargs[@]}" localhost/stratafs-test \
    sh -c 'change-data && check-data "live container"' >"$out" 2>&1; then
    count_lines "$out"
  else
    cat "$out"
    fail "$mode: the container making the changes failed"
    return
  fi
  grep -q '^PASS: live container: / is a fuse.stratafs' "$out" || fail "$mode: stratafs was not the mount program"
  # 2. podman commit, then the committed image must show every change.
  if "${pm[@]}" commit -q sfs-change localhost/stratafs-committed >"$out" 2>&1; then
    pass "$mode: podman commit"
  else
    fail "$mode: podman commit: $(tail -n 3 "$out")"
    return
  fi
  if "${pm[@]}" run --rm "${runargs[@]}" localhost/stratafs-committed check-data "committed image" >"$out" 2>&1; then
    count_lines "$out"
  else
    cat "$out"
    fail "$mode: running the committed image failed"
  fi
  "${pm[@]}" rm -f sfs-change >/dev/null 2>&1 || true
  # 3. A two-step build: RUN rm, then RUN mkdir of a removed directory, in two layers.
  if "${pm[@]}" build -q "${runargs[@]}" -t localhost/stratafs-built "$scratch/build" >"$out" 2>&1; then
    pass "$mode: podman build with RUN rm and RUN mkdir steps"
    if "${pm[@]}" run --rm "${runargs[@]}" localhost/stratafs-built check-built >"$out" 2>&1; then
      count_lines "$out"
    else
      cat "$out"
      fail "$mode: running the built image failed"
    fi
  else
    cat "$out"
    fail "$mode: podman build"
  fi
  argv_log="$scratch/argv/argv.log"
  if [ -s "$argv_log" ]; then
    pass "$mode: podman called the mount program $(wc -l <"$argv_log") times; the distinct argv:"
    sed -E "s#$scratch#\$SCRATCH#g; s#[0-9a-f]{64}#<id>#g; s#/l/[A-Z0-9]{26}#/l/<link>#g" "$argv_log" |
      sort | uniq -c | sed 's/^/  /'
    mv "$argv_log" "$scratch/$mode-argv.log"
  else
    fail "$mode: podman never called the mount program"
  fi
  # Leave nothing mounted or stored.
  "${pm[@]}" rm -af >/dev/null 2>&1 || true
  "${pm[@]}" rmi -af >/dev/null 2>&1 || true
  t1=$(date +%s.%N)
  say "$mode took $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
}

common_opts() { # HOME_DIR: podman's global options for a private storage there
  printf '%s\n' --root "$1/root" --runroot "$1/runroot" --tmpdir "$1/tmp" \
    --storage-driver overlay --storage-opt "overlay.mount_program=$scratch/mount-program" \
    --runtime runc --cgroup-manager cgroupfs --events-backend file
}

if [ "$do_rootful" = 1 ]; then
  home="$scratch/rootful"
  mkdir -p "$home"
  mapfile -t opts < <(common_opts "$home")
  pm=(podman "${opts[@]}")
  if ! "${pm[@]}" info >"$scratch/info.out" 2>&1; then
    tail -n 5 "$scratch/info.out"
    skip "podman cannot run on this host: $(grep -m1 -i error "$scratch/info.out" || tail -n 1 "$scratch/info.out")"
  fi
  run_mode rootful "$home"
fi

if [ "$do_rootless" = 1 ]; then
  section "Rootless set-up"
  if ! id "$test_user" >/dev/null 2>&1; then
    useradd -m -s /bin/sh "$test_user" || die "useradd $test_user failed"
    say "created user $test_user"
  fi
  if ! grep -q "^$test_user:" /etc/subuid; then
    usermod --add-subuids 300000-365535 "$test_user" && say "added /etc/subuid range 300000-365535"
  fi
  if ! grep -q "^$test_user:" /etc/subgid; then
    usermod --add-subgids 300000-365535 "$test_user" && say "added /etc/subgid range 300000-365535"
  fi
  say "$test_user: uid $(id -u "$test_user"), subuid $(grep "^$test_user:" /etc/subuid | head -n1 | cut -d: -f2-), subgid $(grep "^$test_user:" /etc/subgid | head -n1 | cut -d: -f2-)"
  mode=$(stat -c %a /dev/fuse)
  if [ "$mode" != 666 ]; then
    say "NOTE: /dev/fuse is mode $mode; making it 0666 for the rootless run (restored at the end)"
    chmod 0666 /dev/fuse
    fuse_mode_restore=$mode
  fi
  home="$scratch/rootless"
  mkdir -p "$home/xdg" "$home/home"
  chmod 0700 "$home/xdg"
  chown -R "$test_user:" "$home"
  chmod 0755 "$scratch/build"
  chmod -R a+rX "$scratch/build"
  mapfile -t opts < <(common_opts "$home")
  pm=(runuser -u "$test_user" -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$home/home"
    XDG_RUNTIME_DIR="$home/xdg" XDG_CONFIG_HOME="$home/home/.config" LC_ALL=C
    podman "${opts[@]}")
  if "${pm[@]}" info >"$scratch/info.out" 2>&1; then
    run_mode rootless "$home"
  else
    cat "$scratch/info.out"
    fail "rootless podman does not start: $(grep -m1 -i error "$scratch/info.out")"
  fi
  while IFS= read -r f; do
    [ -s "$f" ] && pause_pids+=("$(cat "$f")")
  done < <(find "$home" -name pause.pid 2>/dev/null)
fi

section "Result"
say "podman: $passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
