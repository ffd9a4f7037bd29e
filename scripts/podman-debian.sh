#!/usr/bin/env bash
# The real-client stage: podman with stratafs as mount_program on a real Debian 12 image,
# rootful and rootless, compared with podman's native overlay driver (the kernel overlayfs).
#
#   scripts/podman-debian.sh [--rootful-only | --rootless-only] [--keep]   as root, from the repository
#   scripts/podman-debian.sh --bench [--runs=N]   the same as scripts/bench-podman.sh --runs N
#                                                 --modes rootful --drivers native,stratafs,fo110
#
# The image: a `debootstrap --variant=minbase` root file system from the Debian mirror apt
# uses (read from /etc/apt/sources.list and sources.list.d, deb822 too), kept as a verified
# tarball in /var/cache/stratafs/ between runs where that can be written (rebuilt if missing,
# damaged or made from another mirror), imported with `podman import`.
# For each mode (rootful, then rootless as the user stratafs-podman with /etc/subuid and
# /etc/subgid ranges) and each driver (stratafs as overlay mount_program, then native overlay),
# in private storages (the host's podman storage is never touched):
#   1. a container runs apt-get update and apt-get install jq make bc (--network host), uses
#      them, hard-links a lower file, writes through one name of a lower hard-link pair and
#      apt-get removes bc; `podman export` of it (the live view);
#   2. podman commit of it, `podman run --user 65534:65534` of the committed image;
#      rootful: `podman run --uidmap` of it;
#   3. podman build of a 12-step Containerfile (apt-get install, COPY of a directory, rm -rf
#      and mv of lower directories, hard links of lower files, chmod/chown, useradd, USER and
#      RUN as that user, apt-get remove); a run of the image as its USER; `podman export`.
# The exports of the two drivers are then compared (paths, types, modes, owners, sizes,
# sha256, symlink targets, hard-link groups), with the explicit exemptions listed below.
#
# Environment: STRATAFS_BIN=PATH  mount program to test (default target/release/stratafs);
# STRATAFS_PODMAN_USER=NAME  the rootless test user (default stratafs-podman);
# STRATAFS_DEBIAN_CACHE=DIR  where the Debian tarball is kept (default /var/cache/stratafs).
#
# Output: one "ok: ..." or "FAIL: ..." line per check, a last "podman-debian: N passed,
# N failed" line. Exit status 0 when every check passed, 1 on any failure, 77 (with one
# "SKIP: reason" line) only when podman or debootstrap cannot be installed or run here.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 1
# shellcheck source=scripts/common.sh
. scripts/common.sh
# shellcheck source=scripts/podman-lib.sh
. scripts/podman-lib.sh

do_rootful=1 do_rootless=1 keep=0 bench=0 runs=3
for arg in "$@"; do
  case "$arg" in
    --rootful-only) do_rootless=0 ;;
    --rootless-only) do_rootful=0 ;;
    --keep) keep=1 ;;
    --bench) bench=1 ;;
    --runs=*) runs=${arg#*=} ;;
    -h | --help) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (try --help)" ;;
  esac
done

[ "$bench" = 1 ] && exec scripts/bench-podman.sh --runs "$runs" --modes rootful --drivers native,stratafs,fo110
require_root "scripts/podman-debian.sh"
skip() { say "SKIP: $*"; exit 77; }

# ---- What it needs ----
pkgs=(podman runc uidmap catatonit debootstrap fuse3 python3-minimal)
( ensure_packages "${pkgs[@]}" ) >/dev/null 2>&1 ||
  skip "could not install the packages it needs (apt-get install ${pkgs[*]} failed)"
for c in podman runc debootstrap newuidmap /usr/bin/python3; do
  command -v "$c" >/dev/null 2>&1 || skip "$c is not installed and could not be installed"
done
[ -c /dev/fuse ] || skip "/dev/fuse is missing: no FUSE on this host"

