#!/usr/bin/env bash
# Image layers on a GlusterFS volume, read and written through stratafs.
#
#   scripts/gluster.sh [--keep] [--no-fault]       as root, from the repository
#
# Starts its own glusterd and a one-brick volume gv0 inside a network namespace it creates
# (sfs-gfs-PID, address 10.250.0.1 on that namespace's loopback: GlusterFS refuses loopback
# addresses for bricks; no traffic leaves the namespace). The test body runs in that
# namespace through `ip netns exec`, hence in a private mount namespace too: glusterd's
# working directory (/var/lib/glusterd), /run/gluster and /var/log/glusterfs are bind mounts
# of scratch directories there, under a tmpfs of its own on /run (glusterd's socket is
# /run/glusterd.socket), so nothing of the host's GlusterFS state is read or changed,
# and no mount made here is visible outside.
#
# Then: kernel-written layers (0/0 whiteouts, opaque dirs, a redirect, a metacopy file, xattr
# whiteouts) are made with `mount -t overlay` on local disk and copied onto the volume
# (`cp -a --preserve=all`; every xattr, owner, mode and device number is checked to have
# arrived); the merged view of the GlusterFS lowers under a local upper is compared entry by
# entry with the same stack on local disk (stratafs and the kernel overlayfs); a fixed
# script of writes gives the same view and an upper the kernel reads the same way; two
# stratafs mounts, each in its own mount namespace, share the GlusterFS lowers; the upper and
# workdir on the volume too (no renameat2 flags and no O_TMPFILE there), read back by a fresh
# mount in another mount namespace with its own GlusterFS client; the brick is frozen and
# killed during a walk, during a 256 MiB copy-up from a layer added to the volume later, with
# files open, and with the upper on the volume (requests fail within a bound, nothing partial
# reaches the upper, the upper still serves, fsynced data survives, and the mount works again
# after SIGCONT or `gluster volume start gv0 force`).
#
# Environment: STRATAFS_BIN=PATH  the binary to test (default target/release/stratafs; any
# FUSE mount program taking -f -o lowerdir=,upperdir=,workdir=, e.g. fuse-overlayfs);
# STRATAFS_GLUSTER_STEPS="view writes upper two fault"  which parts run after the layers (all;
# "hold" waits with everything set up until $SCRATCH/hold is removed, to look around);
# STRATAFS_GLUSTER_FAULT_OPTS=OPTS  extra stratafs options for the fault part (none by
# default; threads=2 shows one thread per CPU stall on a frozen brick).
#
# Output: one "ok: ..." or "FAIL: ..." line per check, "time: ..." lines, a last
# "gluster: N passed, N failed" line. Exit status 0 when everything passed, 1 on any failure,
# 77 (with one "SKIP: reason" line) only when GlusterFS cannot be installed or started here.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 1
# shellcheck source=scripts/common.sh
. scripts/common.sh

ADDR=10.250.0.1
# How long a request may wait for a dead brick (network.ping-timeout is set to PING s; the
# client also needs a moment to notice the closed connection).
PING=3
BOUND=$((PING + 12))

# ======================================================================================
# Outer part: set-up, the namespace, clean-up.
# ======================================================================================
keep=0 fault=1 body=
outer() {
  local arg
  for arg in "$@"; do
    case "$arg" in
      --keep) keep=1 ;;
      --no-fault) fault=0 ;;
      -h | --help) sed -n '2,/^set -uo/{/^set -uo/d;p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown argument: $arg (try --help)" ;;
    esac
  done
  require_root "scripts/gluster.sh"
  skip() { say "SKIP: $*"; exit 77; }
  if ! command -v glusterd >/dev/null 2>&1 || ! command -v mount.glusterfs >/dev/null 2>&1; then
    ( ensure_packages glusterfs-server glusterfs-client attr ) >/dev/null 2>&1 ||
      skip "GlusterFS could not be installed (apt-get install glusterfs-server glusterfs-client failed)"
  fi
  command -v glusterd >/dev/null 2>&1 || skip "glusterd is not installed and could not be installed"
  command -v ip >/dev/null 2>&1 || skip "no ip(8) to make a network namespace"
  [ -c /dev/fuse ] || skip "/dev/fuse is missing: no FUSE on this host"
  bin=${STRATAFS_BIN:-$repo/target/release/stratafs}
  if [ ! -x "$bin" ]; then
    require_cargo
    cargo build --release -q || die "cargo build --release failed"
  fi
  scratch=$(mktemp -d /tmp/sfs-gluster.XXXXXX)
  chmod 0755 "$scratch"
  ns=sfs-gfs-$$
  cleanup() {
    local rc=$? i
    # Interrupted: ending unshare's first process kills the whole pid namespace (SIGKILL
    # through --kill-child); wait until it is gone before removing anything.
    if [ -n "$body" ] && kill -0 "$body" 2>/dev/null; then
      kill -KILL "$body" 2>/dev/null # unshare ignores TERM while it waits
      for ((i = 0; i < 50; i++)); do kill -0 "$body" 2>/dev/null || break; sleep 0.1; done
    fi
    # Every process of the test lived in its own pid namespace (glusterd, the brick, the
    # glusterfs clients, stratafs): it ended with the namespace's first process, and the
    # mounts with the mount namespace.
    ip netns del "$ns" 2>/dev/null
    # The mounts lived in the namespace's own mount namespace, gone with its last process.
    if [ "$keep" = 0 ]; then
      remove_scratch "$scratch" || note "left $scratch behind"
    else
      say "kept $scratch"
    fi
    exit "$rc"
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  ip netns add "$ns" || skip "ip netns add failed (no network namespaces here)"
  ip -n "$ns" link set lo up || skip "cannot bring up lo in a network namespace"
  ip -n "$ns" addr add "$ADDR/32" dev lo || skip "cannot add $ADDR to the namespace's lo"
  # The body runs as process 1 of a pid namespace of its own: it reaps the daemons GlusterFS
  # forks off (a killed brick must not linger as a zombie that glusterd takes for a running
  # brick), and everything started in it dies with it (--kill-child: also on a timeout).
  # In the background, so that a signal to this script runs the trap at once (bash runs traps
  # only between commands); the trap ends the body through --kill-child.
  ip netns exec "$ns" unshare --pid --fork --kill-child --mount-proc env STRATAFS_GLUSTER_INNER=1 SCRATCH="$scratch" BIN="$bin" FAULT="$fault" \
    bash "$repo/scripts/gluster.sh" &
  body=$!
  wait "$body"
}

