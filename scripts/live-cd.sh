#!/usr/bin/env bash
# Live-CD recipe: a read-only squashfs image as the lower branch under a throw-away tmpfs
# upper, merged by stratafs. Everything written goes to RAM; the image is never modified.
#
#   scripts/live-cd.sh build SRC_DIR IMAGE            # mksquashfs SRC_DIR into IMAGE
#   scripts/live-cd.sh start [--squashfuse] [--size SIZE] IMAGE MOUNTPOINT [STATE_DIR]
#   scripts/live-cd.sh stop MOUNTPOINT [STATE_DIR]
#
# start, as root (the default): the image is loop-mounted read-only by the kernel
#   (mount -t squashfs -o ro,loop IMAGE STATE_DIR/ro), a tmpfs of SIZE (default 50%) is
#   mounted on STATE_DIR/rw, and stratafs mounts
#     lowerdir=STATE_DIR/ro,upperdir=STATE_DIR/rw/upper,workdir=STATE_DIR/rw/work
#   on MOUNTPOINT. The workdir must be on the upper's filesystem but not inside the upper,
#   hence the two directories on one tmpfs.
# start --squashfuse (the default without root): squashfuse mounts the image instead of
#   the kernel, and the upper lives in STATE_DIR, which should then be on a tmpfs
#   (the default, $XDG_RUNTIME_DIR, usually is); stratafs mounts through fusermount3.
# stop: unmounts MOUNTPOINT (the stratafs daemon exits), then the tmpfs and the image, and
#   removes STATE_DIR. Everything written to the live system is gone.
#
# STATE_DIR defaults to /run/stratafs-live/NAME as root and
# ${XDG_RUNTIME_DIR:-/tmp}/stratafs-live-NAME otherwise, NAME being MOUNTPOINT's last
# component. The stratafs binary is $STRATAFS, else `stratafs` on PATH.
#
# Example:
#   scripts/live-cd.sh build /srv/rootfs /srv/live.squashfs
#   scripts/live-cd.sh start /srv/live.squashfs /mnt/live
#   chroot /mnt/live /bin/sh          # changes stay in RAM
#   scripts/live-cd.sh stop /mnt/live
set -euo pipefail

stratafs=${STRATAFS:-stratafs}
die() { printf 'live-cd.sh: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '5,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

state_dir_for() { # MOUNTPOINT
  local name
  name=$(basename -- "$1")
  if [ "$(id -u)" = 0 ]; then
    printf '/run/stratafs-live/%s\n' "$name"
  else
    printf '%s/stratafs-live-%s\n' "${XDG_RUNTIME_DIR:-/tmp}" "$name"
  fi
}

is_mounted() { findmnt -rn --mountpoint "$1" >/dev/null 2>&1; }

unmount() { # DIR
  is_mounted "$1" || return 0
  if ! umount "$1" 2>/dev/null; then
    fusermount3 -u "$1" 2>/dev/null || umount -l "$1"
  fi
}

cmd_build() {
  [ $# = 2 ] || usage
  [ -d "$1" ] || die "build: $1: not a directory"
  mksquashfs "$1" "$2" -noappend -quiet -no-progress -all-root >/dev/null
}

cmd_start() {
  local squashfuse=0 size=50%
  [ "$(id -u)" = 0 ] || squashfuse=1
  while [ $# -gt 0 ]; do
    case "$1" in
      --squashfuse) squashfuse=1 ;;
      --size) size=${2:?--size needs a value}; shift ;;
      --) shift; break ;;
      -*) usage ;;
      *) break ;;
    esac
    shift
  done
  [ $# = 2 ] || [ $# = 3 ] || usage
  local image=$1 mnt=$2 state=${3:-$(state_dir_for "$2")}
  [ -f "$image" ] || die "image $image: not a file"
  [ -d "$mnt" ] || die "mountpoint $mnt: not a directory"
  is_mounted "$state/ro" && die "state dir $state: already in use"
  mkdir -p "$state/ro" "$state/rw"
  # Undo what was mounted so far if a later step fails.
  trap 'unmount "$state/rw"; unmount "$state/ro"; rm -rf -- "$state"' ERR
  if [ "$squashfuse" = 1 ]; then
    command -v squashfuse >/dev/null || die "squashfuse not found (apt-get install squashfuse)"
    squashfuse "$image" "$state/ro"
  else
    mount -t squashfs -o ro,loop "$image" "$state/ro"
    mount -t tmpfs -o "size=$size,mode=0755" stratafs-live "$state/rw"
  fi
  mkdir -p "$state/rw/upper" "$state/rw/work"
  "$stratafs" -o "lowerdir=$state/ro,upperdir=$state/rw/upper,workdir=$state/rw/work" \
    "live:$(basename -- "$image")" "$mnt"
  trap - ERR
}

cmd_stop() {
  [ $# = 1 ] || [ $# = 2 ] || usage
  local mnt=$1 state=${2:-$(state_dir_for "$1")}
  unmount "$mnt"
  # The daemon exits once the kernel drops the mount; wait for it before the branches go.
  for _ in $(seq 50); do
    pgrep -f -- "upperdir=$state/rw/upper," >/dev/null || break
    sleep 0.1
  done
  unmount "$state/rw"
  unmount "$state/ro"
  rm -rf -- "$state"
}

[ $# -ge 1 ] || usage
sub=$1; shift
case "$sub" in
  build) cmd_build "$@" ;;
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  -h | --help) usage ;;
  *) usage ;;
esac
