#!/usr/bin/env bash
# scripts/bench.sh: stratafs against the kernel overlayfs, fuse-overlayfs 2.0 (Rust, crates.io),
# fuse-overlayfs 1.10 (C, Debian) and unionfs-fuse (cow mode) on one realistic layer stack.
#
#   scripts/bench.sh [--quick] [--runs N] [--only W1,W2] [--impl I1,I2] [--no-rootless]
#                    [--upper-on-disk] [--ro] [--markdown FILE] [--dir DIR]
#   scripts/bench.sh --podman [OPTIONS]   real container workloads in podman (apt-get install,
#                    a 12-step build, commit, untar; rootful and rootless) with stratafs,
#                    fuse-overlayfs 1.10 and 2.0 and the native overlay driver: runs
#                    scripts/bench-podman.sh OPTIONS (see its --help)
#
# Run as root from the repository root (it mounts, drops the page cache and installs packages).
#
# The dataset is built once into DIR (default /var/tmp/stratafs-bench, or $STRATAFS_BENCH_DIR)
# and reused by later runs:
#   base/    a Debian 12 `debootstrap --variant=minbase` root file system (with build-essential,
#            python3, perl, git and the kernel headers: ~40k entries; a copy of the host's /usr
#            if debootstrap fails), plus base/bench/: a 1 GiB and a 3 GiB file of random data,
#            2,000 4-KiB files to append to, 2,000 empty files for stat probes, a C project
#   layer2/  a second layer written by the kernel overlayfs over base/: modified files,
#            deleted files (whiteouts), a removed and re-created directory (opaque), new files
#   small.tar  ~20,000 small files to untar
# The stack is lowerdir=layer2:base. Every measurement mounts afresh with an empty upper;
# implementations take turns (A B C A B C ...) and the table shows the median of the runs.
#
# Workloads (names for --only):
#   walk_cold     find -printf '%p %s %m %u %T@' over the whole mount after drop_caches (echo 3)
#   walk_warm     the same walk, second time on the same mount
#   ls_lR         ls -lR of the whole mount, fresh mount, host caches warm
#   read_all      tar cf - of every file but the big ones, piped to /dev/null (GNU tar skips
#                 reading when its output *is* /dev/null, hence the pipe); the layers are read
#                 into the page cache first, outside the timing
#   untar         tar xf small.tar (~20,000 files) into a new directory of the mount
#   append        append one byte to each of 2,000 lower files (copy-up of each)
#   append_hl     append one byte to one name of each of 2,000 lower files that have two names
#                 (copy-up of a hard link: through workdir/index with index=on)
#   write_1b      write 1 byte in the middle of the 1 GiB lower file (copy-up of 1 GiB; the
#                 lower file is read into the page cache first, outside the timing)
#   rm_rf         rm -rf of a lower subtree (the kernel headers' include/, ~6,000 entries)
#   fio_write     fio sequential buffered write of a new 1 GiB file, 1 MiB blocks
#   fio_read      fio sequential read of the 1 GiB lower file (host page cache warm), 1 MiB blocks
#   fio_randread  fio 4 KiB random reads, 128 MiB worth, from the 1 GiB lower file (cache warm)
#   build         make -j2 of a 64-file C project whose sources are in the lower layer
#   fsx           fsx (crates.io 0.2.0, installed with cargo if missing) -N 20000 -S 1 -f
#                 tests/fsx/long.toml on a new file: the time of 20,000 random reads, writes,
#                 truncates and mapped writes (the ratio to the kernel is the inverse of the
#                 ops/s ratio; not part of the default set)
#   stall         append 1 byte to the 3 GiB lower file (copy-up; page cache warm) while
#                 stat(2)ing a not yet looked-up file every 20 ms; reports the slowest stat
#                 and the copy-up time
#   rss           daemon RSS at start, after a find walk, after `echo 2 > drop_caches`
# Implementations (--impl): kernel, stratafs (on /dev/fuse: -o noio_uring), stratafs-uring
# (-o io_uring: FUSE over io_uring; the script sets the fuse module's enable_uring to Y for the
# run and puts the old value back), stratafs-lp (stratafs -o lower_passthrough: lower files read
# through FUSE passthrough too; as root only, the option does nothing rootless), stratafs-index
# (stratafs -o index=on), stratafs-export (stratafs -o nfs_export=on), fo2, fo110, unionfs.
# Rootless (unshare -Urm, as root mapped to root in a new user namespace; no passthrough
# there): walk_warm, untar, append, fio_write, fio_read for stratafs, fuse-overlayfs 1.10 and
# the kernel overlayfs (userxattr) as the reference. /dev/fuse is used as it is (mode 0666 on
# Debian); nothing is chmod-ed.
#
# Uppers and workdirs go on a tmpfs the script mounts on DIR/run (--upper-on-disk: on DIR's own
# file system instead); the lowers stay on DIR's file system.
# --ro: every implementation mounts the stack read-only (`-o ro`, as podman's diff mounts):
# only the reading workloads (walk_cold, walk_warm, ls_lR, read_all, fio_read, fio_randread,
# rss; by default read_all, fio_read, fio_randread), where stratafs passes lower files
# through by default.
# --quick: small files (64/192 MiB big files, 200 appends, 2,000-file tarball, 16-file build),
# one run: a smoke test, not numbers. The mounts live under DIR/run/ and are the only ones
# this script ever unmounts; an EXIT trap unmounts them even on failure.
# --gluster [--runs N] [--markdown FILE]: the GlusterFS table instead (scripts/bench-gluster.sh).

set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SELF="$HERE/bench.sh"
# shellcheck source=scripts/common.sh
. "$HERE/common.sh"