bin=${STRATAFS_BIN:-$repo/target/release/stratafs}
if [ ! -x "$bin" ]; then
  require_cargo
  cargo build --release -q || die "cargo build --release failed"
fi
test_user=${STRATAFS_PODMAN_USER:-stratafs-podman}

scratch=$(mktemp -d /tmp/sfs-pd.XXXXXX)
chmod 0755 "$scratch"
fuse_mode_restore=
cleanup() {
  local rc=$? f
  # The rootless pause processes keep the user namespaces: end them by their recorded pids.
  while IFS= read -r f; do
    [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done < <(find "$scratch" -name pause.pid 2>/dev/null)
  if [ "$keep" = 0 ]; then
    # Mounts under the scratch dir are ours (containers still mounted after a failure).
    unmount_below "$scratch"
    remove_scratch "$scratch" || note "left $scratch behind"
  else
    say "kept $scratch"
  fi
  [ -n "$fuse_mode_restore" ] && chmod "$fuse_mode_restore" /dev/fuse
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

passed=0 failed=0
ok() { passed=$((passed + 1)); say "ok: $*"; }
fail() { failed=$((failed + 1)); say "FAIL: $*"; }
# count_lines FILE: prints FILE and adds its ok/FAIL lines to the totals.
count_lines() {
  local n
  cat "$1"
  n=$(grep -c '^ok: ' "$1") passed=$((passed + n))
  n=$(grep -c '^FAIL: ' "$1") failed=$((failed + n))
}
# tail_of FILE [N]: its last N lines, indented; a line longer than 400 characters keeps its
# first 120 and last 280 (podman puts the mount program's message after the whole mount_data).
tail_of() {
  tail -n "${2:-4}" "$1" | awk '{ if (length($0) > 400) $0 = substr($0, 1, 120) " [...] " substr($0, length($0) - 279); print "    | " $0 }'
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# The mount programs (in the scratch dir, world-readable, so the rootless user can run them):
# stratafs behind a wrapper that logs podman's argv.
install -m 0755 "$bin" "$scratch/stratafs"
mkdir -m 1777 "$scratch/argv"
cat >"$scratch/mount-program" <<EOF
#!/bin/sh
{ printf 'uid=%s argv:' "\$(id -u)"; for a in "\$@"; do printf ' %s' "\$a"; done; echo; } >>"$scratch/argv/argv.log" 2>/dev/null
exec "$scratch/stratafs" "\$@"
EOF
chmod 0755 "$scratch/mount-program"

section "The Debian image"
t0=$(now)
if ! pd_debian_tarball "$scratch"; then
  # The mirror is reachable wherever apt is: not being able to debootstrap is a failure.
  fail "debootstrap of a Debian minbase from $(apt_debian_mirror || echo '(no mirror in apt sources)')"
  say "podman-debian: $passed passed, $failed failed"
  exit 1
fi
ok "Debian minbase tarball: $PD_TARBALL_NOTE ($(secs "$t0") s, $(du -m "$PD_TARBALL" | cut -f1) MiB)"

# In-container checks, mounted read-only at /pd (a bind mount: not part of any export).
install -d -m 0755 "$scratch/pd"
install -m 0755 scripts/podman-debian/check-* "$scratch/pd/"
pd_write_build_context "$scratch/build" localhost/pd-apt

# fstype DRIVER: the type of the container's root mount with that driver.
fstype() {
  case "$1" in
    stratafs) echo fuse.stratafs ;; fuse-overlayfs) echo fuse.fuse-overlayfs ;; native) echo overlay ;;
  esac
}
mount_program() {
  case "$1" in stratafs) echo "$scratch/mount-program" ;; fuse-overlayfs) echo /usr/bin/fuse-overlayfs ;; esac
}

