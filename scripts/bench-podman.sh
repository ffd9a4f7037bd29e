#!/usr/bin/env bash
# scripts/bench-podman.sh (also `scripts/bench.sh --podman [OPTIONS]`): real container
# workloads on a Debian 12 minbase image in podman, with four storages: stratafs,
# fuse-overlayfs 1.10 (/usr/bin/fuse-overlayfs) and fuse-overlayfs 2.0 (the Rust crate,
# `cargo install fuse-overlayfs`) as the overlay driver's mount_program, and the native
# overlay driver (the kernel overlayfs); rootful and rootless (the user stratafs-podman).
#
#   scripts/bench-podman.sh [--runs N] [--drivers native,stratafs,stratafs-uring,stratafs-classic,fo110,fo2]
#                           [--modes rootful,rootless] [--markdown FILE] [--report]
#
# Run as root from the repository. Each cell (mode, driver, run) starts from an empty private
# podman storage (--root/--runroot under a scratch directory in /var/tmp; the host's storage
# is never touched) and times:
#   import   podman import of the Debian minbase tarball (scripts/podman-lib.sh's, cached in
#            /var/cache/stratafs/)
#   untar    in a container: tar -xpf of that tarball (6,676 entries, 122 MiB; /dev left out)
#            into /x; the tarball is bind-mounted read-only
#   apt      in a container: apt-get install -y --no-install-recommends python3 git make gcc
#            libc6-dev, the install part only. The network is kept out: the .debs are fetched
#            once into a host cache directory before any timing and bind-mounted on
#            /var/cache/apt/archives in every container (so apt downloads nothing), and the
#            package lists of that fetch are unpacked into the container's /var/lib/apt/lists
#            (plus `apt-cache gencaches`) before the timing, instead of an apt-get update.
#            The timed command is `podman exec CONTAINER apt-get install ...`.
#   commit   podman commit of the (stopped) apt container
#   build    podman build of the 12-step Containerfile of scripts/podman-lib.sh FROM the
#            committed image (its step 10 removes git), the archives bind-mounted as above
# stratafs-uring and stratafs-classic are stratafs with `-o io_uring` and `-o noio_uring` (a
# wrapper as mount_program); with stratafs-uring among the drivers the fuse module's
# enable_uring is Y for the run (the old value back at exit), so plain `stratafs` (which
# takes the ring when the kernel offers it) is then on the ring too.
# No deletions while timing: nothing a cell makes (containers, images, its storage) is
# removed before the whole run ends; the scratch directory goes at exit. On an ext4 without
# a journal (this machine kind's root filesystem) a new inode is not given a number freed
# less than 60 s before (5 more minutes while its inode table block is dirty): each create
# then reads through the inode table past every recently freed number, and a cell that
# followed a removal (the untar container's 6,676 entries, or the previous cell's storage)
# spent up to 40 % of its daemon's CPU in ext4's inode allocator (perf, 2026-12-07).
# Drivers take turns in each run, rootful then rootless, the order rotated by one each run;
# the table gives the medians and the ratios. With stratafs the daemon's own counters
# (src/stats.rs: getfattr -n user.stratafs.stats on the container's root mount; reset before
# each timed command) give the FUSE requests of the untar and of the apt install, by kind.
#
# fuse-overlayfs 2.0 is installed, if missing, with `cargo install --root DIR/cargo` (DIR:
# $STRATAFS_BENCH_DIR or /var/tmp/stratafs-bench, as scripts/bench.sh does), not into
# ~/.cargo/bin: its binary is also called fuse-overlayfs, and ~/.cargo/bin comes first in
# root's PATH, where the side-by-side tests look for fuse-overlayfs 1.10.
# Output: the table on stdout and in FILE (--markdown; default target/bench-podman.md); raw
# figures in target/bench-podman{,-counts,-why}.tsv, written as the run goes: --report makes
# the tables again from them (after an interrupted run, say) without running anything.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 1
# shellcheck source=scripts/common.sh
. scripts/common.sh
# shellcheck source=scripts/podman-lib.sh
. scripts/podman-lib.sh