ALL_IMPLS="kernel stratafs stratafs-uring stratafs-lp stratafs-index stratafs-export fo2 fo110 unionfs"
ALL_WORKLOADS="walk_cold walk_warm ls_lR read_all untar append append_hl write_1b rm_rf fio_write fio_read fio_randread build stall rss"
ROOTLESS_IMPLS="kernel stratafs stratafs-uring fo2 fo110"
ROOTLESS_WORKLOADS="walk_warm untar append fio_write fio_read"
RO_WORKLOADS="walk_cold walk_warm ls_lR read_all fio_read fio_randread rss"

# ---------------------------------------------------------------- configuration (exported so
# that the rootless cells, which re-run this script inside unshare, see the same values)
BENCH_DIR="${STRATAFS_BENCH_DIR:-/var/tmp/stratafs-bench}"
export STRATAFS_BIN="${STRATAFS_BIN:-$ROOT/target/release/stratafs}"
export FO110_BIN="${FO110_BIN:-/usr/bin/fuse-overlayfs}"
export UNIONFS_BIN="${UNIONFS_BIN:-/usr/bin/unionfs-fuse}"
QUICK="${STRATAFS_BENCH_QUICK:-0}"
RUNS=3
ONLY=""
IMPLS=""
ROOTLESS=1
MARKDOWN=""
UPPER_ON_DISK=0

impl_label() {
  case "$1" in
    kernel) echo "kernel overlayfs" ;;
    stratafs) echo "stratafs" ;;
    stratafs-uring) echo "stratafs -o io_uring" ;;
    stratafs-lp) echo "stratafs -o lower_passthrough" ;;
    stratafs-index) echo "stratafs -o index=on" ;;
    stratafs-export) echo "stratafs -o nfs_export=on" ;;
    fo2) echo "fuse-overlayfs 2.0" ;;
    fo110) echo "fuse-overlayfs 1.10" ;;
    unionfs) echo "unionfs-fuse" ;;
    *) echo "$1" ;;
  esac
}

# enable_uring: the fuse module's enable_uring to Y for this run (the old value back at exit).
URING_PARAM=/sys/module/fuse/parameters/enable_uring
URING_OLD=""
enable_uring() {
  [ -w "$URING_PARAM" ] || die "stratafs-uring: $URING_PARAM is missing (a kernel without FUSE over io_uring)"
  URING_OLD=$(cat "$URING_PARAM")
  echo Y >"$URING_PARAM" || die "cannot set $URING_PARAM"
}
restore_uring() { [ -z "$URING_OLD" ] || echo "$URING_OLD" >"$URING_PARAM"; }

# ---------------------------------------------------------------- small helpers
now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# The mounts of this script: everything under $BENCH_DIR/run and the layer2 build mount.
CUR_MNT=""
STRATAFS_PID=""
RUN_TMPFS=""
unmount_mine() {
  if [ -n "$CUR_MNT" ]; then
    stop_stratafs "$CUR_MNT" # unmounts, then waits for (only) the daemon we started
    CUR_MNT=""
  fi
}
unmount_all_mine() {
  unmount_mine
  if [ -n "$RUN_TMPFS" ] && is_mounted "$RUN_TMPFS"; then
    umount "$RUN_TMPFS" || umount -l "$RUN_TMPFS" || note "could not unmount $RUN_TMPFS"
  fi
  RUN_TMPFS=""
}
trap 'unmount_all_mine; restore_uring' EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- dataset
set_sizes() {
  if [ "$QUICK" = 1 ]; then
    export DATA="$BENCH_DIR/data" BENCHSUB="bench-quick"
    export BIG1=$((64 << 20)) BIG3=$((192 << 20)) NAPPEND=200 NTAR=2000 NCFILES=16 FIOSIZE=64M FIOIO=16M
  else
    export DATA="$BENCH_DIR/data" BENCHSUB="bench"
    export BIG1=$((1 << 30)) BIG3=$((3 << 30)) NAPPEND=2000 NTAR=20000 NCFILES=64 FIOSIZE=1G FIOIO=128M
  fi
  export NSTAT=2000
  # rm -rf target: the kernel headers' include/ tree (~6,000 entries), else usr/share/perl
  local inc
  inc=$(cd "$DATA/base" 2>/dev/null && compgen -G 'usr/src/linux-headers-*-common/include' | head -n 1)
  export RM_SUBTREE="${inc:-usr/share/perl}"
}

build_rootfs() {
  local dst="$DATA/base" tmp="$BENCH_DIR/rootfs.tmp"
  [ -e "$dst/.bench-rootfs-ok" ] && return 0
  section "dataset: Debian 12 minbase root file system"
  if [ -d "$BENCH_DIR/rootfs" ] && [ -e "$BENCH_DIR/rootfs/.bench-rootfs-ok" ]; then
    :
  else
    ensure_packages debootstrap
    rm -rf --one-file-system "$tmp"
    if debootstrap --variant=minbase --include=build-essential,python3,perl,git,linux-headers-amd64 \
      bookworm "$tmp" http://deb.debian.org/debian >"$BENCH_DIR/debootstrap.log" 2>&1; then
      say "debootstrap: $(find "$tmp" -xdev | wc -l) entries"
    else
      note "debootstrap failed (see $BENCH_DIR/debootstrap.log); using a copy of the host's /usr instead"
      rm -rf --one-file-system "$tmp"
      mkdir -p "$tmp"
      cp -a /usr "$tmp/usr"
      cp -a /etc "$tmp/etc" 2>/dev/null || true
    fi
    # Device nodes of a debootstrap /dev would make tar and find behave differently per
    # implementation (unionfs-fuse, rootless); a container rootfs has an empty /dev anyway.
    rm -rf --one-file-system "${tmp:?}/dev" "$tmp/proc" "$tmp/sys"
    mkdir -p "$tmp/dev" "$tmp/proc" "$tmp/sys"
    rm -rf --one-file-system "$BENCH_DIR/rootfs"
    mv "$tmp" "$BENCH_DIR/rootfs"
    touch "$BENCH_DIR/rootfs/.bench-rootfs-ok"
  fi
  rm -rf --one-file-system "$dst"
  mkdir -p "$DATA"
  cp -a "$BENCH_DIR/rootfs" "$dst"
  touch "$dst/.bench-rootfs-ok"
}