# run_driver MODE DRIVER: steps 1-3 of the header in a fresh private storage; the exports go
# to $scratch/out/MODE-DRIVER-{live,built}.manifest.
run_driver() {
  local mode=$1 driver=$2 label="$1 $2" home="$scratch/$1-$2" out t0 step
  local ex="$scratch/$1-$2/export" man="$scratch/out/$1-$2"
  mkdir -p "$scratch/out" "$home"
  pd_set_podman "$mode" "$driver" "$home" "$(mount_program "$driver")" "$test_user"
  mkdir -p "$ex" && [ "$mode" = rootless ] && chown "$test_user:" "$ex"
  out="$home/step.out"
  t0=$(now)
  section "$label"
  if ! "${pm[@]}" info >"$out" 2>&1; then
    fail "$label: podman does not start: $(grep -m1 -i error "$out" || tail -n 1 "$out")"
    return
  fi
  step=$(now)
  if wl_import "$PD_TARBALL" localhost/debian >"$out" 2>&1; then
    ok "$label: podman import of the Debian tarball ($(secs "$step") s)"
  else
    fail "$label: podman import"; tail_of "$out"; return
  fi
  # 1. apt-get install, use, apt-get remove; the checks print their own lines.
  step=$(now)
  PD_APT_RUNARGS=(-v "$scratch/pd:/pd:ro")
  if wl_apt pd-apt localhost/debian "$PD_APT_TEST" "/pd/check-apt '$label: apt container' $(fstype "$driver")" >"$out" 2>&1; then
    grep -E '^(ok|FAIL): ' "$out" >"$out.checks"
    count_lines "$out.checks"
    ok "$label: apt-get update, apt-get install $PD_APT_TEST, apt-get remove bc in a container ($(secs "$step") s)"
  else
    grep -E '^(ok|FAIL): ' "$out" >"$out.checks"
    count_lines "$out.checks"
    fail "$label: the apt container failed"; tail_of "$out" 8
  fi
  # apt downloads as its user _apt; when that user cannot read the storage it says so and
  # downloads as root instead.
  if grep -q 'unsandboxed' "$out"; then
    fail "$label: apt's _apt sandbox could not use the storage: $(grep -m1 unsandboxed "$out")"
  else
    ok "$label: apt downloaded as its sandbox user _apt"
  fi
  step=$(now)
  if "${pm[@]}" export -o "$ex/live.tar" pd-apt >"$out" 2>&1 &&
    /usr/bin/python3 scripts/podman-manifest.py manifest "$ex/live.tar" >"$man-live.manifest" 2>"$out"; then
    ok "$label: podman export of the apt container ($(wc -l <"$man-live.manifest") entries, $(secs "$step") s)"
  else
    fail "$label: podman export of the apt container"; tail_of "$out"; rm -f "$man-live.manifest"
  fi
  rm -f "$ex/live.tar"
  # 2. commit, run --user, run --uidmap
  step=$(now)
  if wl_commit pd-apt localhost/pd-apt >"$out" 2>&1; then
    ok "$label: podman commit of the apt container ($(secs "$step") s)"
  else
    fail "$label: podman commit"; tail_of "$out"; return
  fi
  if "${pm[@]}" run --rm --user 65534:65534 --network none "${PD_RUNARGS[@]}" -v "$scratch/pd:/pd:ro" localhost/pd-apt \
    /pd/check-user "$label: run --user 65534:65534" 65534 >"$out" 2>&1; then
    count_lines "$out"
  else
    grep -E '^(ok|FAIL): ' "$out" >"$out.checks"; count_lines "$out.checks"
    fail "$label: podman run --user 65534:65534 of the committed image"; tail_of "$out"
  fi
  if [ "$mode" = rootful ]; then
    # With --uidmap the container's 0 is the host's 200000. A file the container's root makes
    # must be root's with every driver. The image's own files: the native driver shows them
    # as the container's root; podman 4.3 hands a mount program a copy of the layers already
    # shifted to 200000 *and* `uidmapping=:0:200000:65536` (on-disk 0 shown as 200000), so
    # the shifted owners are outside the mapping and show as the overflow id 65534 inside.
    # fuse-overlayfs 1.10 shows exactly that too (this stage run with
    # STRATAFS_BIN=/usr/bin/fuse-overlayfs printed the same owners), and uidmapping= means
    # what it means there: so for a mount program the owners are checked against that.
    if [ "$driver" = native ]; then want="0:0 0:0 0:0 0:0 "; else want="65534:65534 65534:65534 0:0 65534:65534 "; fi
    if "${pm[@]}" run --rm --uidmap 0:200000:65536 --gidmap 0:200000:65536 --network none "${PD_RUNARGS[@]}" localhost/pd-apt \
      sh -c 'touch /tmp/new && stat -c %u:%g /etc/passwd /usr/bin/jq /tmp/new /root' >"$out" 2>"$out.err" &&
      [ "$(tr '\n' ' ' <"$out")" = "$want" ]; then
      ok "$label: run --uidmap 0:200000:65536: owners of /etc/passwd /usr/bin/jq /tmp/new /root are $want(a new file is root's)"
      [ "$driver" = native ] ||
        say "NOTE: $label: with --uidmap the image's files show as 65534 inside, as with fuse-overlayfs 1.10 (podman 4.3 passes a pre-shifted copy and a mapping); the native driver shows 0:0"
    else
      fail "$label: run --uidmap 0:200000:65536: owners of /etc/passwd /usr/bin/jq /tmp/new /root: $(tr '\n' ' ' <"$out") (want $want)"
      tail_of "$out.err" 3
    fi
  fi
  # 3. the build, a run of the built image, its export
  step=$(now)
  if wl_build "$scratch/build" localhost/pd-built >"$out" 2>&1; then
    ok "$label: podman build of the 12-step Containerfile ($(secs "$step") s)"
    if "${pm[@]}" run --rm --network none "${PD_RUNARGS[@]}" -v "$scratch/pd:/pd:ro" localhost/pd-built \
      /pd/check-built "$label: built image" >"$out" 2>&1; then
      count_lines "$out"
    else
      grep -E '^(ok|FAIL): ' "$out" >"$out.checks"; count_lines "$out.checks"
      fail "$label: running the built image as its USER"; tail_of "$out"
    fi
    step=$(now)
    if wl_export_image localhost/pd-built "$ex/built.tar" >"$out" 2>&1 &&
      /usr/bin/python3 scripts/podman-manifest.py manifest "$ex/built.tar" >"$man-built.manifest" 2>"$out"; then
      ok "$label: podman export of the built image ($(wc -l <"$man-built.manifest") entries, $(secs "$step") s)"
    else
      fail "$label: podman export of the built image"; tail_of "$out"; rm -f "$man-built.manifest"
    fi
    rm -f "$ex/built.tar"
  else
    fail "$label: podman build ($(secs "$step") s)"
    grep -E '^(STEP|Error|error)' "$out" | tail -n 4 | sed 's/^/    | /'; tail_of "$out" 6
  fi
  if [ "$driver" = stratafs ]; then
    if [ -s "$scratch/argv/argv.log" ]; then
      say "  stratafs was called $(wc -l <"$scratch/argv/argv.log") times"
      mv "$scratch/argv/argv.log" "$home/argv.log"
    else
      fail "$label: podman never called the mount program"
    fi
  fi
  "${pm[@]}" rm -af >/dev/null 2>&1 || true
  "${pm[@]}" rmi -af >/dev/null 2>&1 || true
  say "  $label took $(secs "$t0") s"
}

