#!/usr/bin/env bash
# scripts/requests.sh: FUSE requests per operation, counted by the daemon, and interleaved A/B
# timings of two stratafs binaries, on a small synthetic layer stack (no debootstrap dataset).
#
#   scripts/requests.sh [--bin BIN] [--files N]          request counts per workload
#   scripts/requests.sh --ab OLD NEW [--runs N] [--only W1,W2] [--files N]
#                                                          A/B timings (kernel overlayfs too)
#
# Run as root from anywhere in the repository. Scratch space: $STRATAFS_REQ_DIR (default
# /var/tmp/stratafs-requests), lowers on its file system, uppers on a tmpfs mounted inside it;
# everything this script mounts is under that directory and unmounted on exit.
#
# The layer stack: a lower of N files (default 2,000; 1-16 KiB) in 40 directories plus a
# 256 MiB file; the tarball to untar holds another N such files in 40 directories.
#
# Counting (first form): the daemon counts every request it answers (src/stats.rs); the
# counters are read with `getfattr -n user.stratafs.stats` on the mount root and cleared with
# `setfattr -n user.stratafs.stats -v reset`. Workloads, each on a fresh mount except where
# said: untar (tar xf, as root: owners, modes and times restored), find cold (the first walk
# of the mount: find -printf '%p %s %m %u %T@'), find warm (the same walk again), ls -lR warm
# (after the walks), read all (tar cf - of the lower files piped to cat), read twice (the same
# again), rm -rf (of the lower tree, fresh mount), append (one byte appended to each lower file
# of the tree: a copy-up each, fresh mount). Printed: per workload the count of each request
# kind, and per created/read file.
#
# A/B (second form): workloads walk_warm, ls_lR, untar, read_all, read_again, seqread (dd of the
# 256 MiB lower file, 1 MiB blocks, host page cache warm), seqread2 (the same file read a
# second time on the same mount), randread (32,768 4 KiB preads at random offsets of it, after
# one sequential read), rm_rf and append (as above; not in the default set: --only), on the
# kernel overlayfs, OLD and NEW, taking turns (kernel, OLD, NEW,
# kernel, ...), fresh mount each; medians of --runs (default 5) of the wall-clock time and of
# the CPU time (the workload's and the daemon's: steadier than wall time on a loaded machine),
# the ratios NEW/OLD and each to the kernel; every run's figures go to DIR/ab-runs.txt.
#
# --rootless (either form): the same inside `unshare -Urm` (root mapped to root in a new user
# namespace: no FUSE passthrough, the writeback cache instead); the kernel overlayfs then mounts
# with userxattr. The dataset is built outside the namespace first.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=scripts/common.sh
. "$HERE/common.sh"

BIN="$ROOT/target/release/stratafs"
NFILES=2000
AB_OLD="" AB_NEW="" RUNS=5 ONLY="" ROOTLESS=0
ARGS=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;;
    --files) NFILES="$2"; shift 2 ;;
    --ab) AB_OLD="$2"; AB_NEW="$3"; shift 3 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --rootless) ROOTLESS=1; shift ;;
    -h | --help) sed -n '2,36p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
require_root "scripts/requests.sh"
ensure_fuse_device

DIR="${STRATAFS_REQ_DIR:-/var/tmp/stratafs-requests}"
RUN="$DIR/run"
MNT="$RUN/m"
CUR=""          # what is mounted on $MNT: "", kernel or stratafs
STRATAFS_PID=""
cleanup() {
  if [ "$CUR" = stratafs ]; then stop_stratafs "$MNT"; elif [ "$CUR" = kernel ]; then umount "$MNT"; fi
  CUR=""
  is_mounted "$RUN" && { umount "$RUN" || umount -l "$RUN"; }
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ dataset (built once)
make_tree() { # make_tree DIR N: N files of 1-16 KiB in 40 directories
  python3 - "$1" "$2" <<'EOF'
import os, random, sys
d, n = sys.argv[1], int(sys.argv[2])
r = random.Random(7)
for i in range(n):
    sub = os.path.join(d, "d%02d" % (i % 40))
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, "f%05d" % i), "wb") as f:
        f.write(os.urandom(r.randint(1024, 16384)))
EOF
}
DATA="$DIR/data-$NFILES"
if [ ! -e "$DATA/ok" ]; then
  rm -rf "$DATA"
  mkdir -p "$DATA/lower" "$DATA/src"
  make_tree "$DATA/lower/tree" "$NFILES"
  dd if=/dev/urandom of="$DATA/lower/big" bs=1M count=256 status=none
  make_tree "$DATA/src/t" "$NFILES"
  tar cf "$DATA/small.tar" -C "$DATA/src" t
  touch "$DATA/ok"