gen_cproject() {
  local dir="$1" n="$2"
  python3 - "$dir" "$n" <<'EOF'
import os, sys, random
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d + "/include", exist_ok=True)
rnd = random.Random(42)
with open(d + "/include/util.h", "w") as f:
    f.write("#pragma once\n#include <stdint.h>\n#include <stddef.h>\n#include <string.h>\n#include <stdio.h>\n")
    f.write("#define ROTL(x, r) (((x) << (r)) | ((x) >> (64 - (r))))\n")
    f.write("static inline uint64_t mix(uint64_t x) { x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; return x; }\n")
    for i in range(n):
        f.write(f"uint64_t unit{i}_run(uint64_t seed);\n")
for i in range(n):
    with open(f"{d}/unit{i}.c", "w") as f:
        f.write('#include "util.h"\n\n')
        for j in range(12):
            a, b, c = rnd.randrange(1, 63), rnd.randrange(3, 97), rnd.randrange(2, 9)
            f.write(f"""static uint64_t f{j}(const uint64_t *v, size_t n, uint64_t k)
{{
    uint64_t acc = k;
    for (size_t i = 0; i < n; i++) {{
        uint64_t x = v[i] * {b}u + acc;
        switch ((x >> {c}) & 3) {{
        case 0: acc ^= ROTL(x, {a}); break;
        case 1: acc += mix(x) / (x | 1); break;
        case 2: acc -= x * {c}u; break;
        default: acc = mix(acc ^ x);
        }}
    }}
    return acc;
}}

""")
        f.write(f"uint64_t unit{i}_run(uint64_t seed)\n{{\n    uint64_t v[64];\n")
        f.write("    for (size_t i = 0; i < 64; i++) v[i] = mix(seed + i);\n    uint64_t r = seed;\n")
        for j in range(12):
            f.write(f"    r ^= f{j}(v, 64, r);\n")
        f.write("    return r;\n}\n")
with open(d + "/main.c", "w") as f:
    f.write('#include "util.h"\n\nint main(void)\n{\n    uint64_t r = 1;\n')
    for i in range(n):
        f.write(f"    r ^= unit{i}_run(r);\n")
    f.write('    printf("%llu\\n", (unsigned long long)r);\n    return 0;\n}\n')
with open(d + "/Makefile", "w") as f:
    f.write("CC ?= cc\nCFLAGS ?= -O2 -Wall -Iinclude\n")
    f.write("SRCS := main.c " + " ".join(f"unit{i}.c" for i in range(n)) + "\n")
    f.write("OBJS := $(SRCS:.c=.o)\n\napp: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n\n")
    f.write("%.o: %.c include/util.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n\n")
    f.write("clean:\n\trm -f app $(OBJS)\n")
EOF
}

