#!/usr/bin/env bash
# shellcheck disable=SC2317 # cleanup, has and absent are called indirectly (trap, check)
# The stratafs demo: installs what it needs, builds, mounts the three layers in demo/layers/
# under a scratch upper directory, shows the merged view and what each layer did to it,
# tries a few writes (skipped with a note while the write path is not there yet), unmounts.
#
#   scripts/demo.sh            run as root from anywhere in the repository
#   STRATAFS_DEMO_KEEP=1       keep the scratch directory (upper, work) afterwards
#   STRATAFS_BIN=PATH          mount with PATH instead of building target/release/stratafs
#                              (to compare with another implementation of the same options)
#
# Exit status: 0 when the merged view is as documented in demo/README.md, 1 otherwise.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/common.sh
. scripts/common.sh

require_root "scripts/demo.sh"
section "Preparing: Debian packages, Rust build"
ensure_packages fuse3 attr gcc libc6-dev pkg-config
require_cargo
ensure_fuse_device
if [ -n "${STRATAFS_BIN:-}" ]; then
  bin=$STRATAFS_BIN
  say "Using STRATAFS_BIN=$bin (not building)"
else
  cargo build --release
  bin="${CARGO_TARGET_DIR:-$repo/target}/release/stratafs"
fi

layers="$repo/demo/layers"
scratch=$(mktemp -d /tmp/sfs-demo.XXXXXX)
upper="$scratch/upper" work="$scratch/work" mnt="$scratch/merged"
mkdir -p "$upper" "$work" "$mnt"
STRATAFS_PID=

