#!/usr/bin/env bash
# The package stage: the .deb of scripts/package.sh installed with `dpkg -i` on a fresh
# Debian 12 root file system, used, and removed.
#
#   scripts/package-debian.sh [--deb FILE]     as root, from the repository
#
# The root: the Debian minbase tarball of scripts/podman-debian.sh (debootstrap from the
# mirror apt uses, cached in /var/cache/stratafs/), unpacked in a scratch directory and
# entered with chroot in a private mount namespace (its /dev and /proc bound there only).
# In it:
#   1. apt-get installs fuse3 (the package's dependency) and man-db; the file list is taken;
#   2. `dpkg -i` of the package; its files are where they should be, the host's
#      /etc/containers is untouched (the storage.conf is an example under /usr/share);
#   3. `mount -t fuse.stratafs -o lowerdir=,upperdir=,workdir= stratafs MNT` (mount(8) ->
#      mount.fuse3 -> /usr/bin/stratafs): the merged view and a write through it, then umount,
#      and the daemon has exited;
#   4. `man stratafs` shows the page (with its /dev/fd/N section);
#   5. `dpkg -r stratafs`: the file list is the one of step 1 again (no file left behind).
#
# Output: one "ok: ..." or "FAIL: ..." line per check, a last "package-debian: N passed,
# N failed" line. Exit status 0 when every check passed, 1 otherwise.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 1
# shellcheck source=scripts/common.sh
. scripts/common.sh
# shellcheck source=scripts/podman-lib.sh
. scripts/podman-lib.sh

# The counts go on from the outer part into the namespace's (PKG_PASSED/PKG_FAILED).
passed=${PKG_PASSED:-0} failed=${PKG_FAILED:-0}
ok() { say "ok: $*"; passed=$((passed + 1)); }
fail() { say "FAIL: $*"; failed=$((failed + 1)); }
finish() {
  say "package-debian: $passed passed, $failed failed"
  [ "$failed" = 0 ]
  exit
}

# ---- Inside the private mount namespace: scripts/package-debian.sh --inside ROOT DEB ----
# In the chroot: the steps above; the file lists exclude what apt, dpkg, man-db and the
# test itself change (/var/lib/dpkg, /var/cache, /var/log, /tmp, /t).
files_of() {
  chroot "$1" find / -xdev \( -path /proc -o -path /dev -o -path /sys -o -path /tmp -o -path /t \
    -o -path /var/lib/dpkg -o -path /var/cache -o -path /var/log -o -path /var/lib/apt \) -prune \
    -o -print | sort
}
inside() {
  local root=$1 deb=$2 t0 out
  mount --make-rprivate / || exit 1
  mount --rbind /dev "$root/dev" && mount -t proc proc "$root/proc" || exit 1
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  t0=$(date +%s)
  if chroot "$root" sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends fuse3 man-db' \
    >"$root/../apt.log" 2>&1; then
    ok "apt-get install fuse3 man-db in the fresh root ($(($(date +%s) - t0)) s)"
  else
    tail -n 20 "$root/../apt.log"
    fail "apt-get install fuse3 man-db in the fresh root"
    finish
  fi
  files_of "$root" >"$root/../before.list"
  cp "$deb" "$root/tmp/stratafs.deb"
  if out=$(chroot "$root" dpkg -i /tmp/stratafs.deb 2>&1); then
    ok "dpkg -i $(basename "$deb")"
  else
    printf '%s\n' "$out"
    fail "dpkg -i $(basename "$deb")"
    finish
  fi
  for f in /usr/bin/stratafs /usr/share/man/man1/stratafs.1.gz /usr/share/stratafs/storage.conf; do
    [ -f "$root$f" ] || fail "$f is not installed"
  done
  if [ -e "$root/etc/containers/storage.conf" ] || [ -e "$root/etc/containers/storage.conf.d" ]; then
    fail "the package wrote a containers-storage configuration under /etc/containers"
  else
    ok "binary, man page and the storage.conf example installed; /etc/containers untouched"
  fi
  mount_check "$root"
  out=$(chroot "$root" env MANPAGER=cat MANWIDTH=100 man stratafs 2>&1)
  if printf '%s\n' "$out" | grep -q 'STRATAFS(1)' && printf '%s\n' "$out" | grep -q '/dev/fd/N'; then
    ok "man stratafs shows the page ($(printf '%s\n' "$out" | wc -l) lines, with its /dev/fd/N section)"
  else
    printf '%s\n' "$out" | head -n 5
    fail "man stratafs"
  fi
  if out=$(chroot "$root" dpkg -r stratafs 2>&1); then
    ok "dpkg -r stratafs"
  else
    printf '%s\n' "$out"
    fail "dpkg -r stratafs"
  fi
  files_of "$root" >"$root/../after.list"
  if out=$(diff "$root/../before.list" "$root/../after.list"); then
    ok "after dpkg -r the file list is the one before dpkg -i ($(wc -l <"$root/../after.list") paths)"
  else
    printf '%s\n' "$out" | head -n 20
    fail "dpkg -r left the file system different from before dpkg -i"
  fi
  finish
}

