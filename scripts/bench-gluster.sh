#!/usr/bin/env bash
# Speed over a GlusterFS lower: stratafs against the kernel overlayfs and fuse-overlayfs 1.10
# over the same GlusterFS mount, and stratafs over the same layers on local disk.
#
#   scripts/bench-gluster.sh [--runs N] [--markdown FILE]       as root, from the repository
#
# Sets GlusterFS up as scripts/gluster.sh does (its own network namespace with 10.250.0.1,
# pid and mount namespace, private glusterd state; its functions are sourced from there), with
# a one-brick volume. Layers: base/ = copies of the host's /usr/include and
# /usr/lib/python3.11 (about 10,000 entries, 180 MB), layer2/ = the kernel overlayfs's
# upper after some changes over base/ (modified files, whiteouts, an opaque directory),
# copied onto the volume with cp -a. Every measurement mounts afresh with an empty local
# upper; the implementations take turns (A B C D A B C D ...), and the table gives medians.
#
# Rows: walk_cold  find -printf over the whole mount after `echo 3 > drop_caches`
#       walk_warm  the same find again on the same mount
#       read_all   tar cf - . | cat of the whole mount (lower files read once before, outside
#                  the timing)
#       untar      tar xf of ~1,400 small files (host's /usr/share/perl) into the mount
# Columns: sfs-gluster (stratafs, lowers on the volume), kernel-gluster (mount -t overlay,
# lowers on the volume: FUSE lowers are allowed read-only), fo110-gluster
# (/usr/bin/fuse-overlayfs), sfs-local (stratafs, the same layers on local disk).
# The daemon's request counters (getfattr -n user.stratafs.stats) around stratafs's warm walk
# go to the log: how many requests the warm walk still sends.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 1
# shellcheck source=scripts/common.sh
. scripts/common.sh

runs=3 markdown=
if [ "${STRATAFS_BENCH_GLUSTER_INNER:-}" != 1 ]; then
  while [ $# -gt 0 ]; do
    case "$1" in
      --runs) runs=$2; shift ;;
      --markdown) markdown=$2; shift ;;
      -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown argument: $1" ;;
    esac
    shift
  done
  require_root scripts/bench-gluster.sh
  command -v glusterd >/dev/null 2>&1 || ( ensure_packages glusterfs-server glusterfs-client attr ) >/dev/null 2>&1 ||
    { say "SKIP: GlusterFS could not be installed"; exit 77; }
  [ -x target/release/stratafs ] || { require_cargo; cargo build --release -q || die "cargo build failed"; }
  scratch=$(mktemp -d /tmp/sfs-bench-gluster.XXXXXX)
  chmod 0755 "$scratch"
  ns=sfs-gfsb-$$ body=
  cleanup() {
    local rc=$? i
    if [ -n "$body" ] && kill -0 "$body" 2>/dev/null; then
      kill -KILL "$body" 2>/dev/null
      for ((i = 0; i < 50; i++)); do kill -0 "$body" 2>/dev/null || break; sleep 0.1; done
    fi
    ip netns del "$ns" 2>/dev/null
    remove_scratch "$scratch" || note "left $scratch behind"
    exit "$rc"
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  ip netns add "$ns" && ip -n "$ns" link set lo up && ip -n "$ns" addr add 10.250.0.1/32 dev lo ||
    { say "SKIP: no network namespace here"; exit 77; }
  # As in gluster.sh: pid 1 of its own pid namespace, everything dies with it.
  ip netns exec "$ns" unshare --pid --fork --kill-child --mount-proc \
    env STRATAFS_BENCH_GLUSTER_INNER=1 SCRATCH="$scratch" BIN="$repo/target/release/stratafs" RUNS="$runs" MARKDOWN="$markdown" \
    bash "$repo/scripts/bench-gluster.sh" &
  body=$!
  wait "$body"
  exit $?
fi

# ---- Inside the namespace ----
# shellcheck source=scripts/gluster.sh
STRATAFS_GLUSTER_LIB=1 . "$repo/scripts/gluster.sh"
S=$SCRATCH
IMPLS="sfs-gluster kernel-gluster fo110-gluster sfs-local"
WORKLOADS="walk_cold walk_warm read_all untar"
log() { printf '%s\n' "$*" >>"$S/bench.log"; }

make_data() {
  local L=$S/local
  mkdir -p "$L/base/usr/lib" "$S/k/w" "$S/k/m" "$L/layer2"
  cp -a /usr/include "$L/base/usr/" && cp -a /usr/lib/python3.11 "$L/base/usr/lib/" || return 1
  mount -t overlay overlay -o "lowerdir=$L/base,upperdir=$L/layer2,workdir=$S/k/w" "$S/k/m" || return 1
  (
    cd "$S/k/m" || exit 1
    find usr/include/linux -name '*.h' | head -n 300 | while read -r f; do echo '/* l2 */' >>"$f"; done
    find usr/lib/python3.11 -name '*.pyc' | head -n 500 | xargs rm -f
    rm -rf usr/include/sound && mkdir usr/include/sound && echo new >usr/include/sound/new.h
    mkdir -p usr/share/l2 && for i in $(seq 1 200); do echo "$i" >"usr/share/l2/f$i"; done
  )
  umount "$S/k/m" || return 1
  mkdir -p "$S/gv/bench"
  # Not the hard links: the kernel makes every whiteout a link to one shared whiteout inode,
  # and GlusterFS keeps one trusted.gfid2path xattr per link on the brick file, so past a
  # few dozen links (the brick file's xattr space) link(2) fails with ENOSPC.
  cp -a --preserve=all --no-preserve=links "$L/base" "$L/layer2" "$S/gv/bench/" || return 1
  tar cf "$S/small.tar" -C /usr/share perl || return 1
}

mount_impl() { # IMPL UPPER WORK MNT
  local lowers
  case "$1" in *-gluster) lowers="$S/gv/bench/layer2:$S/gv/bench/base" ;; *) lowers="$S/local/layer2:$S/local/base" ;; esac
  case "$1" in
    sfs-*) sfs_mount "lowerdir=$lowers,upperdir=$2,workdir=$3" "$4" ;;
    kernel-*) kmount "lowerdir=$lowers,upperdir=$2,workdir=$3" "$4" ;;
    fo110-*) BIN=/usr/bin/fuse-overlayfs sfs_mount "lowerdir=$lowers,upperdir=$2,workdir=$3" "$4" ;;
  esac
}
umount_impl() { # IMPL MNT
  case "$1" in
    kernel-*) umount "$2" ;;
    *) sfs_umount "$2" ;;
  esac
}
stats() { getfattr -h --only-values -n user.stratafs.stats "$1" 2>/dev/null | tr '\n' ' '; }