gen_tarball() {
  local out="$1" n="$2"
  python3 - "$out" "$n" <<'EOF'
import io, os, sys, random, tarfile
out, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
alphabet = "abcdefghijklmnopqrstuvwxyz_ ;{}()\n"
per_dir = 100
with tarfile.open(out + ".tmp", "w", format=tarfile.GNU_FORMAT) as t:
    for d in range((n + per_dir - 1) // per_dir):
        ti = tarfile.TarInfo(f"src/d{d // 20:03d}/m{d:04d}")
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1700000000
        t.addfile(ti)
        for i in range(min(per_dir, n - d * per_dir)):
            size = min(int(rnd.lognormvariate(7.5, 1.0)), 65536)
            data = "".join(rnd.choice(alphabet) for _ in range(min(size, 512))).encode()
            data = (data * (size // max(len(data), 1) + 1))[:size]
            ti = tarfile.TarInfo(f"src/d{d // 20:03d}/m{d:04d}/f{i:03d}.c")
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1700000000
            t.addfile(ti, io.BytesIO(data))
os.rename(out + ".tmp", out)
EOF
}

build_bench_files() {
  local b="$DATA/base/$BENCHSUB" i
  [ -e "$b/.ok" ] && return 0
  section "dataset: $BENCHSUB/ (big files, append targets, stat probes, C project)"
  rm -rf --one-file-system "$b"
  mkdir -p "$b/append" "$b/stat"
  head -c "$BIG1" /dev/urandom >"$b/big1g"
  head -c "$BIG3" /dev/urandom >"$b/big3g"
  head -c $((4096 * NAPPEND)) /dev/urandom >"$b/append.src"
  for ((i = 0; i < NAPPEND; i++)); do
    dd if="$b/append.src" of="$b/append/a$(printf %04d "$i")" bs=4096 skip="$i" count=1 status=none
  done
  rm -f "$b/append.src"
  (cd "$b/stat" && for ((i = 0; i < NSTAT; i++)); do : >"s$(printf %04d "$i")"; done)
  gen_cproject "$b/cproj" "$NCFILES"
  (cd "$b/cproj" && make -s -j2 >/dev/null && make -s clean >/dev/null) || die "the C project does not build"
  sync
  touch "$b/.ok"
}

# Lower hard links for append_hl: NAPPEND files with a second name each. Added to an existing
# dataset without rebuilding it (nothing in layer2 refers to them).
build_hardlinks() {
  local d="$DATA/base/$BENCHSUB/hl" i n
  [ -e "$d/.ok" ] && return 0
  rm -rf --one-file-system "$d"
  mkdir -p "$d"
  for ((i = 0; i < NAPPEND; i++)); do
    n="$d/h$(printf %04d "$i")"
    printf 'hard link %d\n' "$i" >"$n"
    ln "$n" "$n.2"
  done
  touch "$d/.ok"
}

# layer2: written by the kernel overlayfs over base. Rebuilt whenever base/bench* changes,
# since overlay.origin markers refer to base's inodes.
build_layer2() {
  local l2="$DATA/layer2" w="$DATA/layer2.work" m="$DATA/layer2.mnt"
  [ -e "$DATA/.layer2-ok" ] && [ "$DATA/.layer2-ok" -nt "$DATA/base/$BENCHSUB/.ok" ] && return 0
  section "dataset: second layer written by the kernel overlayfs"
  rm -f "$DATA/.layer2-ok"
  rm -rf --one-file-system "$l2" "$w"
  mkdir -p "$l2" "$w" "$m"
  is_mounted "$m" && die "$m is already mounted"
  mount -t overlay overlay -o "lowerdir=$DATA/base,upperdir=$l2,workdir=$w" "$m" || die "cannot mount the kernel overlayfs"
  CUR_MNT="$m"
  (
    set -e
    cd "$m"
    # 300 modified files (copy-up), 500 deleted files (whiteouts), 50 chmods
    find usr/share/perl usr/lib/python3.11 -type f -name '*.p[my]' 2>/dev/null | sort | head -n 300 |
      while IFS= read -r f; do printf '# layer2\n' >>"$f"; done
    find usr/share/man usr/share/locale -type f 2>/dev/null | sort | head -n 500 | xargs -d '\n' rm -f
    find etc -maxdepth 2 -type f | sort | head -n 50 | xargs -d '\n' chmod u+w
    # an opaque directory: removed and created again
    if [ -d usr/share/zoneinfo/America ]; then
      rm -rf usr/share/zoneinfo/America
      mkdir usr/share/zoneinfo/America
      printf 'replaced in layer2\n' >usr/share/zoneinfo/America/README
    fi
    # renamed files and new files
    mkdir -p opt/layer2
    for d in $(seq -w 0 19); do
      mkdir -p "opt/layer2/d$d"
      for f in $(seq -w 0 49); do printf 'layer2 %s %s\n' "$d" "$f" >"opt/layer2/d$d/f$f"; done
    done
    for f in $(find usr/bin -maxdepth 1 -type f | sort | head -n 20); do mv "$f" "$f.renamed"; done
  ) || die "writing layer2 failed"
  unmount_mine
  rmdir "$m" 2>/dev/null || true
  rm -rf --one-file-system "$w"
  say "layer2: $(find "$l2" | wc -l) entries, $(find "$l2" -type c | wc -l) whiteouts, opaque dirs: $(getfattr -R -h -m trusted.overlay.opaque --absolute-names "$l2" 2>/dev/null | grep -c '^# file')"
  touch "$DATA/.layer2-ok"
}

build_dataset() {
  set_sizes
  mkdir -p "$BENCH_DIR"
  build_rootfs
  set_sizes
  build_bench_files
  build_hardlinks
  build_layer2
  local tarf="$DATA/small-$NTAR.tar"
  if [ ! -e "$tarf" ]; then
    section "dataset: $NTAR-file tarball"
    gen_tarball "$tarf" "$NTAR"
  fi
  export TARBALL="$tarf"
}

ensure_fo2() {
  FO2_BIN="$BENCH_DIR/cargo/bin/fuse-overlayfs"
  if [ ! -x "$FO2_BIN" ]; then
    section "fuse-overlayfs 2.0 (cargo install fuse-overlayfs)"
    if ! cargo install --root "$BENCH_DIR/cargo" fuse-overlayfs >"$BENCH_DIR/cargo-install.log" 2>&1; then
      FO2_NA="cargo install fuse-overlayfs failed (see $BENCH_DIR/cargo-install.log)"
      tail -n 5 "$BENCH_DIR/cargo-install.log" >&2
    fi
  fi
  export FO2_BIN
  if [ -x "$FO2_BIN" ]; then
    FO2_VERSION=$("$FO2_BIN" --version 2>&1 | head -n 1)
  fi
}

# ---------------------------------------------------------------- one measurement ("cell")
# mount_impl IMPL USERNS UPPER WORK MNT LOG: mounts lowerdir=layer2:base; sets STRATAFS_PID
# for the FUSE daemons (mount_stratafs from common.sh starts `BIN -f -o OPTS MNT`).
mount_impl() {
  local impl="$1" userns="$2" up="$3" wk="$4" mnt="$5" logf="$6"
  local lowers="$DATA/layer2:$DATA/base"
  local ovl="lowerdir=$lowers,upperdir=$up,workdir=$wk"
  [ "${STRATAFS_BENCH_RO:-0}" = 1 ] && ovl="$ovl,ro"
  STRATAFS_PID=""
  case "$impl" in
    kernel)
      local extra=""
      [ "$userns" = 1 ] && extra=",userxattr"
      mount -t overlay overlay -o "$ovl$extra" "$mnt" || return 1 ;;
    stratafs) mount_stratafs "$STRATAFS_BIN" "$ovl,noio_uring" "$mnt" "$logf" || return 1 ;;
    stratafs-uring) mount_stratafs "$STRATAFS_BIN" "$ovl,io_uring" "$mnt" "$logf" || return 1 ;;
    stratafs-lp) mount_stratafs "$STRATAFS_BIN" "$ovl,noio_uring,lower_passthrough" "$mnt" "$logf" || return 1 ;;
    stratafs-index) mount_stratafs "$STRATAFS_BIN" "$ovl,noio_uring,index=on" "$mnt" "$logf" || return 1 ;;
    stratafs-export) mount_stratafs "$STRATAFS_BIN" "$ovl,noio_uring,nfs_export=on" "$mnt" "$logf" || return 1 ;;
    fo2) mount_stratafs "$FO2_BIN" "$ovl" "$mnt" "$logf" || return 1 ;;
    fo110) mount_stratafs "$FO110_BIN" "$ovl" "$mnt" "$logf" || return 1 ;;
    unionfs) mount_stratafs "$UNIONFS_BIN" "cow,dirs=$up=RW:$DATA/layer2=RO:$DATA/base=RO" "$mnt" "$logf" || return 1 ;;
    *) return 1 ;;
  esac
  CUR_MNT="$mnt"
}