# daemon_in ROOT: the pid of the stratafs process whose root directory is ROOT.
daemon_in() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$1" ] && [ "$(cat "$p/comm" 2>/dev/null)" = stratafs ] &&
      printf '%s\n' "${p#/proc/}"
  done | head -n 1
}

# mount_check ROOT: mount(8) in the chroot finds stratafs through mount.fuse3.
mount_check() {
  local root=$1 out pid
  mkdir -p "$root/t/l/d" "$root/t/u" "$root/t/w" "$root/t/m"
  printf 'lower\n' >"$root/t/l/d/f"
  if ! out=$(chroot "$root" mount -t fuse.stratafs -o lowerdir=/t/l,upperdir=/t/u,workdir=/t/w stratafs /t/m 2>&1); then
    printf '%s\n' "$out"
    fail "mount -t fuse.stratafs in the chroot"
    return
  fi
  pid=$(daemon_in "$root")
  if [ "$(cat "$root/t/m/d/f" 2>&1)" = lower ] && printf 'new\n' >"$root/t/m/d/n" &&
    grep -q ' /t/m fuse.stratafs ' <(chroot "$root" cat /proc/self/mounts); then
    ok "mount -t fuse.stratafs (mount(8) -> mount.fuse3 -> /usr/bin/stratafs): the merged view and a write"
  else
    fail "mount -t fuse.stratafs: merged view or write"
  fi
  chroot "$root" umount /t/m || { fail "umount /t/m"; umount -l "$root/t/m"; }
  for _ in $(seq 50); do
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$(cat "$root/t/u/d/n" 2>&1)" = new ] && ! { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }; then
    ok "umount: the write is in the upper and the daemon has exited"
  else
    fail "after umount: upper $(ls "$root/t/u/d" 2>&1 | tr '\n' ' '), daemon ${pid:-?} still running"
  fi
}

if [ "${1:-}" = --inside ]; then
  inside "$2" "$3"
fi

# ---- Outside: the package, the root, the namespace ----
require_root "scripts/package-debian.sh"
deb=
case "${1:-}" in
  --deb) deb=${2:?--deb needs a file} ;;
  --deb=*) deb=${1#*=} ;;
  -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac
ensure_packages debootstrap fuse3 >/dev/null 2>&1 || fail "apt-get install debootstrap fuse3"
ensure_fuse_device
if [ -z "$deb" ]; then
  t0=$(date +%s)
  deb=$(scripts/package.sh 2>"${TMPDIR:-/tmp}/package-sh.log" | tail -n 1)
  if [ -f "$deb" ]; then
    ok "scripts/package.sh built $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB, $(($(date +%s) - t0)) s)"
  else
    tail -n 20 "${TMPDIR:-/tmp}/package-sh.log"
    fail "scripts/package.sh built no package"
    finish
  fi
fi
deps=$(dpkg-deb -f "$deb" Depends)
case ", $deps," in
  *", fuse3,"* | *", fuse3 "*) ok "Depends: $deps" ;;
  *) fail "Depends lacks fuse3: $deps" ;;
esac

scratch=$(mktemp -d /tmp/sfs-pkg.XXXXXX)
trap 'remove_scratch "$scratch"' EXIT
t0=$(date +%s)
if ! pd_debian_tarball "$scratch"; then
  fail "a Debian minbase root (debootstrap from $(apt_debian_mirror || echo '(no mirror in apt sources)'))"
  finish
fi
mkdir "$scratch/root"
tar --numeric-owner -xf "$PD_TARBALL" -C "$scratch/root" || { fail "unpacking $PD_TARBALL"; finish; }
ok "fresh Debian root: $PD_TARBALL_NOTE, unpacked ($(($(date +%s) - t0)) s)"
# The steps run in a private mount namespace: its mounts go away with it.
PKG_PASSED=$passed PKG_FAILED=$failed \
  unshare --mount --propagation private "$0" --inside "$scratch/root" "$(realpath "$deb")"