fi
if [ "$ROOTLESS" = 1 ] && [ -z "${STRATAFS_REQ_IN_USERNS:-}" ]; then
  # The dataset exists now; everything else runs in the namespace (its mounts die with it).
  STRATAFS_REQ_IN_USERNS=1 exec unshare -Urm -- bash "$0" "${ARGS[@]}"
fi
KERNEL_OPTS=""
[ "$ROOTLESS" = 1 ] && KERNEL_OPTS=",userxattr"
mkdir -p "$RUN"
is_mounted "$RUN" || mount -t tmpfs -o size=2g tmpfs "$RUN"
LOWER="$DATA/lower"

fresh_upper() { rm -rf "$RUN/u" "$RUN/w"; mkdir -p "$RUN/u" "$RUN/w" "$MNT"; }
mount_impl() { # mount_impl kernel|BINARY
  fresh_upper
  if [ "$1" = kernel ]; then
    mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$RUN/u,workdir=$RUN/w$KERNEL_OPTS" "$MNT" && CUR=kernel
  else
    mount_stratafs "$1" "lowerdir=$LOWER,upperdir=$RUN/u,workdir=$RUN/w" "$MNT" "$RUN/log" && CUR=stratafs
  fi
}
umount_impl() {
  if [ "$CUR" = stratafs ]; then stop_stratafs "$MNT"; elif [ "$CUR" = kernel ]; then umount "$MNT"; fi
  CUR=""
}
warm_lower() { tar cf - -C "$LOWER" . | cat >/dev/null; }

stats_reset() { setfattr -n user.stratafs.stats -v reset "$MNT"; }
stats_read() { getfattr --absolute-names --only-values -n user.stratafs.stats "$MNT"; }

walk() { find "$MNT" -printf '%p %s %m %u %T@\n' >/dev/null; }
# append_all: one byte appended to each lower file of the tree (a copy-up each).
append_all() { find "$MNT/tree" -type f -exec sh -c 'for f; do printf x >>"$f" || exit 1; done' _ {} +; }
randread() {
  python3 - "$1" <<'EOF'
import os, random, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
r = random.Random(1)
for _ in range(32768):
    os.pread(fd, 4096, r.randrange(0, size // 4096) * 4096)
os.close(fd)
EOF
}

# ------------------------------------------------------------------ request counts
if [ -z "$AB_OLD" ]; then
  [ -x "$BIN" ] || die "no binary $BIN"
  warm_lower
  declare -A COUNT=() # "workload op" -> n
  WLS=()
  OPS=""
  record() { # record WORKLOAD: reads the counters into COUNT
    local w="$1" op n
    WLS+=("$w")
    OPS=""
    # (Lines that are not counts, as `transport classic`, are left out.)
    while read -r op n; do
      [[ $n =~ ^[0-9]+$ ]] || continue
      COUNT["$w $op"]=$n
      OPS="$OPS $op"
    done < <(stats_read)
  }
  ntar=$(tar tf "$DATA/small.tar" | wc -l)
  nlow=$(find "$LOWER/tree" | wc -l)
  mount_impl "$BIN" || die "mount failed"
  mkdir "$MNT/x"
  stats_reset; tar xf "$DATA/small.tar" -C "$MNT/x"; record untar
  umount_impl
  mount_impl "$BIN" || die "mount failed"
  stats_reset; walk; record find_cold
  stats_reset; walk; record find_warm
  stats_reset; ls -lR "$MNT" >/dev/null; record ls_lR_warm
  umount_impl
  mount_impl "$BIN" || die "mount failed"
  stats_reset; tar cf - -C "$MNT" tree | cat >/dev/null; record read_all
  stats_reset; tar cf - -C "$MNT" tree | cat >/dev/null; record read_again
  umount_impl
  mount_impl "$BIN" || die "mount failed"
  stats_reset; rm -rf "$MNT/tree"; record rm_rf
  umount_impl
  mount_impl "$BIN" || die "mount failed"
  stats_reset; append_all; record append
  umount_impl
  per() { case "$1" in untar) echo "$ntar" ;; append) echo "$NFILES" ;; *) echo "$nlow" ;; esac; }
  say "FUSE requests counted by the daemon ($BIN; $NFILES-file trees: untar creates $ntar entries, the walks and reads see $nlow lower entries)"
  printf '%-30s' "request"
  for w in "${WLS[@]}"; do printf ' %18s' "$w"; done
  printf '\n'
  for op in $OPS; do
    any=0
    for w in "${WLS[@]}"; do [ "${COUNT["$w $op"]:-0}" != 0 ] && any=1; done
    [ $any = 1 ] || continue
    printf '%-30s' "$op"
    for w in "${WLS[@]}"; do
      n=${COUNT["$w $op"]:-0}
      printf ' %9d %8s' "$n" "$(awk -v n="$n" -v d="$(per "$w")" 'BEGIN { printf "(%.2f)", n / d }')"
    done
    printf '\n'
  done
  say "(in brackets: per entry of the tarball for untar, per lower entry for the others)"
  exit 0