result() { printf 'R\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5"; }

# stratafs_stats MNT [reset]: the daemon's request counters (src/stats.rs) as one line
# "TRANSPORT TOTAL CLASSIC RING" (or, with reset, clears them).
stratafs_stats() {
  python3 - "$@" <<'EOF' 2>/dev/null
import os, sys
m = sys.argv[1]
if len(sys.argv) > 2:
    os.setxattr(m, "user.stratafs.stats", b"reset")
    sys.exit(0)
c = dict(l.split() for l in os.getxattr(m, "user.stratafs.stats").decode().splitlines())
print(c["transport"], c["total"], c.get("requests_classic", "-"), c.get("requests_io_uring", "-"))
EOF
}

rss_mb() {
  local kb
  kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null)
  [ -n "$kb" ] && awk -v k="$kb" 'BEGIN { printf "%.1f", k / 1024 }'
}

fio_run() { # fio_run NAME ARGS...: quiet, fails on error or after 600 s
  timeout 600 fio --name="$1" --output=/dev/null --fallocate=none --invalidate=0 --ioengine=psync "${@:2}"
}

STALL_PY='
import os, sys, time, subprocess
target, statdir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.stat(statdir)
t0 = time.monotonic()
p = subprocess.Popen(["sh", "-c", "printf x >> \"$0\"", target])
worst, probes, i = 0.0, 0, 0
time.sleep(0.02)
while p.poll() is None:
    a = time.monotonic()
    os.stat(os.path.join(statdir, "s%04d" % (i % n)))
    d = time.monotonic() - a
    worst, probes, i = max(worst, d), probes + 1, i + 1
    time.sleep(0.02)
t1 = time.monotonic()
if p.returncode != 0:
    sys.exit("append failed")
print("%.4f %.4f %d" % (worst, t1 - t0, probes))
'

