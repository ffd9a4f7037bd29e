#!/usr/bin/env bash
# scripts/udba-walk.sh: the cost of udba=notify on a walk of the whole tree, against
# udba=none (the default).
#
#   scripts/udba-walk.sh [--bin BIN] [--dirs N] [--files N] [--runs N]
#
# Run as root. The stack: one lower of --dirs directories (default 1,000) of --files files
# each (default 20) and a subdirectory, every other directory merged with an upper part
# holding one file. Each run mounts fresh, with udba=none and udba=notify taking turns,
# and times `find MNT -printf '%p %s %m %u %T@\n'` cold (the mount's first walk: every
# directory is looked up, and under notify watched) and warm (the same again). Printed: the
# medians of the wall-clock time and of the CPU time (find's plus the daemon's, steadier
# on a loaded machine) for each, and notify/none. Scratch space: $STRATAFS_UDBA_DIR (default
# /var/tmp/stratafs-udba); the script unmounts only its own mount, also when interrupted.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="$HERE/../target/release/stratafs"
DIRS=1000 FILES=20 RUNS=7
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) BIN="$2"; shift 2 ;;
        --dirs) DIRS="$2"; shift 2 ;;
        --files) FILES="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
D="${STRATAFS_UDBA_DIR:-/var/tmp/stratafs-udba}"
M="$D/m"
cleanup() {
    if mountpoint -q "$M" 2>/dev/null; then umount "$M" 2>/dev/null || umount -l "$M"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$D"
if [ ! -f "$D/l/.made-$DIRS-$FILES" ]; then
    rm -rf "$D/l" "$D/u"
    mkdir -p "$D/l" "$D/u"
    for i in $(seq 1 "$DIRS"); do
        mkdir -p "$D/l/d$i/sub"
        for j in $(seq 1 "$FILES"); do echo "$i $j" > "$D/l/d$i/f$j"; done
        if [ $((i % 2)) -eq 0 ]; then mkdir "$D/u/d$i"; echo u > "$D/u/d$i/uf"; fi
    done
    touch "$D/l/.made-$DIRS-$FILES"
fi
mkdir -p "$D/w" "$M"

# CPU ticks (utime + stime) of a process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# One walk: prints "wall_s cpu_s".
walk() {
    local pid=$1 t0 t1 c0 c1 s0 s1
    c0=$(ticks "$pid")
    s0=$(awk '{print $14 + $15 + $16 + $17}' /proc/self/stat)
    t0=$(date +%s.%N)
    /usr/bin/time -f '%U %S' -o "$D/time.out" find "$M" -printf '%p %s %m %u %T@\n' > /dev/null
    t1=$(date +%s.%N)
    c1=$(ticks "$pid")
    read -r fu fs < "$D/time.out"
    awk -v a="$t0" -v b="$t1" -v c="$c0" -v d="$c1" -v hz="$hz" -v fu="$fu" -v fs="$fs" \
        'BEGIN { printf "%.4f %.4f\n", b - a, (d - c) / hz + fu + fs }'
}

declare -A cold_wall cold_cpu warm_wall warm_cpu
for r in $(seq 1 "$RUNS"); do
    for mode in none notify; do
        rm -rf "$D/u.run" "$D/w"; mkdir -p "$D/w"; cp -a "$D/u" "$D/u.run"
        "$BIN" -o "lowerdir=$D/l,upperdir=$D/u.run,workdir=$D/w,udba=$mode" "$M" || exit 1
        pid=$(pgrep -n -f "stratafs -o lowerdir=$D/l,upperdir=$D/u.run")
        read -r w c < <(walk "$pid")
        cold_wall[$mode]+="$w "; cold_cpu[$mode]+="$c "
        read -r w c < <(walk "$pid")
        warm_wall[$mode]+="$w "; warm_cpu[$mode]+="$c "
        umount "$M"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "udba walk: $DIRS dirs x $FILES files (+ a subdirectory each, half merged), $RUNS runs, medians"
for kind in cold warm; do
    for what in wall cpu; do
        declare -n arr="${kind}_${what}"
        n=$(echo "${arr[none]}" | median)
        t=$(echo "${arr[notify]}" | median)
        awk -v k="$kind" -v w="$what" -v n="$n" -v t="$t" \
            'BEGIN { printf "%-5s %-4s none %.3f s  notify %.3f s  notify/none %.3f\n", k, w, n, t, t / n }'
    done
done