measure() { # IMPL WORKLOAD RUN
  local impl=$1 wl=$2 run=$3 d=$S/run/$1-$2-$3 t0 t1 ok=1
  mkdir -p "$d"/{u,w}
  mount_impl "$impl" "$d/u" "$d/w" "$d/m" || { log "$impl $wl $run: mount failed"; echo "$impl $wl fail" >>"$S/results"; return; }
  case "$wl" in
    walk_cold)
      sync; echo 3 >/proc/sys/vm/drop_caches
      t0=$(now); find "$d/m" -printf '%p %s %m %u %T@\n' >/dev/null || ok=0; t1=$(now) ;;
    walk_warm)
      find "$d/m" -printf '%p %s %m %u %T@\n' >/dev/null
      case "$impl" in sfs-*) log "$impl walk_warm $run: stats before: $(stats "$d/m")" ;; esac
      t0=$(now); find "$d/m" -printf '%p %s %m %u %T@\n' >/dev/null || ok=0; t1=$(now)
      case "$impl" in sfs-*) log "$impl walk_warm $run: stats after: $(stats "$d/m")" ;; esac ;;
    read_all)
      case "$impl" in *-gluster) tar cf - -C "$S/gv/bench" . | cat >/dev/null ;; *) tar cf - -C "$S/local" base layer2 | cat >/dev/null ;; esac
      t0=$(now); (cd "$d/m" && tar cf - . | cat >/dev/null) || ok=0; t1=$(now) ;;
    untar)
      mkdir "$d/m/untar"
      t0=$(now); tar xf "$S/small.tar" -C "$d/m/untar" || ok=0; t1=$(now) ;;
  esac
  umount_impl "$impl" "$d/m"
  rm -rf "$d"
  if [ "$ok" = 1 ]; then
    echo "$impl $wl $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" >>"$S/results"
  else
    echo "$impl $wl fail" >>"$S/results"
  fi
}

section "GlusterFS for the benchmark"
start_gluster >"$S/start.log" 2>&1 || { cat "$S/start.log"; say "SKIP: GlusterFS does not start here"; exit 77; }
t0=$(now)
make_data >"$S/data.log" 2>&1 || { tail -n 5 "$S/data.log"; die "making the layers failed"; }
say "layers: $(find "$S/local" | wc -l) entries made and copied onto the volume in $(elapsed "$t0") s"
: >"$S/results"
for ((r = 1; r <= RUNS; r++)); do
  for wl in $WORKLOADS; do
    for impl in $IMPLS; do measure "$impl" "$wl" "$r"; done
  done
  say "run $r of $RUNS done"
done
section "Log"
cat "$S/bench.log"
section "Results"
table=$(python3 - "$S/results" "$RUNS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    impl, wl, v = line.split()
    rows.setdefault(wl, {}).setdefault(impl, []).append(None if v == "fail" else float(v))
impls = ["sfs-gluster", "kernel-gluster", "fo110-gluster", "sfs-local"]
names = {"walk_cold": "find walk, cold", "walk_warm": "find walk, warm",
         "read_all": "read every file (tar)", "untar": "untar ~1,400 small files"}
def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None
print(f"(median of {sys.argv[2]} interleaved runs, seconds; in brackets: ratio to stratafs over GlusterFS)")
print()
print("| workload | " + " | ".join(impls) + " | sfs-gluster / sfs-local |")
print("| --- | " + " | ".join("---:" for _ in impls) + " | ---: |")
for wl in ["walk_cold", "walk_warm", "read_all", "untar"]:
    m = {i: med(rows.get(wl, {}).get(i, [])) for i in impls}
    ref = m["sfs-gluster"]
    cells = []
    for i in impls:
        if m[i] is None: cells.append("fail")
        elif i == "sfs-gluster" or not ref: cells.append(f"{m[i]:.3f}")
        else: cells.append(f"{m[i]:.3f} ({m[i] / ref:.2f}×)")
    loc = m["sfs-local"]
    ratio = f"{ref / loc:.2f}" if ref and loc else "-"
    print(f"| {names[wl]} | " + " | ".join(cells) + f" | {ratio} |")
PY
)
say "$table"
[ -n "${MARKDOWN:-}" ] && printf '%s\n' "$table" >"$MARKDOWN"
umount "$S/gv" 2>/dev/null
exit 0
