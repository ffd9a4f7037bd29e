# shellcheck shell=bash
# Helpers shared by scripts/demo.sh and scripts/test.sh. Source it; do not run it.
# Everything here is idempotent: a second run on a prepared machine installs nothing.

# Messages in English whatever the locale, so error texts can be matched.
export LC_ALL=C
export DEBIAN_FRONTEND=noninteractive

# rustup installs cargo into ~/.cargo/bin, which a non-login shell (CI, sudo) may not have on PATH.
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"

say() { printf '%s\n' "$*"; }
section() { printf '\n==== %s ====\n' "$*"; }
note() { printf 'note: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

require_root() {
  [ "$(id -u)" = 0 ] || die "$1 must run as root (it installs Debian packages and mounts filesystems)."
}

require_cargo() {
  command -v cargo >/dev/null 2>&1 || die "cargo not found (looked on PATH and in ~/.cargo/bin).
Install a Rust toolchain first (https://rustup.rs), then run this script again."
}

# ensure_packages PKG...: apt-get installs whichever of PKG are missing; `apt-get update` only
# when something is missing, so a prepared machine pays one dpkg-query and nothing else.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "missing packages (${missing[*]}) and no apt-get: install them by hand."
  [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}): run as root so they can be installed."
  say "Installing Debian packages: ${missing[*]}"
  apt-get update -q </dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
}

ensure_fuse_device() {
  if [ ! -c /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
  fi
  [ -c /dev/fuse ] || die "/dev/fuse is missing: this machine (or container) cannot mount FUSE filesystems."
}

# Print the mount points of live stratafs mounts, deepest (last mounted) first, one a line.
# A stratafs mount has type fuse.stratafs, or a fuse type and "stratafs" in its source.
stratafs_mounts() {
  local src mp type rest
  [ -r /proc/mounts ] || return 0
  while read -r src mp type rest; do
    case "$type" in
      fuse.stratafs) ;;
      fuse | fuse.* | fuseblk) case "$src" in *stratafs*) ;; *) continue ;; esac ;;
      *) continue ;;
    esac
    printf '%b\n' "$mp" # /proc/mounts escapes space, tab, newline and backslash as octal
  done </proc/mounts | tac
}

is_mounted() {
  local want="$1" src mp rest
  while read -r src mp rest; do
    [ "$(printf '%b' "$mp")" = "$want" ] && return 0
  done </proc/mounts
  return 1
}

unmount_path() {
  local mp="$1"
  is_mounted "$mp" || return 0
  fusermount3 -u "$mp" 2>/dev/null || umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
  ! is_mounted "$mp"
}

# Unmount every stratafs mount left over from an earlier run. Returns 1 if there were any.
cleanup_stratafs_mounts() {
  local mp found=0
  while IFS= read -r mp; do
    [ -n "$mp" ] || continue
    found=1
    note "unmounting left-over stratafs mount: $mp"
    unmount_path "$mp" || note "could not unmount $mp"
  done < <(stratafs_mounts)
  return $found
}

# mount_stratafs BINARY OPTIONS MOUNTPOINT LOGFILE
# Starts `BINARY -f -o OPTIONS MOUNTPOINT` in the background (the binary does not daemonize
# yet), waits until MOUNTPOINT shows in /proc/mounts and sets STRATAFS_PID.
mount_stratafs() {
  local bin="$1" opts="$2" mnt="$3" log="$4" i
  "$bin" -f -o "$opts" "$mnt" >"$log" 2>&1 </dev/null &
  STRATAFS_PID=$!
  for ((i = 0; i < 100; i++)); do
    is_mounted "$mnt" && return 0
    if ! kill -0 "$STRATAFS_PID" 2>/dev/null; then
      wait "$STRATAFS_PID" 2>/dev/null || true
      STRATAFS_PID=
      printf 'stratafs exited before the mount was live; its output:\n' >&2
      sed 's/^/  | /' "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  printf 'stratafs did not mount %s within 10 s; its output:\n' "$mnt" >&2
  sed 's/^/  | /' "$log" >&2
  stop_stratafs "$mnt"
  return 1
}