report_only=0 runs=3 drivers="native stratafs fo110 fo2" modes="rootful rootless" markdown="$repo/target/bench-podman.md"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift ;;
    --runs=*) runs=${1#*=} ;;
    --drivers) drivers=$(tr ',' ' ' <<<"$2"); shift ;;
    --drivers=*) drivers=$(tr ',' ' ' <<<"${1#*=}") ;;
    --modes) modes=$(tr ',' ' ' <<<"$2"); shift ;;
    --modes=*) modes=$(tr ',' ' ' <<<"${1#*=}") ;;
    --markdown) markdown=$2; shift ;;
    --markdown=*) markdown=${1#*=} ;;
    --report) report_only=1 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac
  shift
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive number"
# Raw figures, written as the run goes (--report makes the tables again from them).
results="$repo/target/bench-podman.tsv" counts="$repo/target/bench-podman-counts.tsv" why="$repo/target/bench-podman-why.tsv"
for d in $drivers; do case "$d" in native | stratafs | stratafs-uring | stratafs-classic | fo110 | fo2) ;; *) die "unknown driver $d" ;; esac; done
for m in $modes; do case "$m" in rootful | rootless) ;; *) die "unknown mode $m" ;; esac; done
# report: the tables, from the raw figures.
report() {
  python3 - "$results" "$counts" "$markdown" "$drivers" "$modes" "$why" <<'EOF' || die "the report failed"
import sys, statistics, collections
res, cnt, md, drivers, modes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(), sys.argv[5].split()
vals, fails = collections.defaultdict(list), collections.Counter()
for line in open(res):
    mode, drv, run, wl, v = line.rstrip("\n").split("\t")
    if v == "fail": fails[mode, drv, wl] += 1
    else: vals[mode, drv, wl].append(float(v))
label = {"native": "native overlay (kernel)", "stratafs": "stratafs", "stratafs-uring": "stratafs io_uring", "stratafs-classic": "stratafs /dev/fuse",
         "fo110": "fuse-overlayfs 1.10", "fo2": "fuse-overlayfs 2.0"}
wls = [("import", "podman import"), ("untar", "untar of the rootfs tarball in a container"),
       ("apt", "apt-get install (install part)"), ("commit", "podman commit"), ("build", "podman build, 12 steps")]
med = lambda m, d, w: statistics.median(vals[m, d, w]) if vals.get((m, d, w)) else None
out = []
for mode in modes:
    n = max((len(v) for (m, d, w), v in vals.items() if m == mode), default=0)
    out.append(f"**{mode}** (median of {n}, seconds; in brackets: × the native driver; last columns: how many times faster stratafs is)")
    out.append("")
    head = ["workload"] + [label[d] for d in drivers]
    extra = [d for d in ("fo110", "fo2") if d in drivers and "stratafs" in drivers]
    head += [f"{label[e]} ÷ stratafs" for e in extra]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for w, wl in wls:
        ref = med(mode, "native", w)
        row = [wl]
        for d in drivers:
            v = med(mode, d, w)
            if v is None:
                row.append("fail" if fails[mode, d, w] else "–"); continue
            s = f"{v:.2f}"
            if d != "native" and ref: s += f" ({v / ref:.2f}×)"
            if fails[mode, d, w]: s += f" [{fails[mode, d, w]} failed]"
            row.append(s)
        s = med(mode, "stratafs", w)
        for e in extra:
            o = med(mode, e, w)
            row.append(f"{o / s:.2f}×" if s and o else "–")
        out.append("| " + " | ".join(row) + " |")
    out.append("")
# request counts: median over the runs, per kind
c = collections.defaultdict(list)
seen = []
for line in open(cnt):
    p = line.rstrip("\n").split("\t")
    if len(p) == 5: p.insert(1, "stratafs") # written before the driver was recorded
    mode, drv, run, wl, op, v = p
    if not v.isdigit(): continue # the "transport" line
    key = mode if drv == "stratafs" else f"{mode}, {label.get(drv, drv)}"
    c[key, wl, op].append(int(v))
    if (key, wl) not in seen: seen.append((key, wl))
cols = [(m, w) for m0 in modes for w in ("untar", "apt") for (m, w1) in seen if w1 == w and m.split(",")[0] == m0]
if cols:
    ops = []
    for (m, w, op) in c:
        if op not in ops: ops.append(op)
    ops = [o for o in ops if o != "total" and any(statistics.median(c[m, w, o]) > 0 for m, w in cols if (m, w, o) in c)]
    ops.sort(key=lambda o: -max(statistics.median(c.get((m, w, o), [0])) for m, w in cols))
    out.append("**FUSE requests answered by stratafs** (its counters, median of the runs; untar: 6,676 entries)")
    out.append("")
    out.append("| request | " + " | ".join(f"{w} ({m})" for m, w in cols) + " |")
    out.append("|---|" + "---|" * len(cols))
    for o in ops + ["total"]:
        out.append(f"| {o} | " + " | ".join(str(int(statistics.median(c.get((m, w, o), [0])))) for m, w in cols) + " |")
    out.append("")
why = {}
import os
for line in (open(sys.argv[6]) if os.path.exists(sys.argv[6]) else []):
    p = line.rstrip("\n").split("\t", 3)
    if len(p) == 4: why.setdefault((p[0], p[1], p[2]), p[3])
if why:
    out.append("Failures (the first message of each):")
    out.append("")
    for (m, d, w), msg in why.items():
        out.append(f"- {m} {label[d]} {w}: `{msg.strip()}`")
    out.append("")
text = "\n".join(out)
print(text)
open(md, "w").write(text + "\n")
EOF
}
if [ "$report_only" = 1 ]; then
  report
  exit 0