# cell IMPL WORKLOAD RUN USERNS: prints result lines; logs to stderr.
cell() {
  local impl="$1" wl="$2" run="$3" userns="$4"
  local tag="$impl"
  [ "$userns" = 1 ] && tag="$impl@userns"
  local r="$BENCH_DIR/run/${tag//@/-}" t0 t1 ok=1 out
  local mnt="$r/mnt" up="$r/upper" wk="$r/work" logf="$r.log"
  local b="$mnt/$BENCHSUB" c0=$EPOCHREALTIME c1 c2
  remove_scratch "$r" || return 1
  mkdir -p "$mnt" "$up" "$wk"
  if ! mount_impl "$impl" "$userns" "$up" "$wk" "$mnt" "$logf"; then
    log "$tag: mount failed"
    result "$tag" "$wl" "$run" "$wl" fail
    return 0
  fi
  local T=600
  c1=$EPOCHREALTIME
  case "$wl" in
    walk_cold)
      sync -f "$DATA/base" 2>/dev/null
      echo 3 >/proc/sys/vm/drop_caches
      t0=$(now); timeout "$T" find "$mnt" -printf '%p %s %m %u %T@\n' >/dev/null || ok=0; t1=$(now) ;;
    walk_warm)
      find "$mnt" -printf '%p %s %m %u %T@\n' >/dev/null
      case "$impl" in stratafs*) stratafs_stats "$mnt" reset ;; esac
      t0=$(now); timeout "$T" find "$mnt" -printf '%p %s %m %u %T@\n' >/dev/null || ok=0; t1=$(now) ;;
    ls_lR)
      t0=$(now); timeout "$T" ls -lR "$mnt" >/dev/null 2>&1 || ok=0; t1=$(now) ;;
    read_all)
      # the lower files in the page cache (other processes may have dropped it)
      tar cf - -C "$DATA" --exclude="bench*/big*" base layer2 | cat >/dev/null
      t0=$(now)
      (cd "$mnt" && timeout "$T" tar cf - --exclude="./$BENCHSUB/big*" --exclude="./bench*/big*" . | cat >/dev/null) || ok=0
      t1=$(now) ;;
    untar)
      mkdir "$mnt/untar" || ok=0
      t0=$(now); timeout "$T" tar xf "$TARBALL" -C "$mnt/untar" || ok=0; t1=$(now) ;;
    append)
      t0=$(now)
      timeout "$T" bash -c 'for f in "$1"/a*; do printf x >>"$f" || exit 1; done' _ "$b/append" || ok=0
      t1=$(now) ;;
    append_hl)
      t0=$(now)
      timeout "$T" bash -c 'for f in "$1"/h????; do printf x >>"$f" || exit 1; done' _ "$b/hl" || ok=0
      t1=$(now) ;;
    write_1b)
      cat "$DATA/base/$BENCHSUB/big1g" >/dev/null # the lower in the page cache, as for fio_read
      t0=$(now)
      printf x | timeout "$T" dd of="$b/big1g" bs=1 seek=$((BIG1 / 2)) conv=notrunc status=none || ok=0
      t1=$(now) ;;
    rm_rf)
      t0=$(now); timeout "$T" rm -rf "$mnt/$RM_SUBTREE" || ok=0; t1=$(now)
      [ -e "$mnt/$RM_SUBTREE" ] && ok=0 ;;
    fio_write)
      t0=$(now); fio_run w --filename="$mnt/fio.dat" --rw=write --bs=1M --size="$FIOSIZE" || ok=0; t1=$(now) ;;
    fio_read)
      cat "$DATA/base/$BENCHSUB/big1g" >/dev/null
      t0=$(now); fio_run r --filename="$b/big1g" --readonly --rw=read --bs=1M --size="$FIOSIZE" || ok=0; t1=$(now) ;;
    fio_randread)
      cat "$DATA/base/$BENCHSUB/big1g" >/dev/null
      t0=$(now)
      fio_run rr --filename="$b/big1g" --readonly --rw=randread --bs=4k --size="$FIOSIZE" \
        --io_size="$FIOIO" --randrepeat=1 --norandommap || ok=0
      t1=$(now) ;;
    build)
      t0=$(now); timeout "$T" make -s -C "$b/cproj" -j2 >/dev/null 2>&1 || ok=0; t1=$(now)
      [ -x "$b/cproj/app" ] || ok=0 ;;
    fsx)
      t0=$(now)
      timeout "$T" fsx -q -N 20000 -S 1 -f "$ROOT/tests/fsx/long.toml" "$mnt/fsx.new" >"$r.fsx" 2>&1 || ok=0
      t1=$(now) ;;
    stall)
      cat "$DATA/base/$BENCHSUB/big3g" >/dev/null
      if out=$(timeout "$T" python3 -c "$STALL_PY" "$b/big3g" "$b/stat" "$NSTAT"); then
        result "$tag" stall_max "$run" stall_max "$(awk '{ print $1 }' <<<"$out")"
        result "$tag" copyup_3g "$run" copyup_3g "$(awk '{ print $2 }' <<<"$out")"
        log "$tag stall: worst stat $(awk '{ print $1 }' <<<"$out") s over $(awk '{ print $3 }' <<<"$out") probes, copy-up $(awk '{ print $2 }' <<<"$out") s"
      else
        result "$tag" stall_max "$run" stall_max fail
        result "$tag" copyup_3g "$run" copyup_3g fail
      fi
      ok=skip ;;
    rss)
      if [ -n "${STRATAFS_PID:-}" ]; then
        local r0 r1 r2
        r0=$(rss_mb "$STRATAFS_PID")
        find "$mnt" -printf '%p %s %m\n' >/dev/null
        r1=$(rss_mb "$STRATAFS_PID")
        echo 2 >/proc/sys/vm/drop_caches
        sleep 3
        r2=$(rss_mb "$STRATAFS_PID")
        result "$tag" rss_start "$run" rss "${r0:-fail}"
        result "$tag" rss_find "$run" rss "${r1:-fail}"
        result "$tag" rss_drop "$run" rss "${r2:-fail}"
        log "$tag rss: start $r0 MB, after find $r1 MB, after drop_caches $r2 MB"
      fi
      ok=skip ;;
    *) log "unknown workload $wl"; ok=0; t0=0; t1=0 ;;
  esac
  # The requests the workload cost and the transport that carried them (a mount meant for
  # the ring that fell back would show here): "C TAG WORKLOAD RUN TRANSPORT TOTAL CLASSIC RING"
  # (the report reads only the R lines).
  local counts=""
  case "$impl" in stratafs*) counts=$(stratafs_stats "$mnt") ;; esac
  [ -n "$counts" ] && printf 'C\t%s\t%s\t%s\t%s\n' "$tag" "$wl" "$run" "${counts// /$'\t'}"
  if [ "$ok" != skip ]; then
    if [ "$ok" = 1 ]; then
      result "$tag" "$wl" "$run" "$wl" "$(elapsed "$t0" "$t1")"
      log "$tag $wl run $run: $(elapsed "$t0" "$t1") s${counts:+ (requests: $counts)}"
    else
      result "$tag" "$wl" "$run" "$wl" fail
      log "$tag $wl run $run: FAILED (log: $logf)"
    fi
  fi
  local c3=$EPOCHREALTIME
  unmount_mine
  if is_mounted "$mnt"; then
    log "$mnt still mounted"
    return 1
  fi
  remove_scratch "$r"
  c2=$EPOCHREALTIME
  # Say so when mounting or cleaning up took long (a busy machine), to explain a long run.
  awk -v a="$c0" -v b="$c1" -v c="$c3" -v d="$c2" -v t="$tag $wl" 'BEGIN {
    if (b - a > 10) printf "[note] %s: mounting took %.0f s\n", t, b - a > "/dev/stderr"
    if (d - c > 10) printf "[note] %s: unmounting and cleaning up took %.0f s\n", t, d - c > "/dev/stderr" }'
  return 0
}

# ---------------------------------------------------------------- report
report() { # report RESULTS_TSV MARKDOWN_OUT
  python3 - "$1" "$2" "$ALL_IMPLS" "$QUICK" <<'EOF'
import os, sys, statistics, collections
res, md_out, impls_all, quick = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4] == "1"
vals = collections.defaultdict(list)
fails = collections.defaultdict(int)
order_w, order_i = [], []
for line in open(res):
    p = line.rstrip("\n").split("\t")
    if len(p) != 6 or p[0] != "R":
        continue
    _, impl, w, run, kind, v = p
    if w not in order_w: order_w.append(w)
    if impl not in order_i: order_i.append(impl)
    if v == "fail": fails[(impl, w)] += 1
    else: vals[(impl, w)].append(float(v))
na = {}
for line in open(res):
    p = line.rstrip("\n").split("\t")
    if len(p) == 3 and p[0] == "NA":
        na[p[1]] = p[2]
labels = {"kernel": "kernel", "stratafs": "stratafs", "stratafs-uring": "stratafs io_uring", "stratafs-lp": "stratafs lower_passthrough", "stratafs-index": "stratafs index=on", "stratafs-export": "stratafs nfs_export=on", "fo2": "fuse-overlayfs 2.0",
          "fo110": "fuse-overlayfs 1.10", "unionfs": "unionfs-fuse"}