# stop_stratafs MOUNTPOINT: unmount, then wait for the daemon started by mount_stratafs to exit
# (TERM after 10 s, KILL after 15 s). Only that one process id is ever signalled.
stop_stratafs() {
  local mnt="$1" i
  unmount_path "$mnt" || note "could not unmount $mnt"
  [ -n "${STRATAFS_PID:-}" ] || return 0
  for ((i = 0; i < 150; i++)); do
    kill -0 "$STRATAFS_PID" 2>/dev/null || break
    [ "$i" = 100 ] && kill -TERM "$STRATAFS_PID" 2>/dev/null
    sleep 0.1
  done
  if kill -0 "$STRATAFS_PID" 2>/dev/null; then
    kill -KILL "$STRATAFS_PID" 2>/dev/null
  fi
  wait "$STRATAFS_PID" 2>/dev/null || true
  STRATAFS_PID=
  # A killed daemon leaves a dead mount ("Transport endpoint is not connected"): detach it.
  unmount_path "$mnt" || note "could not unmount $mnt"
}

# Remove a scratch directory, but never through a live mount.
# unmount_below DIR: unmounts every mount below DIR, deepest first (lazily when busy).
unmount_below() {
  local mp
  while IFS= read -r mp; do
    [ -n "$mp" ] && { umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true; }
  done < <(awk '{print $2}' /proc/mounts | while read -r m; do
    m=$(printf '%b' "$m")
    case "$m" in "$1"/*) printf '%s\n' "$m" ;; esac
  done | tac)
}

remove_scratch() {
  local dir="$1" src mp rest
  [ -n "$dir" ] && [ -d "$dir" ] || return 0
  while read -r src mp rest; do
    case "$(printf '%b' "$mp")" in
      "$dir" | "$dir"/*) note "not removing $dir: $(printf '%b' "$mp") is still mounted"; return 1 ;;
    esac
  done </proc/mounts
  rm -rf --one-file-system "$dir"
}

# ---- The Debian mirror apt uses (for debootstrap and for apt inside test images) ----
# debian_codename: the host's release codename (VERSION_CODENAME of /etc/os-release), or bookworm.
debian_codename() {
  local c=
  [ -r /etc/os-release ] && c=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
  printf '%s\n' "${c:-bookworm}"
}

# apt_debian_sources [CODENAME]: the host's enabled `deb` entries for CODENAME and its -updates
# and -security suites, one "URI SUITE COMPONENT..." line each, read from
# /etc/apt/sources.list, /etc/apt/sources.list.d/*.list and deb822 *.sources files (files
# with other suffixes, e.g. *.disabled, are not read by apt either). Options in [...] and
# Signed-By are dropped: a Debian image trusts the Debian archive keys itself.
apt_debian_sources() {
  local codename=${1:-$(debian_codename)} f
  {
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -r "$f" ] || continue
      sed -e 's/#.*//' -e 's/\[[^]]*\]//g' "$f" | awk '$1 == "deb" && NF >= 4 { $1 = ""; sub(/^ /, ""); print }'
    done
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -r "$f" ] || continue
      # One stanza per blank-line-separated paragraph; print "URI SUITE COMPONENTS" for each
      # URI x suite of an enabled stanza whose Types include deb.
      awk 'function flush(   i, j, nu, ns, u, s) {
             if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no") {
               nu = split(uris, u, " "); ns = split(suites, s, " ")
               for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i], s[j], comps
             }
             types = uris = suites = comps = ""; enabled = "yes"
           }
           BEGIN { enabled = "yes" }
           /^[ \t]*#/ { next }
           /^[ \t]*$/ { flush(); next }
           { line = $0; key = tolower(line); sub(/:.*/, "", key); val = line; sub(/^[^:]*:[ \t]*/, "", val)
             if (key == "types") types = val; else if (key == "uris") uris = val
             else if (key == "suites") suites = val; else if (key == "components") comps = val
             else if (key == "enabled") enabled = val }
           END { flush() }' "$f"
    done
  } | awk -v c="$codename" '$2 == c || $2 == c "-updates" || $2 == c "-security" || $2 == c "/updates"' |
    awk '!seen[$0]++'
}

# apt_debian_mirror [CODENAME]: the URI of the host's entry for CODENAME itself (what
# debootstrap needs); fails if apt has none.
apt_debian_mirror() {
  local codename=${1:-$(debian_codename)} uri
  uri=$(apt_debian_sources "$codename" | awk -v c="$codename" '$2 == c { print $1; exit }')
  [ -n "$uri" ] || return 1
  printf '%s\n' "${uri%/}"
}