fi

# ------------------------------------------------------------------ A/B timings
[ -x "$AB_OLD" ] && [ -x "$AB_NEW" ] || die "--ab needs two executable binaries"
ALL="walk_warm ls_lR untar read_all read_again seqread seqread2 randread"
WORKLOADS="${ONLY//,/ }"
WORKLOADS="${WORKLOADS:-$ALL}"
now() { printf '%s' "$EPOCHREALTIME"; }
# The daemon's CPU time so far (user + system, all threads), in seconds; 0 for the kernel.
daemon_cpu() {
  if [ "$CUR" = stratafs ] && [ -r "/proc/$STRATAFS_PID/stat" ]; then
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / hz }' "/proc/$STRATAFS_PID/stat"
  else
    echo 0
  fi
}
# timed CMD...: runs CMD; sets T (wall seconds) and C (CPU seconds: CMD and its children,
# plus the daemon's, so the kernel overlayfs's work in system calls is counted too).
timed() {
  local a b d0 d1 cpu TIMEFORMAT='%U %S'
  d0=$(daemon_cpu)
  a=$(now)
  cpu=$({ time "$@" >/dev/null 2>&1; } 2>&1)
  b=$(now)
  d1=$(daemon_cpu)
  T=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.4f", b - a }')
  C=$(awk -v c="$cpu" -v d0="$d0" -v d1="$d1" 'BEGIN { split(c, x, " "); printf "%.3f", x[1] + x[2] + d1 - d0 }')
}
one() { # one WORKLOAD IMPL -> "wall cpu" on stdout
  local w="$1" impl="$2" T=NaN C=NaN
  warm_lower
  mount_impl "$impl" >/dev/null || { echo "NaN NaN"; return; }
  case "$w" in
    walk_warm) walk; timed walk ;;
    ls_lR) timed ls -lR "$MNT" ;;
    untar) mkdir "$MNT/x"; timed tar xf "$DATA/small.tar" -C "$MNT/x" ;;
    read_all) timed sh -c "tar cf - -C '$MNT' tree | cat" ;;
    read_again) tar cf - -C "$MNT" tree | cat >/dev/null; timed sh -c "tar cf - -C '$MNT' tree | cat" ;;
    seqread) timed dd if="$MNT/big" of=/dev/null bs=1M ;;
    seqread2) dd if="$MNT/big" of=/dev/null bs=1M status=none; timed dd if="$MNT/big" of=/dev/null bs=1M ;;
    randread) dd if="$MNT/big" of=/dev/null bs=1M status=none; timed randread "$MNT/big" ;;
    rm_rf) timed rm -rf "$MNT/tree" ;;
    append) timed append_all ;;
  esac
  umount_impl
  echo "$T $C"
}
minimum() { tr ' ' '\n' | grep -v '^$' | sort -g | head -1; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.4f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
say "A/B: OLD=$AB_OLD NEW=$AB_NEW, $RUNS runs each, interleaved (kernel, OLD, NEW, ...); load: $(cut -d' ' -f1-3 /proc/loadavg)"
say "wall: medians of wall-clock seconds; cpu: medians of CPU seconds (workload + daemon), steadier when the machine is loaded"
printf '| workload | kernel wall | OLD wall | NEW wall | NEW/OLD wall | kernel cpu | OLD cpu | NEW cpu | NEW/OLD cpu | OLD/kernel cpu | NEW/kernel cpu |\n|---|---|---|---|---|---|---|---|---|---|---|\n'
for w in $WORKLOADS; do
  K="" O="" N="" KC="" OC="" NC=""
  for ((r = 0; r < RUNS; r++)); do
    read -r t c < <(one "$w" kernel); K="$K $t"; KC="$KC $c"
    read -r t c < <(one "$w" "$AB_OLD"); O="$O $t"; OC="$OC $c"
    read -r t c < <(one "$w" "$AB_NEW"); N="$N $t"; NC="$NC $c"
  done
  echo "$w wall: kernel$K; OLD$O; NEW$N; cpu: kernel$KC; OLD$OC; NEW$NC" >>"$DIR/ab-runs.txt"
  awk -v w="$w" -v k="$(echo "$K" | median)" -v o="$(echo "$O" | median)" -v n="$(echo "$N" | median)" \
    -v kc="$(echo "$KC" | median)" -v oc="$(echo "$OC" | median)" -v nc="$(echo "$NC" | median)" 'BEGIN {
    printf "| %s | %.3f | %.3f | %.3f | %.2f | %.3f | %.3f | %.3f | %.2f | %.2f× | %.2f× |\n", w, k, o, n, n / o, kc, oc, nc, nc / oc, oc / kc, nc / kc }'
done
say "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