# ---- What the two drivers must agree on ----
# Files whose content records when or in which order things ran, not what the steps did;
# their path, type, mode and owner are still compared (regexes on the exported path):
content_exempt=(
  # apt/dpkg logs: timestamps on every line
  '/var/log/apt/(eipp\.log\.xz|history\.log|term\.log)' '/var/log/(dpkg|alternatives)\.log'
  # apt's binary caches: they record the mtimes of the package lists
  '/var/cache/apt/(pkgcache|srcpkgcache)\.bin'
  # ldconfig's auxiliary cache: keyed by each library's inode number and ctime
  '/var/cache/ldconfig/aux-cache'
)
# The package lists are fetched by each run on its own: they are compared unless the mirror
# published new ones in between (then the InRelease files differ, and compare_mode exempts
# the lists' content, saying so).
lists_exempt='/var/lib/apt/lists/.*'
# Names a build step only hard-linked to a file of a lower layer: podman commits every layer
# of a mount_program with its naive diff, which compares each name with the parent layer and
# sees only the new name changed; so the layer holds the new name as a file of its own. The
# native driver commits the upper directory as the kernel left it, both names one file.
# The live container (not committed) must agree on these too; only the images may differ.
commit_links_exempt=('/etc/host\.conf(\.link)?' '/etc/issue\.net(\.link)?')