fi
require_root "scripts/bench-podman.sh"

ensure_packages podman runc uidmap catatonit debootstrap fuse3 fuse-overlayfs attr python3-minimal >/dev/null ||
  die "could not install podman and the rest"
bin=${STRATAFS_BIN:-$repo/target/release/stratafs}
if [ -z "${STRATAFS_BIN:-}" ]; then
  require_cargo
  cargo build --release -q || die "cargo build --release failed"
fi
bench_dir=${STRATAFS_BENCH_DIR:-/var/tmp/stratafs-bench}
fo2=${FO2_BIN:-$bench_dir/cargo/bin/fuse-overlayfs}
case " $drivers " in
  *" fo2 "*)
    if [ ! -x "$fo2" ]; then
      section "fuse-overlayfs 2.0: cargo install --root $bench_dir/cargo fuse-overlayfs"
      mkdir -p "$bench_dir"
      require_cargo
      cargo install --root "$bench_dir/cargo" fuse-overlayfs >"$bench_dir/cargo-install.log" 2>&1 ||
        { tail -n 5 "$bench_dir/cargo-install.log"; die "cargo install fuse-overlayfs failed"; }
    fi ;;
esac
user=${STRATAFS_PODMAN_USER:-stratafs-podman}

now() { printf '%s' "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }

# (podman refuses a runroot path longer than 50 characters: short names)
scratch=$(mktemp -d /var/tmp/sbp.XXXXXX)
chmod 0755 "$scratch"
fuse_mode_restore= uring_restore=
cleanup() {
  local rc=$? f
  while IFS= read -r f; do
    [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done < <(find "$scratch" -name pause.pid 2>/dev/null)
  unmount_below "$scratch"
  remove_scratch "$scratch" || note "left $scratch behind"
  [ -n "$fuse_mode_restore" ] && chmod "$fuse_mode_restore" /dev/fuse
  [ -n "$uring_restore" ] && printf '%s\n' "$uring_restore" >/sys/module/fuse/parameters/enable_uring
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The mount programs, world-readable copies in the scratch directory (the rootless user runs them).
install -m 0755 "$bin" "$scratch/stratafs"
case " $drivers " in *" fo2 "*) install -m 0755 "$fo2" "$scratch/fuse-overlayfs-2" ;; esac
for t in uring:io_uring classic:noio_uring; do
  printf '#!/bin/sh\nexec %s -o %s "$@"\n' "$scratch/stratafs" "${t#*:}" >"$scratch/stratafs-${t%%:*}"
  chmod 0755 "$scratch/stratafs-${t%%:*}"
done
case " $drivers " in
  *" stratafs-uring "*)
    p=/sys/module/fuse/parameters/enable_uring
    [ -w "$p" ] || die "stratafs-uring: $p is missing (a kernel without FUSE over io_uring)"
    uring_restore=$(cat "$p")
    printf 'Y\n' >"$p" || die "cannot set $p" ;;
esac
mount_program() {
  case "$1" in
    stratafs | stratafs-uring | stratafs-classic) echo "$scratch/$1" ;; fo110) echo /usr/bin/fuse-overlayfs ;; fo2) echo "$scratch/fuse-overlayfs-2" ;;
  esac
}
pd_driver() { case "$1" in native) echo native ;; *) echo fuse-overlayfs ;; esac; }

section "Set-up"
pd_debian_tarball "$scratch" || die "no Debian minbase tarball"
say "image: $PD_TARBALL_NOTE"
install -d -m 0755 "$scratch/img"
ln "$PD_TARBALL" "$scratch/img/debian.tar" 2>/dev/null || cp "$PD_TARBALL" "$scratch/img/debian.tar"
chmod a+r "$scratch/img/debian.tar"
case " $modes " in
  *" rootless "*)
    pd_rootless_user "$user"
    fmode=$(stat -c %a /dev/fuse)
    if [ "$fmode" != 666 ]; then
      say "NOTE: /dev/fuse is mode $fmode; 0666 for the rootless cells (restored at the end)"
      chmod 0666 /dev/fuse
      fuse_mode_restore=$fmode
    fi ;;
