#!/usr/bin/env bash
# Installs the stratafs binary so that both `stratafs ...` and `mount -t fuse.stratafs ...`
# (and fstab lines of type fuse.stratafs) work.
#
#   scripts/install.sh [--prefix DIR] [--destdir DIR] [--binary FILE] [--path-link]
#   scripts/install.sh --uninstall [--prefix DIR] [--destdir DIR]
#
#   --prefix DIR     install DIR/bin/stratafs (default /usr/local)
#   --destdir DIR    stage everything under DIR, for packaging (or DESTDIR=DIR in the environment)
#   --binary FILE    the binary to install (default target/release/stratafs; build it first
#                    with `cargo build --release`)
#   --path-link      also add a symlink /usr/bin/stratafs -> PREFIX/bin/stratafs (see below)
#   --uninstall      remove what an install with the same --prefix/--destdir put there
#
# How `mount -t fuse.stratafs SRC MNT -o OPTS` finds the program (checked with strace on
# Debian 12): mount(8) runs /sbin/mount.fuse.stratafs if it exists, else /sbin/mount.fuse
# (fuse3's mount.fuse3), with no PATH in its environment. mount.fuse3 then runs
# `/bin/sh -c 'stratafs SRC MNT -o rw,OPTS,...'`: the subtype name, looked up on /bin/sh's
# default PATH, /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin. So the default
# /usr/local/bin/stratafs is found, whatever the caller's PATH. Only someone running
# mount.fuse3 directly with a PATH lacking PREFIX/bin needs --path-link.
# We install no mount.fuse.stratafs helper: going through mount.fuse3 keeps its own options
# (setuid=, drop_privileges) and its dropping of fstab-only options (nofail, _netdev, auto,
# user, ...) that a FUSE daemon must not see.
set -euo pipefail

prefix=/usr/local
destdir=${DESTDIR:-}
binary=
uninstall=0
path_link=0

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift ;;
    --prefix=*) prefix=${1#*=} ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift ;;
    --destdir=*) destdir=${1#*=} ;;
    --binary) binary=${2:?--binary needs a file}; shift ;;
    --binary=*) binary=${1#*=} ;;
    --path-link) path_link=1 ;;
    --uninstall) uninstall=1 ;;
    -h | --help) usage; exit 0 ;;
    *) printf 'install.sh: unknown argument: %s\n' "$1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

case "$prefix" in /*) ;; *) echo "install.sh: --prefix must be an absolute path" >&2; exit 2 ;; esac
prefix=${prefix%/}
bindir="$prefix/bin"
target="$bindir/stratafs"   # where the binary lives on the running system
link=/usr/bin/stratafs
case "$bindir" in /usr/bin | /usr/sbin | /bin | /sbin) path_link=0 ;; esac

if [ "$uninstall" = 1 ]; then
  if [ -L "$destdir$link" ] && [ "$(readlink "$destdir$link")" = "$target" ]; then
    rm -f "$destdir$link" && echo "removed $destdir$link"
  fi
  if [ -e "$destdir$target" ]; then
    rm -f "$destdir$target" && echo "removed $destdir$target"
  else
    echo "nothing installed at $destdir$target"
  fi
  exit 0
fi

if [ -z "$binary" ]; then
  binary="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/stratafs"
fi
if [ ! -f "$binary" ] || [ ! -x "$binary" ]; then
  echo "install.sh: no binary at $binary: run \`cargo build --release\` first (or pass --binary)" >&2
  exit 1
fi
if [ -z "$destdir" ] && [ ! -w "$(dirname "$bindir")" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: cannot write to $bindir: run as root (or give --prefix/--destdir)" >&2
  exit 1
fi

install -d -m 0755 "$destdir$bindir"
install -m 0755 "$binary" "$destdir$target"
echo "installed $destdir$target"

if [ "$path_link" = 1 ]; then
  if [ -e "$destdir$link" ] && ! [ -L "$destdir$link" ]; then
    echo "install.sh: $destdir$link exists and is not a symlink: left alone" >&2
  else
    install -d -m 0755 "$destdir/usr/bin"
    ln -sfn "$target" "$destdir$link"
    echo "linked $destdir$link -> $target"
  fi
fi

if [ -z "$destdir" ]; then
  command -v mount.fuse3 >/dev/null 2>&1 || [ -x /sbin/mount.fuse3 ] ||
    echo "note: mount.fuse3 is missing (Debian package fuse3): \`mount -t fuse.stratafs\` needs it" >&2
  echo "try: mount -t fuse.stratafs -o lowerdir=L1:L2,upperdir=U,workdir=W stratafs MNT"
fi