cleanup() {
  local rc=$?
  stop_stratafs "$mnt"
  if [ "${STRATAFS_DEMO_KEEP:-0}" = 1 ]; then
    say "Scratch directory kept: $scratch"
  else
    remove_scratch "$scratch" || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A fingerprint of the shipped layers, to show at the end that nothing wrote to them.
layers_fingerprint() { (cd "$layers" && find . -printf '%p %y %m %s\n' | sort && find . -type f -exec sha256sum {} + | sort); }
before=$(layers_fingerprint)

section "The layers (lowest first), as stored in git"
cat <<'EOF'
Git cannot store the kernel overlayfs markers (0/0 character-device whiteouts,
trusted.overlay.* xattrs), so the shipped layers use the aufs/OCI format instead:
an empty file .wh.NAME deletes NAME from the layers below, and an empty file
.wh..wh..opq makes its directory opaque. stratafs reads both formats, and writes
the kernel format into the upper directory.
EOF
for l in base app patch; do
  say ""
  say "--- $l/"
  (cd "$layers/$l" && find . -mindepth 1 ! -type d | sed 's|^\./|  |' | sort)
done

section "Mounting"
opts="lowerdir=$layers/patch:$layers/app:$layers/base,upperdir=$upper,workdir=$work"
say "stratafs -f -o $opts $mnt &"
mount_stratafs "$bin" "$opts" "$mnt" "$scratch/stratafs.log" || die "the mount failed"
grep -F " $mnt " /proc/mounts || true

section "The merged view"
# Display only: a broken view must not stop the script here; the checks below judge it.
(cd "$mnt" && find . | sort) || true
say ""
ls -la "$mnt" "$mnt/etc" "$mnt/usr/bin" || true
say ""
for f in etc/hostname etc/app.conf etc/os-release var/log/install.log var/log/app.log; do
  say "\$ cat $f"
  sed 's/^/  /' "$mnt/$f" || true
done
say "\$ sh usr/bin/hello"
sh "$mnt/usr/bin/hello" | sed 's/^/  /' || true

section "What each layer contributed, and what was hidden"
problems=0
# check DESCRIPTION TEST...: prints ok/WRONG for one expectation about the merged view.
check() {
  local what="$1"
  shift
  if "$@" 2>/dev/null; then
    printf '  ok     %s\n' "$what"
  else
    printf '  WRONG  %s\n' "$what"
    problems=$((problems + 1))
  fi
}
has() { grep -qF -- "$2" "$mnt/$1"; }
absent() { [ ! -e "$mnt/$1" ] && [ ! -L "$mnt/$1" ]; }
check "etc/os-release comes from base" has etc/os-release 'Strata Demo Linux'
check "usr/share/doc/base/README comes from base (untouched above)" test -f "$mnt/usr/share/doc/base/README"
check "etc/hostname: app overrides base (app-host)" has etc/hostname app-host
check "etc/app.conf: patch overrides app (workers = 4)" has etc/app.conf 'workers = 4'
check "usr/bin/hello: patch overrides base (v2)" has usr/bin/hello 'patch layer (v2)'
check "usr/bin/app is added by app" test -x "$mnt/usr/bin/app"
check "var/log merges base's install.log and app's app.log" test -f "$mnt/var/log/install.log" -a -f "$mnt/var/log/app.log"
check "etc/motd is deleted by app's whiteout etc/.wh.motd" absent etc/motd
check "opt/legacy/ is deleted by app's whiteout opt/.wh.legacy" absent opt/legacy
check "opt/vendor/ from base still shows" test -f "$mnt/opt/vendor/tool"
check "var/cache is opaque in app: base's var/cache/apt/ is hidden" absent var/cache/apt
check "var/cache/app/index.txt comes from app" test -f "$mnt/var/cache/app/index.txt"
check "no .wh.* marker shows in the merged view" test -z "$(find "$mnt" -name '.wh.*' -print -quit)"

section "Writing (goes to the upper directory)"
writes=no
# try DESCRIPTION COMMAND...: a write step. While the write path is being built, EROFS and
# ENOSYS mean "not there yet" and are reported as a note; any other error is a real failure.
try() {
  local what="$1" err
  shift
  if err=$("$@" 2>&1); then
    printf '  done   %s\n' "$what"
    return 0
  fi
  case "$err" in
    *"Read-only file system"* | *"Function not implemented"* | *"Operation not supported"*)
      printf '  skip   %s: not supported yet (%s)\n' "$what" "${err##*: }" ;;
    *)
      printf '  FAIL   %s: %s\n' "$what" "$err"
      problems=$((problems + 1)) ;;
  esac
  return 1
}
if try "touch etc/written-by-demo" touch "$mnt/etc/written-by-demo"; then
  writes=yes
  try "write a line to etc/written-by-demo" sh -c "echo 'written through the mount' > '$mnt/etc/written-by-demo'" || true
  try "edit etc/hostname (a lower file: copied up first)" sh -c "echo demo-host > '$mnt/etc/hostname'" || true
  try "rm etc/os-release (a lower file: leaves a whiteout)" rm "$mnt/etc/os-release" || true
  try "rm -r var/log; mkdir var/log (a merged dir: recreated opaque)" sh -c "rm -r '$mnt/var/log' && mkdir '$mnt/var/log'" || true
else
  say "The write path is not there yet, so the rest of this section is skipped."
fi

section "Unmounting"
stop_stratafs "$mnt"
is_mounted "$mnt" && die "$mnt is still mounted"
say "unmounted $mnt"

if [ "$writes" = yes ]; then
  section "The upper directory (kernel overlayfs format)"
  (cd "$upper" && find . -mindepth 1 -printf '%M %3U:%-3G %p\n' | sort -k3)
  say ""
  say "Whiteouts are 0/0 character devices:"
  (cd "$upper" && find . -type c -exec ls -l {} +) || true
  say "Overlay xattrs in the upper (opaque directories, origins):"
  getfattr -R -h -d -m '^trusted\.overlay\.' "$upper" 2>/dev/null | sed "s|${upper#/}|<upper>|" || true
fi

section "The shipped layers are unchanged"
if [ "$(layers_fingerprint)" = "$before" ]; then
  say "  ok     demo/layers/ is byte-for-byte as before the mount"
else
  say "  WRONG  demo/layers/ changed during the demo: a write reached a lower layer"
  problems=$((problems + 1))
fi

section "Result"
if [ "$problems" -gt 0 ]; then
  say "$problems problem(s): the merged view differs from demo/README.md (see WRONG/FAIL above)."
  exit 1
fi
say "The merged view is as documented in demo/README.md (writes tried: $writes)."
exit 0