esac
say "stratafs: $bin ($(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo ', src modified'))"
say "fuse-overlayfs 1.10: $(/usr/bin/fuse-overlayfs --version 2>&1 | grep -m1 '^fuse-overlayfs')"
case " $drivers " in *" fo2 "*) say "fuse-overlayfs 2.0: $fo2 ($("$fo2" --version 2>&1 | head -n 1))" ;; esac
say "podman: $(podman --version); load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# The .debs and package lists, once, outside any timing (native driver; storage thrown away).
archives="$scratch/archives"
mkdir -p "$archives" "$scratch/lists"
t0=$(now)
pd_set_podman rootful native "$scratch/fill"
if ! { wl_import "$PD_TARBALL" localhost/debian &&
  "${pm[@]}" run --network host "${PD_RUNARGS[@]}" -v "$archives:/var/cache/apt/archives" \
    -v "$scratch/lists:/out" -e DEBIAN_FRONTEND=noninteractive localhost/debian sh -c \
    "apt-get update -q && apt-get install -y -q --download-only --no-install-recommends $PD_APT_BIG bc &&
     tar -C /var/lib/apt/lists --exclude=lock --exclude=partial -cf /out/lists.tar ."; } >"$scratch/fill.out" 2>&1; then
  tail -n 5 "$scratch/fill.out"
  die "could not fetch the packages"
fi
unmount_below "$scratch/fill"
# apt_cache_reset: the cache as the fill left it, before every cell: apt (as the container's
# root, which is the user itself when rootless) takes a lock in it and makes partial/ there
# (owned by _apt), so a rootless apt cannot use what a rootful one left.
apt_cache_reset() {
  rm -rf "$archives/partial" "$archives/lock"
  chown -R "$user:" "$archives" 2>/dev/null
  chmod -R a+rX "$archives"
}
apt_cache_reset
chmod -R a+rX "$scratch/lists"
say "fetched $(find "$archives" -name '*.deb' | wc -l) .debs ($(du -sm "$archives" | cut -f1) MiB) and the package lists in $(secs "$t0") s"
pd_write_build_context "$scratch/build" localhost/pd-apt git
PD_BUILD_ARGS=(-v "$archives:/var/cache/apt/archives")

mkdir -p "$repo/target"
: >"$results"
: >"$counts"
: >"$why"

# stats MODE CONTAINER reset|read: the stratafs counters of the container's root mount.
stats() {
  local mode=$1 c=$2 what=$3 merged
  merged=$("${pm[@]}" inspect -f '{{.GraphDriver.Data.MergedDir}}' "$c") || return 1
  local cmd=(getfattr --absolute-names --only-values -n user.stratafs.stats "$merged")
  [ "$what" = reset ] && cmd=(setfattr -n user.stratafs.stats -v reset "$merged")
  if [ "$mode" = rootless ]; then "${pm[@]}" unshare "${cmd[@]}"; else "${cmd[@]}"; fi
}
# timed MODE DRIVER RUN WORKLOAD CMD...: runs CMD, appends "MODE DRIVER RUN WORKLOAD SECS|fail"
timed() {
  local mode=$1 driver=$2 run=$3 wl=$4 t0 rc out="$scratch/$1-$2-$3-$4.out"
  shift 4
  t0=$(now)
  "$@" >"$out" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then
    printf '%s\t%s\t%s\t%s\t%s\n' "$mode" "$driver" "$run" "$wl" "$(secs "$t0")" >>"$results"
    say "  $mode $driver run $run: $wl $(secs "$t0") s"
  else
    printf '%s\t%s\t%s\t%s\tfail\n' "$mode" "$driver" "$run" "$wl" >>"$results"
    tail -n 1 "$out" | cut -c1-300 | sed "s/^/$mode\t$driver\t$wl\t/" >>"$why"
    say "  $mode $driver run $run: $wl FAILED (exit $rc):"
    tail -n 3 "$out" | cut -c1-300 | sed 's/^/    | /'
  fi
  return $rc
}
# counted MODE DRIVER RUN WORKLOAD CONTAINER CMD...: timed, with stratafs's counters around it
counted() {
  local mode=$1 driver=$2 run=$3 wl=$4 c=$5 rc
  shift 5
  case "$driver" in stratafs*) stats "$mode" "$c" reset || note "could not reset the counters" ;; esac
  timed "$mode" "$driver" "$run" "$wl" "$@"
  rc=$?
  case "$driver" in
    stratafs*) stats "$mode" "$c" read 2>/dev/null | awk -v p="$mode	$driver	$run	$wl" 'NF == 2 { print p "\t" $1 "\t" $2 }' >>"$counts" ;;
  esac
  return $rc
}