# ======================================================================================
# Inner part: runs inside the network namespace (and its private mount namespace).
# ======================================================================================
S=${SCRATCH:-}
passed=0 failed=0
pass() { passed=$((passed + 1)); say "ok: $*"; }
fail() { failed=$((failed + 1)); say "FAIL: $*"; }
check() { # DESCRIPTION COMMAND...
  local d=$1
  shift
  if "$@"; then pass "$d"; else fail "$d"; fi
}
now() { date +%s.%N; }
quiet() { "$@" >/dev/null 2>&1; }
# step NAME: whether STRATAFS_GLUSTER_STEPS (default: all) names this part.
step() { case " ${STRATAFS_GLUSTER_STEPS:-view writes upper two live fault} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
gl() { gluster --mode=script "$@"; }

# ---- GlusterFS, private to this namespace ----
start_gluster() {
  local d
  for d in lib run log; do mkdir -p "$S/state/$d"; done
  # A /run of our own: glusterd's socket is /run/glusterd.socket, a path that the host's
  # glusterd (or another run of this script) uses too, whatever the network namespace.
  mount -t tmpfs -o mode=0755 tmpfs /run || return 1
  mkdir -p /var/lib/glusterd /run/gluster /var/log/glusterfs "$S/bricks"
  mount --bind "$S/state/lib" /var/lib/glusterd || return 1
  mount --bind "$S/state/run" /run/gluster || return 1
  mount --bind "$S/state/log" /var/log/glusterfs || return 1
  glusterd -p "$S/glusterd.pid" || return 1
  for ((d = 0; d < 100; d++)); do
    [ -s "$S/glusterd.pid" ] && gluster --mode=script pool list >/dev/null 2>&1 && break
    sleep 0.1
  done
  gl volume create gv0 "$ADDR:$S/bricks/b1" force >/dev/null || return 1
  gl volume set gv0 network.ping-timeout "$PING" >/dev/null || return 1
  gl volume start gv0 >/dev/null || return 1
  mkdir -p "$S/gv"
  # acl: without it the client drops system.posix_acl_* (cp -a reports "Operation not
  # supported" and the layer loses its ACLs).
  mount -t glusterfs -o acl "$ADDR:/gv0" "$S/gv" || return 1
  return 0
}
brick_pid() { cat "$S"/state/run/vols/gv0/*.pid 2>/dev/null | head -n 1; }

# ---- stratafs and kernel mounts ----
# sfs_mount OPTIONS MNT: stratafs in the background, its pid in SFS_PID[MNT].
declare -A SFS_PID
sfs_mount() {
  local opts=$1 mnt=$2 i
  mkdir -p "$mnt"
  "$BIN" -f -o "$opts" "$mnt" >"$mnt.log" 2>&1 </dev/null &
  SFS_PID[$mnt]=$!
  for ((i = 0; i < 150; i++)); do
    # fuse.stratafs, or another FUSE mount program given as STRATAFS_BIN (to calibrate)
    case "$(findmnt -rn -o FSTYPE --mountpoint "$mnt" 2>/dev/null)" in fuse.*) return 0 ;; esac
    kill -0 "${SFS_PID[$mnt]}" 2>/dev/null || break
    sleep 0.1
  done
  say "stratafs did not mount $mnt; its output:"
  sed 's/^/  | /' "$mnt.log"
  return 1
}
sfs_umount() {
  local mnt=$1 pid=${SFS_PID[$1]:-} i
  umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null
  [ -n "$pid" ] || return 0
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  unset "SFS_PID[$mnt]"
}
kmount() { # OPTIONS MNT
  mkdir -p "$2"
  mount -t overlay overlay -o "$1" "$2"
}

# ---- Snapshots: one line per entry ----
# snapshot DIR [all]: path, type, mode, uid:gid, mtime and size (not of directories), sha256,
# link target, device numbers, xattr names and values (without the overlay.* private ones unless
# "all": for comparing layers themselves).
snapshot() {
  local root=$1 all=${2:-} tmp
  tmp=$(mktemp -d "$S/snap.XXXXXX")
  (
    cd "$root" || exit 1
    find . -printf '%P\t%y\t%m\t%U\t%G\t%s\t%l\t%T@\n' >"$tmp/list"
    find . -type f -print0 | xargs -0r sha256sum >"$tmp/sha"
    find . \( -type c -o -type b \) -print0 | xargs -0r stat -c '%n	%t:%T' >"$tmp/dev"
    # One "path<TAB>name=value" line per xattr, sorted (listxattr order differs between
    # filesystems).
    getfattr -R -P -h -d -m - -e hex . 2>/dev/null | awk '
      /^# file: / { p = substr($0, 9); if (p == ".") p = ""; next }
      $0 != "" { print p "\t" $0 }' | LC_ALL=C sort >"$tmp/xattr"
  )
  awk -F'\t' -v all="$all" '
    FILENAME ~ /\/sha$/ { p = substr($0, 67); sub(/^\.\//, "", p); sha[p] = substr($0, 1, 16); next }
    FILENAME ~ /\/dev$/ { p = $1; sub(/^\.\//, "", p); dev[p] = $2; next }
    FILENAME ~ /\/xattr$/ {
      if (all != "all" && $2 ~ /^(trusted|user)\.overlay\./) next
      xa[$1] = xa[$1] " " $2; next
    }
    {
      p = $1; line = "./" p " " $2 " " $3 " " $4 ":" $5
      if ($2 != "d") line = line " mtime=" $8
      if ($2 == "f") line = line " size=" $6 " sha=" sha[p]
      else if ($2 == "l") line = line " -> " $7
      else if ($2 == "c" || $2 == "b") line = line " rdev=" dev[p]
      print line xa[p]
    }' "$tmp/sha" "$tmp/dev" "$tmp/xattr" "$tmp/list" | LC_ALL=C sort
  rm -rf "$tmp"
}
# same WHAT A B: compares two snapshot files; shows the first differences.
same() {
  if cmp -s "$2" "$3"; then
    pass "$1 ($(wc -l <"$2") entries)"
  else
    fail "$1: $(diff "$2" "$3" | grep -c '^[<>]') differing lines; first ones (< $(basename "$2"), > $(basename "$3")):"
    diff "$2" "$3" | grep '^[<>]' | head -n 20 | sed 's/^/  /'
  fi
}

lowers_unchanged() {
  local l
  for l in l0 l1 l2 l3; do
    snapshot "$S/gv/layers/$l" all | cmp -s - "$S/$l.gluster" || { say "  layer $l changed"; return 1; }
  done
}

# ---- The layers, made by the kernel on local disk ----
fix_times() { find "$1" -exec touch -h -d '2021-06-01 12:00:00' {} +; }
make_layers() {
  local L=$S/local d f
  mkdir -p "$L/l3" "$S/k"
  # l3: written directly; every kind of entry.
  cd "$L/l3" || return 1
  mkdir -p kinds gone-dir/sub opaque-me/old dir-to-file merged/base-only moved-src/inner tree xwh
  echo 'plain file' >kinds/file
  ln kinds/file kinds/hardlink
  ln -s file kinds/rel-link
  ln -s /etc/hostname kinds/abs-link
  ln -s ../nowhere kinds/dangling
  mkfifo kinds/fifo
  mknod kinds/null c 1 3
  mknod kinds/loop9 b 7 9
  printf start >kinds/sparse && truncate -s 10M kinds/sparse
  echo '#!/bin/sh' >kinds/setuid && chmod 4755 kinds/setuid
  mkdir kinds/sticky && chmod 1777 kinds/sticky
  echo unreadable >kinds/none && chmod 000 kinds/none
  echo o >kinds/owned && chown 1234:5678 kinds/owned
  echo x >kinds/xattrs
  setfattr -n user.color -v blue kinds/xattrs
  setfattr -n trusted.secret -v s kinds/xattrs
  setfacl -m u:1234:r kinds/xattrs 2>/dev/null
  echo x >gone-dir/sub/x
  echo g >gone-file
  echo f >file-to-dir
  echo o >opaque-me/old/o
  echo base >merged/from-base
  echo b >merged/base-only/b
  echo 'moved data' >moved-src/inner/data
  head -c 1048576 /dev/zero | tr '\0' m >meta-big
  echo h >xwh/hide-me
  echo k >xwh/keep
  for d in $(seq -f %02g 0 9); do
    mkdir "tree/d$d"
    for f in $(seq -f %02g 0 49); do echo "$d/$f" >"tree/d$d/f$f"; done
  done
  cd "$S" || return 1
  fix_times "$L/l3"
  # l2: the kernel writes 0/0 whiteouts and opaque directories.
  mkdir -p "$L/l2" "$S/k/w2" "$S/k/m2"
  kmount "lowerdir=$L/l3,upperdir=$L/l2,workdir=$S/k/w2" "$S/k/m2" || return 1
  (
    cd "$S/k/m2" || exit 1
    rm gone-file && rm -r gone-dir opaque-me && mkdir opaque-me && echo new >opaque-me/new &&
      rm -r dir-to-file && echo 'now a file' >dir-to-file && rm file-to-dir && mkdir file-to-dir &&
      echo l2 >merged/from-l2 && echo 'changed in l2' >tree/d05/f05 && rm tree/d01/f07 &&
      chmod 600 kinds/file
  ) || { umount "$S/k/m2"; return 1; }
  umount "$S/k/m2" || return 1
  fix_times "$L/l2"
  # l1: redirect_dir=on and metacopy=on: a renamed lower directory, a metadata-only copy-up.
  mkdir -p "$L/l1" "$S/k/w1" "$S/k/m1"
  kmount "lowerdir=$L/l2:$L/l3,upperdir=$L/l1,workdir=$S/k/w1,redirect_dir=on,metacopy=on" "$S/k/m1" || return 1
  (
    cd "$S/k/m1" || exit 1
    mv moved-src moved-dst && chmod 640 meta-big && rm merged/base-only/b && echo l1 >merged/from-l1 &&
      rm -r tree/d09
  ) || { umount "$S/k/m1"; return 1; }
  umount "$S/k/m1" || return 1
  fix_times "$L/l1"
  # l0: the kernel's xattr whiteouts (6.7+), written by hand as the kernel defines them.
  mkdir -p "$L/l0/xwh"
  : >"$L/l0/xwh/hide-me"
  setfattr -n trusted.overlay.whiteout -v '' "$L/l0/xwh/hide-me"
  setfattr -n trusted.overlay.opaque -v x "$L/l0/xwh"
  echo top >"$L/l0/xwh/added"
  fix_times "$L/l0"
  rm -rf "$S/k"
}

# ======================================================================================
inner() {
  local L=$S/local G=$S/gv/layers t0 l kinds
  section "GlusterFS in network namespace $(ip netns identify $$ 2>/dev/null || echo '?')"
  if ! start_gluster >"$S/start.log" 2>&1; then
    cat "$S/start.log"
    tail -n 20 "$S"/state/log/glusterd.log 2>/dev/null
    say "SKIP: GlusterFS does not start here (glusterd, volume create/start or the FUSE mount failed)"
    exit 77
  fi
  say "volume gv0: brick $ADDR:$S/bricks/b1 (pid $(brick_pid)), mounted on $S/gv; network.ping-timeout $PING"

  # ---- 2. Layers ----
  section "Layers: made by the kernel on local disk, copied onto the volume"
  if ! make_layers >"$S/layers.log" 2>&1; then
    cat "$S/layers.log"
    fail "making the kernel-written layers"
    return
  fi
  check "the kernel wrote a 0/0 whiteout (l2/gone-file)" test "$(stat -c %F:%t:%T "$L/l2/gone-file")" = "character special file:0:0"
  check "the kernel wrote an opaque directory (l2/opaque-me)" \
    test "$(getfattr -h --only-values -n trusted.overlay.opaque "$L/l2/opaque-me" 2>/dev/null)" = y
  check "the kernel wrote a redirect (l1/moved-dst)" quiet getfattr -h -n trusted.overlay.redirect "$L/l1/moved-dst"
  check "the kernel wrote a metacopy file (l1/meta-big)" quiet getfattr -h -n trusted.overlay.metacopy "$L/l1/meta-big"
  t0=$(now)
  mkdir -p "$G"
  for l in l0 l1 l2 l3; do
    cp -a --preserve=all "$L/$l" "$G/" 2>"$S/cp-$l.err" || { fail "cp -a $l onto the volume: $(head -n 3 "$S/cp-$l.err")"; }
  done
  say "time: cp -a of the four layers ($(find "$L" | wc -l) entries) onto the volume: $(elapsed "$t0") s"
  for l in l0 l1 l2 l3; do
    snapshot "$L/$l" all >"$S/$l.local"
    snapshot "$G/$l" all >"$S/$l.gluster"
    same "layer $l arrived on the volume intact (types, modes, owners, sizes, data, devices, every xattr)" \
      "$S/$l.local" "$S/$l.gluster"
  done
  # What the comparison covers, named, so a loss is reported by kind.
  kinds=$(cat "$S"/l?.gluster)
  for x in trusted.overlay.opaque trusted.overlay.redirect trusted.overlay.metacopy \
    trusted.overlay.whiteout trusted.overlay.origin trusted.secret user.color system.posix_acl_access; do
    if grep -q -- " $x=" <<<"$kinds"; then pass "the volume stores $x xattrs"
    elif grep -q -- " $x=" "$S"/l?.local; then fail "the volume lost the $x xattrs"
    else say "note: no $x xattr in the local layers to copy"; fi
  done
  check "the volume stores 0/0 character devices (whiteouts)" test "$(stat -c %t:%T "$G/l2/gone-file")" = 0:0
  check "the volume stores other device nodes (1:3 char, 7:9 block)" \
    test "$(stat -c %t:%T "$G/l3/kinds/null"):$(stat -c %t:%T "$G/l3/kinds/loop9")" = 1:3:7:9
  check "the volume keeps hard links (l3/kinds/file and hardlink: one inode)" \
    test "$(stat -c %i "$G/l3/kinds/file")" = "$(stat -c %i "$G/l3/kinds/hardlink")"

  local glowers="$G/l0:$G/l1:$G/l2:$G/l3" llowers="$L/l0:$L/l1:$L/l2:$L/l3"

  # ---- 3. The merged view ----
  step view && {
  section "Merged view: GlusterFS lowers, local upper, against the same stack on local disk"
  mkdir -p "$S/r"/{gu,gw,lu,lw,ku,kw}
  fix_times "$S/r"
  if sfs_mount "lowerdir=$glowers,upperdir=$S/r/gu,workdir=$S/r/gw" "$S/r/gm" &&
    sfs_mount "lowerdir=$llowers,upperdir=$S/r/lu,workdir=$S/r/lw" "$S/r/lm" &&
    kmount "lowerdir=$llowers,upperdir=$S/r/ku,workdir=$S/r/kw,redirect_dir=on,metacopy=on" "$S/r/km"; then
    local m
    for m in gm lm; do
      t0=$(now); find "$S/r/$m" -type f -exec cat {} + >/dev/null; say "time: $m: first walk reading every file: $(elapsed "$t0") s"
      t0=$(now); find "$S/r/$m" -type f -exec cat {} + >/dev/null; say "time: $m: the same walk again: $(elapsed "$t0") s"
    done
    snapshot "$S/r/gm" >"$S/view.gluster"
    snapshot "$S/r/lm" >"$S/view.local"
    snapshot "$S/r/km" >"$S/view.kernel"
    check "the merged view shows the redirected directory (moved-dst/inner/data)" grep -q '^\./moved-dst/inner/data f' "$S/view.gluster"
    check "the merged view hides whiteouts (gone-file, xwh/hide-me)" \
      bash -c "! grep -q -e '^\./gone-file ' -e '^\./xwh/hide-me ' '$S/view.gluster'"
    check "the metacopy file reads its data from the GlusterFS lower (1 MiB of 'm', mode 640)" \
      grep -q "^\./meta-big f 640 0:0 mtime=[0-9.]* size=1048576 sha=$(head -c 1048576 /dev/zero | tr '\0' m | sha256sum | cut -c1-16)" "$S/view.gluster"
    same "stratafs over GlusterFS == stratafs over local disk" "$S/view.local" "$S/view.gluster"
    same "stratafs over GlusterFS == kernel overlayfs over local disk" "$S/view.kernel" "$S/view.gluster"
  else
    fail "mounting the three stacks"
  fi
  umount "$S/r/km" 2>/dev/null
  sfs_umount "$S/r/gm"
  sfs_umount "$S/r/lm"
  }

  # ---- 4. Writes ----
  step writes && {
  section "Writes over GlusterFS lowers"
  mkdir -p "$S/w"/{gu,gw,lu,lw,ku,kw}
  fix_times "$S/w"
  if sfs_mount "lowerdir=$glowers,upperdir=$S/w/gu,workdir=$S/w/gw" "$S/w/gm" &&
    sfs_mount "lowerdir=$llowers,upperdir=$S/w/lu,workdir=$S/w/lw" "$S/w/lm" &&
    kmount "lowerdir=$llowers,upperdir=$S/w/ku,workdir=$S/w/kw,redirect_dir=on,metacopy=on" "$S/w/km"; then
    local m
    for m in gm lm km; do
      if (cd "$S/w/$m" && write_ops) >"$S/w/$m.ops" 2>&1; then
        pass "the write script on $m"
      else
        fail "the write script on $m: $(tail -n 3 "$S/w/$m.ops")"
      fi
    done
    snapshot "$S/w/gm" >"$S/written.gluster"
    snapshot "$S/w/lm" >"$S/written.local"
    snapshot "$S/w/km" >"$S/written.kernel"
    same "after the writes: stratafs over GlusterFS == stratafs over local disk" "$S/written.local" "$S/written.gluster"
    same "after the writes: stratafs over GlusterFS == kernel overlayfs over local disk" "$S/written.kernel" "$S/written.gluster"
    check "nothing was written to the GlusterFS lowers" lowers_unchanged
    check "copy-up from GlusterFS keeps the sparse file's holes ($(du -k "$S/w/gu/kinds/sparse" | cut -f1) KiB allocated of 10 MiB; local: $(du -k "$S/w/lu/kinds/sparse" | cut -f1) KiB)" \
      test "$(du -k "$S/w/gu/kinds/sparse" | cut -f1)" -lt 1024
  else
    fail "mounting the three stacks for the writes"
  fi
  umount "$S/w/km" 2>/dev/null
  sfs_umount "$S/w/gm"
  sfs_umount "$S/w/lm"
  mkdir -p "$S/w/kw2"
  if kmount "lowerdir=$llowers,upperdir=$S/w/gu,workdir=$S/w/kw2,redirect_dir=on,metacopy=on" "$S/w/k2"; then
    snapshot "$S/w/k2" >"$S/written.kernel-over-gluster-upper"
    umount "$S/w/k2"
    same "the upper written over GlusterFS, mounted by the kernel over the local lowers, shows the same" \
      "$S/written.gluster" "$S/written.kernel-over-gluster-upper"
  else
    fail "the kernel refuses the upper written over GlusterFS"
  fi
  }

  # ---- 5a. The upper on the volume too ----
  if step upper; then
    section "The upper on GlusterFS too (a per-host directory on the volume)"
    upper_on_gluster "$glowers" "$llowers"
    merge_on_gluster
  fi

  # ---- 5. Two mounts ----
  if step two; then
    section "Two stratafs mounts, each in its own mount namespace, over the same GlusterFS lowers"
    two_mounts "$glowers"
  fi

  # ---- 5b. A layer added to the volume, taken by a running mount ----
  if step live; then
    section "A layer added to the volume later, taken by a running mount (stratafs branch)"
    live_layer "$glowers"
  fi

  # ---- Debugging: hold the set-up until $S/hold is removed (enter it with
  # nsenter -t "$(cat $S/hold)" -m -n -p) ----
  if step hold; then
    echo $$ >"$S/hold"
    say "holding: rm $S/hold to go on; nsenter -t $$ -m -n -p bash to look around"
    while [ -e "$S/hold" ]; do sleep 1; done
  fi

  # ---- 6. Fault ----
  if [ "${FAULT:-1}" = 1 ] && step fault; then
    section "The brick dies during a walk"
    fault "$glowers"
    section "A layer added later; the brick stops and dies during a large copy-up and with files open"
    fault_copy_up "$glowers"
    section "The upper on GlusterFS: the brick dies during a copy-up; fsynced data survives"
    fault_upper "$glowers"
  fi
}

# The fixed write script, run in the merged view's root.
write_ops() {
  set -e
  echo appended >>kinds/file               # copy-up of a lower file with a hard link
  echo appended >>tree/d05/f05             # copy-up of a file an upper layer changed
  echo appended >>kinds/sparse             # copy-up of a sparse file (10 MiB, 5 bytes of data)
  chmod 0700 kinds/sticky                  # chmod of a lower directory
  chmod 0604 merged/from-base              # chmod of a lower file
  rm kinds/rel-link merged/from-l1         # rm of lower entries
  rm -rf tree/d02                          # rm -rf of a lower directory
  rm -rf opaque-me && mkdir opaque-me      # mkdir over a removed lower directory
  echo fresh >opaque-me/fresh
  rm -rf tree/d03 && mkdir tree/d03 && echo f >tree/d03/only
  mv tree/d04 tree/d04-moved               # mv of a lower directory (redirect)
  mv moved-dst moved-again                 # mv of a directory already redirected
  mv tree/d06/f01 tree/d06/f01-renamed     # mv of a lower file
  ln tree/d07/f03 tree/d07/f03-link        # hard link to a lower file
  ln -s ../kinds/file tree/new-link
  setfattr -n user.added -v yes tree/d08/f08  # setfattr on a lower file
  setfattr -n user.color -v red kinds/xattrs
  setfattr -x trusted.secret kinds/xattrs
  mkdir -p new/dir && echo n >new/dir/file
  mknod new/fifo p
  touch -h -d '2021-06-01 12:00:00' kinds/file kinds/sparse tree/d05/f05 opaque-me opaque-me/fresh tree/d03 \
    tree/d03/only tree/d07/f03 tree/new-link new new/dir new/dir/file new/fifo
}

# Upper and workdir on the volume (hosts/h1/u, hosts/h1/w): GlusterFS's client has no RENAME2
# (every renameat2 flag is EINVAL) and no O_TMPFILE; stratafs falls back (src/util.rs).
upper_on_gluster() {
  local glowers=$1 llowers=$2 H=$S/gv/hosts/h1 U=$S/ug rc out
  mkdir -p "$H"/{u,w} "$U"/{lu,lw}
  fix_times "$H"
  fix_times "$U"
  # Reference: the same writes with a local upper over the local lowers.
  if sfs_mount "lowerdir=$llowers,upperdir=$U/lu,workdir=$U/lw" "$U/lm"; then
    (cd "$U/lm" && write_ops) >"$U/lm.ops" 2>&1 || fail "the write script with a local upper: $(tail -n 3 "$U/lm.ops")"
    nameless_copy_up "$U/lm" >/dev/null 2>&1
    snapshot "$U/lm" >"$S/upper.local"
    sfs_umount "$U/lm"
  else
    fail "mounting the local reference"; return
  fi
  sfs_mount "lowerdir=$glowers,upperdir=$H/u,workdir=$H/w" "$U/gm" || { fail "mounting with the upper on the volume"; return; }
  if (cd "$U/gm" && write_ops) >"$U/gm.ops" 2>&1; then
    pass "the write script with the upper on GlusterFS (copy-up, whiteouts, opaque dirs, redirects, links)"
  else
    fail "the write script with the upper on GlusterFS: $(tail -n 3 "$U/gm.ops")"
  fi
  check "the whiteouts on the volume are 0/0 character devices (tree/d02: $(stat -c '%F %t:%T' "$H/u/tree/d02" 2>&1))" \
    test "$(stat -c %F:%t:%T "$H/u/tree/d02" 2>&1)" = "character special file:0:0"
  check "the brick stores them as 0/0 character devices too" \
    test "$(stat -c %F:%t:%T "$S/bricks/b1/hosts/h1/u/tree/d02" 2>&1)" = "character special file:0:0"
  check "the opaque marker is on the volume (trusted.overlay.opaque=y on opaque-me)" \
    test "$(getfattr -h --only-values -n trusted.overlay.opaque "$H/u/opaque-me" 2>/dev/null)" = y
  check "the redirect is on the volume (trusted.overlay.redirect on tree/d04-moved: $(getfattr -h --only-values -n trusted.overlay.redirect "$H/u/tree/d04-moved" 2>/dev/null))" \
    test "$(getfattr -h --only-values -n trusted.overlay.redirect "$H/u/tree/d04-moved" 2>/dev/null)" = /tree/d04
  # Copy-up of a file whose name is gone: no O_TMPFILE on GlusterFS, so a named staging
  # file, unlinked at once (the local reference did the same).
  out=$(nameless_copy_up "$U/gm" 2>&1)
  check "copy-up of an open file whose name is gone, staged on the volume ($out)" test "$out" = "0o600 08/40"
  # (That copy's staging name goes when the kernel forgets the file, after its last close.)
  for ((rc = 0; rc < 20; rc++)); do [ -z "$(ls -A "$H/w/work")" ] && break; sleep 0.1; done
  check "nothing is left in the workdir on the volume ($(ls -A "$H/w/work" | wc -l) entries in work/)" \
    test -z "$(ls -A "$H/w/work")"
  snapshot "$U/gm" >"$S/upper.gluster"
  same "upper on GlusterFS: the view == stratafs with a local upper" "$S/upper.local" "$S/upper.gluster"
  sfs_umount "$U/gm"
  # Another host: a fresh mount namespace with its own GlusterFS client mount of the volume.
  STRATAFS_GLUSTER_LIB=1 timeout 60 unshare -m --propagation private bash -c '
    . "$0/scripts/gluster.sh"
    S=$1 BIN=$2
    mkdir -p "$S/gv-b" && mount -t glusterfs -o acl "$3:/gv0" "$S/gv-b" || exit 1
    G=$S/gv-b/layers
    sfs_mount "lowerdir=$G/l0:$G/l1:$G/l2:$G/l3,upperdir=$S/gv-b/hosts/h1/u,workdir=$S/gv-b/hosts/h1/w" "$S/ug/bm" || exit 2
    grep -q " $S/gv " /proc/self/mounts && ! grep -q " $S/ug/gm " /proc/self/mounts || exit 3
    snapshot "$S/ug/bm" >"$S/upper.other-host"
    sfs_umount "$S/ug/bm"
    umount "$S/gv-b"' "$repo" "$S" "$BIN" "$ADDR" >"$U/b.out" 2>&1
  rc=$?
  check "a fresh mount from another mount namespace (its own GlusterFS client) mounts that upper (exit $rc)" test "$rc" = 0
  [ "$rc" = 0 ] || sed 's/^/  | /' "$U/b.out"
  same "the other namespace's fresh mount shows the same view" "$S/upper.gluster" "$S/upper.other-host"
  # The kernel reads that upper the same way (a copy on local disk: the kernel overlayfs
  # takes no FUSE upper).
  cp -a --preserve=all "$H/u" "$U/ucopy" && mkdir -p "$U/kw"
  if kmount "lowerdir=$llowers,upperdir=$U/ucopy,workdir=$U/kw,redirect_dir=on,metacopy=on" "$U/km"; then
    snapshot "$U/km" >"$S/upper.kernel"
    umount "$U/km"
    same "the kernel overlayfs reads a copy of the GlusterFS upper the same way" "$S/upper.gluster" "$S/upper.kernel"
  else
    fail "the kernel refuses a copy of the upper written on GlusterFS"
  fi
}

# stratafs merge (aubrsync) of an upper on the volume into the lower below it, also on the
# volume: deletions, a directory replaced (opaque), a rename, new and changed files; the lower
# mounted alone then shows what the stack showed.
merge_on_gluster() {
  local M=$S/gv/merge out rc
  mkdir -p "$M"/{l/keep,l/gone-dir,l/replaced,l/moved,u,w}
  echo keep >"$M/l/keep/f"; echo gone >"$M/l/gone"; echo old >"$M/l/gone-dir/f"
  echo old >"$M/l/replaced/old"; echo moved >"$M/l/moved/f"; echo 1 >"$M/l/appended"
  fix_times "$M/l"
  sfs_mount "lowerdir=$M/l,upperdir=$M/u,workdir=$M/w" "$S/merge-m" || { fail "mount for the merge"; return; }
  (
    set -e
    cd "$S/merge-m"
    echo 2 >>appended; rm gone; rm -rf gone-dir replaced; mkdir replaced; echo new >replaced/new
    mv moved moved-to; echo fresh >fresh; mkdir -p newdir/sub && echo n >newdir/sub/f
  ) >"$S/merge.ops" 2>&1 || fail "the changes before the merge: $(tail -n 2 "$S/merge.ops")"
  snapshot "$S/merge-m" >"$S/merge.stack"
  sfs_umount "$S/merge-m"
  out=$("$BIN" merge "$M/u" "$M/l" --workdir "$M/w" 2>&1)
  rc=$?
  check "stratafs merge of an upper on the volume into a lower on the volume (exit $rc: $(echo "$out" | tail -n 1))" test "$rc" = 0
  sfs_mount "lowerdir=$M/l" "$S/merge-m" || { fail "mounting the merged lower alone"; return; }
  snapshot "$S/merge-m" >"$S/merge.alone"
  sfs_umount "$S/merge-m"
  same "the merged lower, mounted alone, shows what the stack showed" "$S/merge.stack" "$S/merge.alone"
  rm -rf "$M"
}

# nameless_copy_up MNT: open a lower file, remove its name, chmod it through the open fd
# (a copy-up with no name to copy to); prints the mode and data it then has.
nameless_copy_up() {
  python3 - "$1/tree/d08/f40" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.unlink(sys.argv[1])
os.fchmod(fd, 0o600)
print(oct(os.fstat(fd).st_mode & 0o7777), os.pread(fd, 100, 0).decode().strip())
os.close(fd)
PY
}

two_mounts() {
  local glowers=$1 who
  mkdir -p "$S/two"
  for who in a b; do
    mkdir -p "$S/two/$who"/{u,w,m}
    cat >"$S/two/$who.sh" <<EOF
set -u
. "$repo/scripts/gluster.sh"
S="$S" BIN="$BIN"
sfs_mount "lowerdir=$glowers,upperdir=$S/two/$who/u,workdir=$S/two/$who/w" "$S/two/$who/m" || exit 1
cd "$S/two/$who/m" || exit 1
echo ready >"$S/two/$who.ready"
while [ ! -e "$S/two/a.ready" ] || [ ! -e "$S/two/b.ready" ]; do sleep 0.05; done
# Both mounts work at once: each writes its own files, changes the same lower files its way,
# and reads the lower tree, round after round.
for r in \$(seq 1 20); do
  mkdir -p "mine-$who/\$r" && echo "$who \$r" >"mine-$who/\$r/file" || exit 2
  echo "$who \$r" >>kinds/file || exit 3
  cat tree/d0\$((r % 9))/* >/dev/null || exit 4
  rm -f "tree/d08/f\$((r + 10))" || exit 5
done
mv tree/d07 "tree/d07-by-$who" || exit 6
[ -z "\$(ls -d mine-* | grep -v "mine-$who")" ] || { echo "sees the other mount's files: \$(ls -d mine-*)"; exit 7; }
[ "\$(grep -c "^$who " kinds/file)" = 20 ] && ! grep -q -v -e "^$who " -e '^plain file' -e '^appended' kinds/file ||
  { echo "kinds/file has the other mount's lines"; cat kinds/file; exit 8; }
[ -e tree/d07-by-$who ] && [ ! -e tree/d07 ] && ! ls -d tree/d07-by-* | grep -v -q "by-$who" || exit 9
grep -q " $S/two/[ab]/m " /proc/mounts && [ "\$(grep -c " $S/two/[ab]/m " /proc/mounts)" = 1 ] || { echo "mounts seen: \$(grep -c " $S/two/" /proc/mounts)"; exit 10; }
cd /
sfs_umount "$S/two/$who/m"
EOF
  done
  local t0 pa pb ra rb
  t0=$(now)
  STRATAFS_GLUSTER_LIB=1 timeout 120 unshare -m --propagation private bash "$S/two/a.sh" >"$S/two/a.out" 2>&1 &
  pa=$!
  STRATAFS_GLUSTER_LIB=1 timeout 120 unshare -m --propagation private bash "$S/two/b.sh" >"$S/two/b.out" 2>&1 &
  pb=$!
  wait "$pa"; ra=$?
  wait "$pb"; rb=$?
  say "time: both mounts' work: $(elapsed "$t0") s"
  check "mount a (own mount namespace) works next to mount b and sees only its own writes" test "$ra" = 0
  [ "$ra" = 0 ] || sed 's/^/  a| /' "$S/two/a.out"
  check "mount b (own mount namespace) works next to mount a and sees only its own writes" test "$rb" = 0
  [ "$rb" = 0 ] || sed 's/^/  b| /' "$S/two/b.out"
  check "neither mount is visible in the test's mount namespace" bash -c "! grep -q ' $S/two/' /proc/mounts"
  check "each upper holds only its own files" \
    test "$(ls "$S/two/a/u" | tr '\n' ' ')|$(ls "$S/two/b/u" | tr '\n' ' ')" = "kinds mine-a tree |kinds mine-b tree "
  check "the GlusterFS lowers are unchanged" lowers_unchanged
}

# A running mount over the GlusterFS lowers takes a layer written to the volume after it was
# mounted (aufs's add:, through `stratafs branch`) with the kernel's caches full: the view is
# then what a fresh mount of the new stack shows; del: lets the layer go again.
live_layer() {
  local glowers=$1 L=$S/gv/layers/llive D=$S/live out rc
  mkdir -p "$L/tree/d00" "$D"/{u,w,f/u,f/w}
  echo "live layer" >"$L/live-file"
  echo "live over" >"$L/tree/d00/f00"
  mknod "$L/tree/d01" c 0 0 # a whiteout: hides the lowers' tree/d01
  sfs_mount "lowerdir=$glowers,upperdir=$D/u,workdir=$D/w" "$D/m" || { fail "mount for the live layer"; return; }
  find "$D/m" >/dev/null
  cat "$D/m/tree/d00/f00" "$D/m/tree/d01/f00" >/dev/null
  # (The control socket listens a moment after the mount shows.)
  for rc in 1 2 3 4 5 6 7 8 9 10; do
    out=$("$BIN" branch "$D/m" "add:1:$L" 2>&1) && break
    sleep 0.2
  done
  check "stratafs branch MNT add:1:LAYER on the running mount ($out)" test -n "$out" -a -e "$D/m/live-file"
  check "the added layer's files show at once, over the older layers" \
    test "$(cat "$D/m/live-file" 2>&1):$(cat "$D/m/tree/d00/f00" 2>&1)" = "live layer:live over"
  check "a directory the added layer whites out is gone at once" test ! -e "$D/m/tree/d01"
  snapshot "$D/m" >"$S/live.running"
  if sfs_mount "lowerdir=$L:$glowers,upperdir=$D/f/u,workdir=$D/f/w" "$D/f/m"; then
    snapshot "$D/f/m" >"$S/live.fresh"
    sfs_umount "$D/f/m"
    same "the running mount with the added layer shows what a fresh mount of the new stack shows" \
      "$S/live.running" "$S/live.fresh"
  else
    fail "fresh mount of the new stack"
  fi
  out=$("$BIN" branch "$D/m" "del:$L" 2>&1)
  check "stratafs branch MNT del:LAYER ($out): the old view again" \
    test "$(cat "$D/m/tree/d00/f00" 2>&1):$(ls "$D/m/tree/d01" | head -n 1)" = "00/00:f00" -a ! -e "$D/m/live-file"
  sfs_umount "$D/m"
  rm -rf "$L" "$D"
}

fault() {
  local glowers=$1 bpid t0 rc out walker i took first_fail="" n_ok=0 hung=0
  mkdir -p "$S/f"/{u,w}
  # The default thread count: every request waiting for a stalled lower holds one daemon
  # thread; one per CPU (2 here) let the walk and one reader stop the upper too, so a mount
  # with a FUSE branch starts at least 16 (STRATAFS_GLUSTER_FAULT_OPTS=threads=2 shows the
  # stall).
  local fopts=${STRATAFS_GLUSTER_FAULT_OPTS:-}
  sfs_mount "lowerdir=$glowers,upperdir=$S/f/u,workdir=$S/f/w${fopts:+,$fopts}" "$S/f/m" ||
    { fail "mount for the fault test"; return; }
  snapshot "$S/f/m" >"$S/fault.before"
  echo 'in the upper' >"$S/f/m/upper-file"
  # A walk of part of the merged view that runs until told to stop.
  ( while [ ! -e "$S/f/stop" ]; do find "$S/f/m/tree/d00" "$S/f/m/tree/d01" -type f -exec cat {} + >/dev/null 2>&1; done ) &
  walker=$!
  sleep 1
  bpid=$(brick_pid)
  freeze "$bpid"
  t0=$(now)
  kill -KILL "$bpid"
  for ((i = 0; i < 50; i++)); do [ -e "/proc/$bpid" ] || break; sleep 0.1; done
  [ -e "/proc/$bpid" ] && say "note: the killed brick $bpid is still in /proc: $(grep State "/proc/$bpid/status")"
  say "killed the brick (glusterfsd pid $bpid) during a walk of the merged view"
  # Reads of lower files this mount never opened, one after the other: each must answer
  # (data or an error, never a hang) within the bound, and they must start failing with
  # EIO/ENOTCONN within the bound (the GlusterFS client may answer a few from its caches).
  for i in $(seq -f %02g 0 49); do
    out=$(timeout "$BOUND" cat "$S/f/m/tree/d08/f$i" 2>&1)
    rc=$?
    [ "$rc" = 124 ] && { hung=1; break; }
    if [ "$rc" != 0 ]; then first_fail=$out; break; fi
    [ "$out" = "08/$i" ] || { first_fail="wrong data: $out"; break; }
    n_ok=$((n_ok + 1))
    awk -v a="$t0" -v b="$(now)" -v m="$BOUND" 'BEGIN { exit !(b - a > m) }' && break
    sleep 0.2
  done
  took=$(elapsed "$t0")
  say "time: $n_ok lower reads answered from caches, then after $took s: ${first_fail:-no failure}"
  check "no lower read hangs past $BOUND s after the brick died" test "$hung" = 0
  check "lower reads fail with EIO or ENOTCONN within $BOUND s of the brick's death" \
    bash -c "case '$first_fail' in *'Input/output error'* | *'not connected'*) awk 'BEGIN { exit !($took <= $BOUND) }' ;; *) exit 1 ;; esac"
  check "the daemon still serves the local upper (upper-file reads)" \
    test "$(timeout "$BOUND" cat "$S/f/m/upper-file" 2>&1)" = 'in the upper'
  # (A new name in a merged directory needs a lower lookup, which fails like any lower
  # access: only files already in the upper are expected to work.)
  check "appending to the upper file still works" timeout "$BOUND" bash -c "echo more >>'$S/f/m/upper-file'"
  out=$(timeout "$BOUND" ls "$S/f/m" 2>&1); rc=$?
  check "the mount root answers a listing within $BOUND s (exit $rc)" test "$rc" != 124
  touch "$S/f/stop"
  for ((i = 0; i < BOUND * 10; i++)); do kill -0 "$walker" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$walker" 2>/dev/null; then
    fail "the walk still hangs $BOUND s after being told to stop"
    kill -KILL "$walker" 2>/dev/null
  else
    pass "the walk ended within $BOUND s of being told to stop"
  fi
  wait "$walker" 2>/dev/null
  gl volume start gv0 force >/dev/null
  t0=$(now)
  local ok=0 direct=
  for ((i = 0; i < 60; i++)); do
    [ -z "$direct" ] && [ "$(timeout 5 cat "$S/gv/layers/l3/tree/d08/f48" 2>/dev/null)" = "08/48" ] && direct=$(elapsed "$t0")
    if [ "$(timeout 5 cat "$S/f/m/tree/d08/f49" 2>&1)" = "08/49" ]; then ok=1; break; fi
    sleep 0.5
  done
  say "time: after gluster volume start gv0 force, the volume's own mount read again after ${direct:-(never)} s, the stratafs view after $(elapsed "$t0") s ($(timeout 5 cat "$S/f/m/tree/d08/f49" 2>&1))"
  check "after 'gluster volume start gv0 force' the lower reads again without a remount" test "$ok" = 1
  snapshot "$S/f/m" 2>/dev/null | grep -v -e '^\./upper-file ' >"$S/fault.after"
  same "after the restart the whole view reads as before the fault" "$S/fault.before" "$S/fault.after"
  sfs_umount "$S/f/m"
}

# wait_staging DIR: until a staging file in DIR (a workdir's work/) holds 32 MiB or more, at
# most 10 s; prints its size.
wait_staging() {
  local i sz=0
  for ((i = 0; i < 200; i++)); do
    sz=$(find "$1" -maxdepth 1 -type f -printf '%s\n' 2>/dev/null | sort -n | tail -n 1)
    [ "${sz:-0}" -ge 33554432 ] && break
    sleep 0.05
  done
  echo "${sz:-0}"
}
# uncache FILE: drops FILE's pages from the page cache (posix_fadvise DONTNEED), this file's only.
uncache() { dd if="$1" iflag=nocache count=0 status=none; }
# recovered MNT FILE WANT: waits (30 s at most) until MNT/FILE reads WANT.
recovered() {
  local i
  for ((i = 0; i < 60; i++)); do
    [ "$(timeout 5 cat "$1/$2" 2>/dev/null)" = "$3" ] && return 0
    sleep 0.5
  done
  return 1
}

BIG_MB=256
# A large lower file in a layer added to the volume after the other mounts; a copy-up of it
# (an append) is stopped (SIGSTOP of the brick) and then killed (SIGKILL) midway. The mount
# uses the default thread count.
fault_copy_up() {
  local glowers=$1 B=$S/gv/layers/lbig C=$S/c bpid t0 rc took out sz sha round i fdread
  mkdir -p "$B" "$C"/{u,w}
  t0=$(now)
  # (Made on local disk and copied: cp's large writes, not a pipe's small ones.)
  yes 0123456789abcdef | head -c "$((BIG_MB << 20))" >"$S/big.bin"
  cp "$S/big.bin" "$B/big.bin"
  echo added >"$B/new-layer-file"
  # Files to hold open across a fault: larger than what GlusterFS's quick-read keeps from
  # the lookup (64 KiB), so a read must reach the brick.
  for i in 1 2; do head -c 4M /dev/urandom >"$S/open$i.bin"; cp "$S/open$i.bin" "$B/"; uncache "$B/open$i.bin"; done
  say "time: writing the $BIG_MB MiB lower file onto the volume: $(elapsed "$t0") s"
  sha=$(sha256sum <"$S/big.bin" | cut -c1-64)
  rm -f "$S/big.bin"
  sfs_mount "lowerdir=$B:$glowers,upperdir=$C/u,workdir=$C/w${STRATAFS_GLUSTER_FAULT_OPTS:+,$STRATAFS_GLUSTER_FAULT_OPTS}" "$C/m" ||
    { fail "mount with the added layer"; return; }
  check "a layer added to the volume after the first mounts is used by a new mount (new-layer-file, and the old layers below it)" \
    test "$(cat "$C/m/new-layer-file" 2>&1):$(cat "$C/m/tree/d00/f00" 2>&1)" = "added:00/00"
  echo 'in the upper' >"$C/m/upper-file"
  local n=0
  for round in stop kill; do
    n=$((n + 1))
    # Nothing of big.bin in the page cache, so the copy-up must read from the brick.
    uncache "$B/big.bin"
    # A file opened before the fault and not read yet (its first read must reach the brick).
    exec 7<"$C/m/open$n.bin"
    exec 8<"$B/open$n.bin" # the same file through the volume's own mount, to compare
    rm -f "$C/cu.out"
    ( t=$(now); timeout $((BOUND + 30)) sh -c "echo x >>'$C/m/big.bin'" 2>"$C/cu.err"; echo "$? $(elapsed "$t")" >"$C/cu.out" ) &
    local cu=$!
    sz=$(wait_staging "$C/w/work")
    bpid=$(brick_pid)
    if [ "$round" = stop ]; then kill -STOP "$bpid"; else kill -KILL "$bpid"; fi
    t0=$(now)
    say "$round: brick pid $bpid (SIG${round^^}) with $((sz >> 20)) MiB of $BIG_MB staged"
    ( t=$(now); out=$(timeout $((BOUND + 30)) dd bs=1M count=1 status=none <&7 2>&1 >/dev/null); echo "$?|$(elapsed "$t")|$out" >"$C/fd.out" ) &
    fdread=$!
    sleep 0.3
    out=$(timeout 5 stat -c %s "$C/m/upper-file" 2>&1); rc=$?
    took=$(elapsed "$t0")
    check "$round: the daemon serves the local upper meanwhile (stat of upper-file ${took} s after the fault, exit $rc)" \
      bash -c "[ '$rc' = 0 ] && awk 'BEGIN { exit !($took <= 2) }'"
    wait "$cu"
    read -r rc took <"$C/cu.out"
    say "time: $round: the interrupted copy-up (append to big.bin) ended after $took s, exit $rc: $(head -c 200 "$C/cu.err")"
    check "$round: the copy-up fails with EIO/ENOTCONN within $BOUND s" \
      bash -c "[ '$rc' != 0 ] && [ '$rc' != 124 ] && grep -q -e 'Input/output error' -e 'not connected' '$C/cu.err' && awk 'BEGIN { exit !($took <= $BOUND) }'"
    check "$round: no partial copy-up in the upper (no big.bin there)" test ! -e "$C/u/big.bin"
    wait "$fdread"
    IFS='|' read -r rc took out <"$C/fd.out"
    say "time: $round: the first read of a file opened before the fault: after $took s, exit $rc: $out"
    case "$out" in *'Input/output error'* | *'not connected'*) ;; *) rc="$rc (not EIO/ENOTCONN)" ;; esac
    check "$round: that read fails with EIO/ENOTCONN within $BOUND s" \
      bash -c "[ '$rc' = 1 ] && awk 'BEGIN { exit !($took <= $BOUND) }'"
    say "$round: staging leftovers in the workdir: $(ls -A "$C/w/work" | wc -l)"
    if [ "$round" = stop ]; then kill -CONT "$bpid"; else gl volume start gv0 force >/dev/null; fi
    t0=$(now)
    recovered "$C/m" "tree/d08/f3$n" "08/3$n"
    rc=$?
    say "time: $round: the lower read again $(elapsed "$t0") s after the brick was back"
    check "$round: after the brick is back the mount reads the lower again, without a remount" test "$rc" = 0
    t0=$(now)
    for ((i = 0; i < 40; i++)); do
      # (pread: a failed dd would still have moved the offset)
      timeout 20 python3 -c 'import os, sys; sys.stdout.buffer.write(os.pread(7, 1 << 20, 2 << 20))' >"$C/fd.data" 2>"$C/fd.err" && break
      sleep 0.25
    done
    say "time: $round: the descriptor opened before the fault read again after $(elapsed "$t0") s more ($i failed tries)"
    out=$(sha256sum <"$C/fd.data" | cut -c1-16)
    check "$round: the file opened before the fault reads through the same descriptor ($(head -c 150 "$C/fd.err"))" \
      test "$out" = "$(dd if="$S/open$n.bin" bs=1M skip=2 count=1 status=none | sha256sum | cut -c1-16)"
    timeout 5 dd bs=1M count=1 status=none <&8 >/dev/null 2>&1 # (its first read, failed meanwhile)
    out=$(timeout 20 dd bs=1M skip=2 count=1 status=none <&8 2>&1 >/dev/null)
    say "$round: on the volume's own mount, a descriptor opened before the fault: ${out:-reads again}"
    exec 7<&- 8<&-
    check "$round: big.bin still reads as the lower file (sha256 of $BIG_MB MiB)" \
      test "$(timeout 60 sha256sum <"$C/m/big.bin" | cut -c1-64)" = "$sha"
  done
  t0=$(now)
  check "then the copy-up succeeds (append to big.bin)" timeout 60 sh -c "echo x >>'$C/m/big.bin'"
  say "time: a full copy-up of $BIG_MB MiB from the volume: $(elapsed "$t0") s"
  check "the copy in the upper is complete ($(stat -c %s "$C/u/big.bin" 2>&1) bytes)" \
    test "$(stat -c %s "$C/u/big.bin" 2>&1)" = $(((BIG_MB << 20) + 2))
  check "the workdir's staging area is empty" test -z "$(ls -A "$C/w/work")"
  sfs_umount "$C/m"
}

# The upper (and workdir) on the volume: data written and fsynced before the brick dies is
# there after it is back (through the mount and on the brick); a copy-up killed midway never
# shows in the upper, its staging leftovers go at the next mount.
fault_upper() {
  local glowers=$1 H=$S/gv/hosts/h2 M=$S/h2m B=$S/gv/layers/lbig bpid t0 rc took out sz sha
  mkdir -p "$H"/{u,w}
  sha=$(sha256sum <"$B/big.bin" | cut -c1-64)
  sfs_mount "lowerdir=$B:$glowers,upperdir=$H/u,workdir=$H/w${STRATAFS_GLUSTER_FAULT_OPTS:+,$STRATAFS_GLUSTER_FAULT_OPTS}" "$M" ||
    { fail "mount with the upper on the volume"; return; }
  python3 - "$M" <<'PY' || fail "write and fsync on the upper on the volume"
import os, sys
m = sys.argv[1]
for name, flags in (("synced", os.O_CREAT | os.O_WRONLY | os.O_TRUNC), ("tree/d00/f01", os.O_WRONLY | os.O_APPEND)):
    fd = os.open(os.path.join(m, name), flags, 0o644)
    os.write(fd, b"fsynced before the fault\n")
    os.fsync(fd)
    os.close(fd)
PY
  uncache "$B/big.bin"
  ( t=$(now); timeout $((BOUND + 30)) sh -c "echo x >>'$M/big.bin'" 2>"$S/h2cu.err"; echo "$? $(elapsed "$t")" >"$S/h2cu.out" ) &
  local cu=$!
  sz=$(wait_staging "$H/w/work")
  bpid=$(brick_pid)
  kill -KILL "$bpid"
  t0=$(now)
  say "killed the brick (pid $bpid) with $((sz >> 20)) MiB of $BIG_MB staged on the volume"
  out=$(timeout $((BOUND + 30)) sh -c "echo more >>'$M/synced'" 2>&1); rc=$?
  took=$(elapsed "$t0")
  say "time: an append to an upper file on the dead volume: after $took s, exit $rc: $out"
  check "a write to the upper on the dead volume fails with EIO/ENOTCONN within $BOUND s" \
    bash -c "[ '$rc' != 0 ] && [ '$rc' != 124 ] && awk 'BEGIN { exit !($took <= $BOUND) }'"
  wait "$cu"
  read -r rc took <"$S/h2cu.out"
  say "time: the copy-up to the upper on the volume ended after $took s, exit $rc: $(head -c 200 "$S/h2cu.err")"
  check "the copy-up to the upper on the volume fails within $BOUND s" \
    bash -c "[ '$rc' != 0 ] && [ '$rc' != 124 ] && awk 'BEGIN { exit !($took <= $BOUND) }'"
  gl volume start gv0 force >/dev/null
  t0=$(now)
  recovered "$M" synced "fsynced before the fault"
  rc=$?
  say "time: the upper on the volume read again $(elapsed "$t0") s after the brick was back"
  check "after the brick is back the mount works again without a remount" test "$rc" = 0
  check "data fsynced before the fault reads back through the mount (a new file, a copied-up one)" \
    test "$(cat "$M/synced" 2>&1)|$(tail -n 1 "$M/tree/d00/f01" 2>&1)" = "fsynced before the fault|fsynced before the fault"
  check "... and is on the brick" \
    test "$(cat "$S/bricks/b1/hosts/h2/u/synced" 2>&1)|$(tail -n 1 "$S/bricks/b1/hosts/h2/u/tree/d00/f01" 2>&1)" = "fsynced before the fault|fsynced before the fault"
  check "no partial copy-up in the upper on the volume (no big.bin there)" test ! -e "$H/u/big.bin"
  check "big.bin reads as the lower file" test "$(timeout 60 sha256sum <"$M/big.bin" | cut -c1-64)" = "$sha"
  local left
  left=$(ls -A "$H/w/work" | wc -l)
  sfs_umount "$M"
  sfs_mount "lowerdir=$B:$glowers,upperdir=$H/u,workdir=$H/w" "$M" || { fail "remount with the upper on the volume"; return; }
  check "the next mount empties the staging area ($left leftovers before it, $(ls -A "$H/w/work" | wc -l) after)" test -z "$(ls -A "$H/w/work")"
  check "... and the view still has the fsynced data" test "$(cat "$M/synced" 2>&1)" = "fsynced before the fault"
  sfs_umount "$M"
}

# freeze BRICK_PID: a brick that stops answering (SIGSTOP: the connection stays up, so only
# network.ping-timeout ends the wait). A lower read blocks until then and fails; meanwhile the
# upper keeps being served; after SIGCONT the client reconnects by itself.
freeze() {
  local bpid=$1 t0 rc took out
  kill -STOP "$bpid"
  say "froze the brick (SIGSTOP to glusterfsd pid $bpid)"
  t0=$(now)
  ( out=$(timeout $((BOUND + 30)) cat "$S/f/m/tree/d08/f20" 2>&1); echo "$?|$(elapsed "$t0")|$out" >"$S/f/frozen-read" ) &
  local reader=$!
  sleep 0.5
  out=$(timeout 5 cat "$S/f/m/upper-file" 2>&1); rc=$?
  took=$(elapsed "$t0")
  check "while lower reads wait for the frozen brick, the upper file reads at once (${took} s after the freeze, exit $rc)" \
    bash -c "[ '$rc:$out' = '0:in the upper' ] && awk 'BEGIN { exit !($took < 2) }'"
  wait "$reader"
  IFS='|' read -r rc took out <"$S/f/frozen-read"
  say "time: a lower read with the brick frozen returned after $took s (exit $rc: $out)"
  check "that lower read fails with ENOTCONN/EIO within $BOUND s (network.ping-timeout $PING s)" \
    bash -c "[ '$rc' = 1 ] && awk 'BEGIN { exit !($took <= $BOUND) }'"
  kill -CONT "$bpid"
  t0=$(now)
  local i ok=0
  for ((i = 0; i < 60; i++)); do
    if [ "$(timeout 5 cat "$S/f/m/tree/d08/f21" 2>&1)" = "08/21" ]; then ok=1; break; fi
    sleep 0.5
  done
  say "time: after SIGCONT the lower read again after $(elapsed "$t0") s"
  check "after the brick thaws the lower reads again without a remount" test "$ok" = 1
}

finish() {
  # Unmount the volume and stop the daemons we started (the outer part kills what is left).
  umount "$S/gv" 2>/dev/null || umount -l "$S/gv" 2>/dev/null
  gl volume stop gv0 >/dev/null 2>&1
  gl volume delete gv0 >/dev/null 2>&1
  [ -s "$S/glusterd.pid" ] && kill -TERM "$(cat "$S/glusterd.pid")" 2>/dev/null
  section "Result"
  say "gluster: $passed passed, $failed failed"
  [ "$failed" = 0 ] && [ "$passed" -gt 0 ]
}

if [ "${STRATAFS_GLUSTER_LIB:-}" = 1 ]; then
  return 0 2>/dev/null || true
elif [ "${STRATAFS_GLUSTER_INNER:-}" = 1 ]; then
  inner
  finish
  exit $?
else
  outer "$@"
fi