compare_mode() { # MODE
  local mode=$1 a="$scratch/out/$1-stratafs" b="$scratch/out/$1-native" ce=() le=() r out
  section "$mode: stratafs (A) against native overlay (B)"
  for r in "${content_exempt[@]}"; do ce+=(--content-exempt "$r"); done
  if [ -f "$a-live.manifest" ] && [ -f "$b-live.manifest" ] &&
    [ "$(grep -E '^/var/lib/apt/lists/[^/]*InRelease' "$a-live.manifest" | cut -f1,6)" != \
      "$(grep -E '^/var/lib/apt/lists/[^/]*InRelease' "$b-live.manifest" | cut -f1,6)" ]; then
    say "NOTE: $mode: the mirror published between the two runs (InRelease differs): package lists exempt"
    ce+=(--content-exempt "$lists_exempt")
  fi
  for r in "${commit_links_exempt[@]}"; do le+=(--links-exempt "$r"); done
  out="$scratch/out/$mode-compare"
  if [ -f "$a-live.manifest" ] && [ -f "$b-live.manifest" ]; then
    /usr/bin/python3 scripts/podman-manifest.py compare "$a-live.manifest" "$b-live.manifest" \
      "$mode: exported apt container, stratafs vs native" "${ce[@]}" >"$out" 2>&1
    count_lines "$out"
  else
    fail "$mode: exported apt container: no export to compare (see above)"
  fi
  if [ -f "$a-built.manifest" ] && [ -f "$b-built.manifest" ]; then
    /usr/bin/python3 scripts/podman-manifest.py compare "$a-built.manifest" "$b-built.manifest" \
      "$mode: exported built image, stratafs vs native" "${ce[@]}" "${le[@]}" >"$out" 2>&1
    count_lines "$out"
  else
    fail "$mode: exported built image: no export to compare (see above)"
  fi
}

rootless_setup() {
  section "Rootless set-up"
  pd_rootless_user "$test_user"
  local mode
  mode=$(stat -c %a /dev/fuse)
  if [ "$mode" != 666 ]; then
    say "NOTE: /dev/fuse is mode $mode; making it 0666 for the rootless run (restored at the end)"
    chmod 0666 /dev/fuse
    fuse_mode_restore=$mode
  fi
  # The tarball must be readable by the test user (podman import reads it as that user).
  chmod a+r "$PD_TARBALL"
}

t_all=$(now)
if [ "$do_rootful" = 1 ]; then
  run_driver rootful stratafs
  run_driver rootful native
  compare_mode rootful
fi
if [ "$do_rootless" = 1 ]; then
  rootless_setup
  run_driver rootless stratafs
  run_driver rootless native
  compare_mode rootless
fi

section "Result"
say "podman and the comparisons took $(secs "$t_all") s"
say "podman-debian: $passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