cell() { # MODE DRIVER RUN N (N: the cell's number, its storage is $scratch/cN)
  local mode=$1 driver=$2 run=$3 home="$scratch/c$4" f
  pd_set_podman "$mode" "$(pd_driver "$driver")" "$home" "$(mount_program "$driver")" "$user"
  local run_c=("${pm[@]}" run -d --network host "${PD_RUNARGS[@]}" -e DEBIAN_FRONTEND=noninteractive)
  apt_cache_reset
  timed "$mode" "$driver" "$run" import wl_import "$PD_TARBALL" localhost/debian || return
  # untar
  if "${run_c[@]}" --name bench-untar -v "$scratch/img:/img:ro" localhost/debian sleep infinity >/dev/null 2>"$home.err"; then
    counted "$mode" "$driver" "$run" untar bench-untar \
      "${pm[@]}" exec bench-untar sh -c 'mkdir /x && tar -xpf /img/debian.tar -C /x --exclude=./dev/*'
    "${pm[@]}" stop -t 0 bench-untar >/dev/null 2>&1
  else
    say "  $mode $driver: the untar container did not start: $(tail -n 1 "$home.err" | cut -c1-300)"
  fi
  # apt-get install, commit, build
  if "${run_c[@]}" --name bench-apt -v "$archives:/var/cache/apt/archives" -v "$scratch/lists:/lists:ro" \
    localhost/debian sleep infinity >/dev/null 2>"$home.err" &&
    "${pm[@]}" exec bench-apt sh -c 'tar -xf /lists/lists.tar -C /var/lib/apt/lists && apt-cache gencaches' >"$home.err" 2>&1; then
    # shellcheck disable=SC2086 # PD_APT_BIG: a list of packages
    counted "$mode" "$driver" "$run" apt bench-apt \
      "${pm[@]}" exec bench-apt apt-get install -y -q --no-install-recommends $PD_APT_BIG &&
      "${pm[@]}" stop -t 0 bench-apt >/dev/null 2>&1 &&
      timed "$mode" "$driver" "$run" commit wl_commit bench-apt localhost/pd-apt &&
      timed "$mode" "$driver" "$run" build \
        wl_build "$scratch/build" localhost/pd-built
  else
    # (fuse-overlayfs 2.0.0: `apt-cache gencaches` fails with "Unable to determine file size
    # for fd 6 - fstat (2: No such file or directory)"; then there is nothing to commit or build)
    printf '%s\t%s\t%s\tapt\tfail\n' "$mode" "$driver" "$run" >>"$results"
    say "  $mode $driver run $run: apt FAILED: preparing the apt container: $(tail -n 1 "$home.err" | cut -c1-300)"
    tail -n 1 "$home.err" | cut -c1-300 | sed "s/^/$mode\t$driver\tapt\t/" >>"$why"
  fi
  # Stopped, not removed: the storage goes with the scratch directory at exit (see
  # "No deletions while timing" above).
  "${pm[@]}" stop -a -t 0 >/dev/null 2>&1
  while IFS= read -r f; do
    [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done < <(find "$home" -name pause.pid 2>/dev/null)
  unmount_below "$home"
  rm -f "$home.err"
}

t_all=$(now)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
date0=$(date -u '+%Y-%m-%d %H:%M')
read -ra dl <<<"$drivers"
ncell=0
for ((r = 1; r <= runs; r++)); do
  section "run $r of $runs (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  for m in $modes; do
    n=${#dl[@]}
    for ((i = 0; i < n; i++)); do
      ncell=$((ncell + 1))
      cell "$m" "${dl[$(((i + r - 1) % n))]}" "$r" "$ncell"
    done
  done
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)

section "Results"
report
{
  say ""
  say "Command: scripts/bench-podman.sh --runs $runs --drivers ${drivers// /,} --modes ${modes// /,}; stratafs $(git rev-parse --short HEAD); $date0 UTC, took $(awk -v a="$t_all" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", b - a }') s; load average $load0 at the start, $load1 at the end."
} | tee -a "$markdown"
say "raw: target/bench-podman.tsv, target/bench-podman-counts.tsv; markdown: $markdown"