wl_label = {
 "walk_cold": "find walk, cold", "walk_warm": "find walk, warm", "ls_lR": "ls -lR",
 "read_all": "read every file (tar)", "untar": "untar small files", "append": "append to lower files (copy-up)",
 "append_hl": "append to lower hard links (copy-up)",
 "write_1b": "1-byte write to 1 GiB lower file", "rm_rf": "rm -rf lower subtree",
 "fio_write": "fio seq write 1 GiB", "fio_read": "fio seq read 1 GiB", "fio_randread": "fio 4k random read",
 "build": "C build (make -j2)", "fsx": "fsx, 20,000 ops on a new file", "stall_max": "stat during 3 GiB copy-up (max, ms)", "copyup_3g": "3 GiB copy-up (append 1 byte)",
 "rss_start": "daemon RSS at start (MB)", "rss_find": "daemon RSS after find (MB)", "rss_drop": "daemon RSS after drop_caches (MB)"}
def med(i, w):
    v = vals.get((i, w))
    return statistics.median(v) if v else None
def cell(i, w, ref, unit):
    if i.split("@")[0] == "fo2" and "fo2" in na: return "n/a: " + na["fo2"]
    m = med(i, w)
    if m is not None and unit == "ms": m *= 1000
    if m is None:
        return "fail" if fails.get((i, w)) else "–"
    s = f"{m:.3f}" if unit == "s" else f"{m:.1f}"
    if unit == "s" and ref is not None and ref > 0 and i != "kernel" and not i.startswith("kernel@"):
        s += f" ({m / ref:.2f}×)"
    if fails.get((i, w)): s += f" [{fails[(i, w)]} failed]"
    return s
def ratio(a, b):
    if a is None or b is None or a <= 0: return "–"
    return f"{b / a:.2f}×"
def table(impls, ws, title):
    out = []
    head = ["workload"] + [labels[i.split("@")[0]] for i in impls]
    extra = []
    if "stratafs" in [i.split("@")[0] for i in impls]:
        if any(i.split("@")[0] == "fo2" for i in impls): extra.append("fo2")
        if any(i.split("@")[0] == "fo110" for i in impls): extra.append("fo110")
    suffix = "@userns" if impls and impls[0].endswith("@userns") else ""
    head += [f"{labels[e]} ÷ stratafs" for e in extra]
    n = max((len(v) for (i, w), v in vals.items() if i in impls), default=0)
    if quick: title += " — --quick: small files, the sizes named below do not apply"
    out.append(f"**{title}** (median of {n} run{'s' if n != 1 else ''}, seconds unless noted; in brackets: ratio to the kernel overlayfs, lower is better; last columns: how many times faster stratafs is)")
    out.append("")
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for w in ws:
        unit = "MB" if w.startswith("rss") else "ms" if w == "stall_max" else "s"
        ref = med("kernel" + suffix, w)
        row = [wl_label.get(w, w)] + [cell(i, w, ref, unit) for i in impls]
        s = med("stratafs" + suffix, w)
        for e in extra:
            row.append(ratio(s, med(e + suffix, w)) if unit in ("s", "ms") else "–")
        out.append("| " + " | ".join(row) + " |")
    return out
root_impls = [i for i in impls_all if i in order_i]
user_impls = [i + "@userns" for i in impls_all if i + "@userns" in order_i]
ws = [w for w in order_w if any((i, w) in vals or (i, w) in fails for i in root_impls)]
ro = " on read-only mounts (-o ro)" if os.environ.get("STRATAFS_BENCH_RO") == "1" else ""
lines = table(root_impls, ws, "As root" + ro)
if user_impls:
    uws = [w for w in order_w if any((i, w) in vals or (i, w) in fails for i in user_impls)]
    lines += ["", ""] + table(user_impls, uws, "Rootless (unshare -Urm)" + ro)
runs = collections.Counter((i, w) for (i, w) in vals)
text = "\n".join(lines) + "\n"
print(text)
if md_out:
    open(md_out, "w").write(text)
EOF
}

# ---------------------------------------------------------------- main
main() {
  ARGS="$*"
  while [ $# -gt 0 ]; do
    case "$1" in
      --quick) QUICK=1; RUNS=1 ;;
      --runs) RUNS="$2"; shift ;;
      --runs=*) RUNS="${1#*=}" ;;
      --only) ONLY="$2"; shift ;;
      --only=*) ONLY="${1#*=}" ;;
      --impl) IMPLS="$2"; shift ;;
      --impl=*) IMPLS="${1#*=}" ;;
      --no-rootless) ROOTLESS=0 ;;
      --upper-on-disk) UPPER_ON_DISK=1 ;;
      --ro) export STRATAFS_BENCH_RO=1 ;;
      --markdown) MARKDOWN="$2"; shift ;;
      --markdown=*) MARKDOWN="${1#*=}" ;;
      --dir) BENCH_DIR="$2"; shift ;;
      --dir=*) BENCH_DIR="${1#*=}" ;;
      --gluster) shift; exec "$HERE/bench-gluster.sh" "$@" ;; # over a GlusterFS lower (its own options)
      -h | --help) sed -n '2,/^$/p' "$SELF" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  [[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive number"
  # the rootless cells re-run this script: pass them the settings
  export STRATAFS_BENCH_DIR="$BENCH_DIR" STRATAFS_BENCH_QUICK="$QUICK"
  require_root "scripts/bench.sh"
  ensure_packages fuse3 fuse-overlayfs unionfs-fuse fio debootstrap python3 make gcc attr
  ensure_fuse_device
  modprobe overlay 2>/dev/null || true
  local impls workloads
  impls=$(tr ',' ' ' <<<"${IMPLS:-$ALL_IMPLS}")
  workloads=$(tr ',' ' ' <<<"${ONLY:-$ALL_WORKLOADS}")
  if [ "${STRATAFS_BENCH_RO:-0}" = 1 ]; then
    [ -n "$ONLY" ] || workloads="read_all fio_read fio_randread"
    for w in $workloads; do case " $RO_WORKLOADS " in *" $w "*) ;; *) die "--ro: $w writes (read-only workloads: $RO_WORKLOADS)" ;; esac; done
  fi
  local i w
  for i in $impls; do case " $ALL_IMPLS " in *" $i "*) ;; *) die "unknown implementation: $i (one of: $ALL_IMPLS)" ;; esac; done
  for w in $workloads; do case " $ALL_WORKLOADS fsx " in *" $w "*) ;; *) die "unknown workload: $w (one of: $ALL_WORKLOADS fsx)" ;; esac; done
  case " $workloads " in
    *" fsx "*) command -v fsx >/dev/null || cargo install --locked --version 0.2.0 fsx || die "cargo install fsx failed" ;;
  esac

  local start=$SECONDS
  case " $impls " in
    *" stratafs "*|*" stratafs-uring "*|*" stratafs-lp "*|*" stratafs-index "*|*" stratafs-export "*)
      section "building stratafs (cargo build --release)"
      require_cargo
      (cd "$ROOT" && cargo build --release -q) || die "cargo build failed" ;;
  esac
  FO2_NA=""
  case " $impls " in *" fo2 "*) ensure_fo2 ;; esac
  case " $impls " in *" stratafs-uring "*) enable_uring ;; esac
  build_dataset
  local setup=$((SECONDS - start))

  # The upper and work directories live on a tmpfs of our own (unless --upper-on-disk): the
  # disk is shared, and a kernel overlayfs umount syncs the whole upper file system, so on a
  # busy machine other processes' writeback would dominate the numbers.
  mkdir -p "$BENCH_DIR/run"
  if [ "$UPPER_ON_DISK" = 0 ]; then
    is_mounted "$BENCH_DIR/run" && die "$BENCH_DIR/run is already mounted (left over from a killed run? unmount it by hand)"
    mount -t tmpfs -o size=12g,mode=0755 stratafs-bench-upper "$BENCH_DIR/run" || die "cannot mount a tmpfs on $BENCH_DIR/run"
    RUN_TMPFS="$BENCH_DIR/run"
  fi
  local upper_fs
  upper_fs=$(findmnt -no FSTYPE -T "$BENCH_DIR/run")

  mkdir -p "$BENCH_DIR/results"
  local stamp res
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  res="$BENCH_DIR/results/$stamp.tsv"
  : >"$res"
  [ -n "$FO2_NA" ] && printf 'NA\tfo2\t%s\n' "$FO2_NA" >>"$res"
  local run_impls=""
  for i in $impls; do
    [ "$i" = fo2 ] && [ -n "$FO2_NA" ] && continue
    run_impls+="$i "
  done

  section "benchmark: $RUNS run(s); implementations: $run_impls; dataset $DATA (+ $BENCHSUB)"
  say "stratafs: $STRATAFS_BIN ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null))"
  say "fuse-overlayfs 1.10: $("$FO110_BIN" --version 2>&1 | grep -m 1 fuse-overlayfs)"
  [ -n "${FO2_VERSION:-}" ] && say "fuse-overlayfs 2.0: $FO2_BIN ($FO2_VERSION)"
  local run
  for w in $workloads; do
    for ((run = 1; run <= RUNS; run++)); do
      for i in $run_impls; do
        [ "$w" = rss ] && [ "$i" = kernel ] && continue
        cell "$i" "$w" "$run" 0 >>"$res" || die "could not clean up after $i $w"
      done
    done
  done
  if [ "$ROOTLESS" = 1 ]; then
    section "rootless: unshare -Urm"
    for w in $ROOTLESS_WORKLOADS; do
      case " $workloads " in *" $w "*) ;; *) continue ;; esac
      for ((run = 1; run <= RUNS; run++)); do
        for i in $ROOTLESS_IMPLS; do
          case " $run_impls " in *" $i "*) ;; *) continue ;; esac
          unshare -Urm -- bash "$SELF" --cell "$i" "$w" "$run" >>"$res" ||
            log "rootless $i $w: the cell failed"
        done
      done
    done
  fi
  local total=$((SECONDS - start))
  section "results ($res)"
  local md="${MARKDOWN:-$BENCH_DIR/results/$stamp.md}"
  report "$res" "$md"
  {
    printf '\nMachine: %s, %s CPUs, %s GiB RAM, kernel %s; lower layers on %s (%s), uppers on %s.\n' \
      "$(lscpu | sed -n 's/^Model name: *//p')" "$(nproc)" "$(awk '/MemTotal/ { printf "%d", $2 / 1048576 }' /proc/meminfo)" \
      "$(uname -r)" "$(findmnt -no FSTYPE -T "$BENCH_DIR")" "$BENCH_DIR" "$upper_fs"
    printf 'Command: scripts/bench.sh %s; %s run(s); took %d s (%d s of set-up); %s.\n' \
      "${ARGS:-(no options)}" "$RUNS" "$total" "$setup" "$(date -u '+%Y-%m-%d %H:%M UTC')"
  } | tee -a "$md"
  say "markdown: $md"
}

if [ "${1:-}" = "--podman" ]; then
  shift
  exec bash "$HERE/bench-podman.sh" "$@"
fi
if [ "${1:-}" = "--cell" ]; then
  # Inside `unshare -Urm`: one measurement, results on stdout.
  shift
  set_sizes
  export TARBALL="$DATA/small-$NTAR.tar"
  cell "$1" "$2" "$3" 1
  exit $?
fi
main "$@"
