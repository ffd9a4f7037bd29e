#!/usr/bin/env bash
# Builds the Debian package of stratafs with cargo-deb (the `[package.metadata.deb]` table
# of Cargo.toml): /usr/bin/stratafs, the man page as /usr/share/man/man1/stratafs.1.gz, an
# example containers-storage configuration as /usr/share/stratafs/storage.conf, the README;
# Depends: fuse3 (mount.fuse3 runs stratafs for `mount -t fuse.stratafs`) and the shared
# libraries of the binary.
#
#   scripts/package.sh [--no-build]     prints the path of the .deb on its last line
#
#   --no-build   package target/release/stratafs as it is (default: cargo build --release)
#
# cargo-deb is installed from crates.io (`cargo install cargo-deb --locked`) if missing.
# The binary is stripped in the package (the release profile keeps debug info).
# By hand: gzip -9n <docs/stratafs.1 >target/deb-assets/stratafs.1.gz; cargo deb --strip
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/common.sh
. scripts/common.sh

CARGO_DEB_VERSION=3.8.0
build=1
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (try --help)" ;;
  esac
done

require_cargo
if ! cargo deb --version >/dev/null 2>&1; then
  say "Installing cargo-deb $CARGO_DEB_VERSION from crates.io"
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" >&2
fi
# The .deb's Depends on libraries comes from dpkg-shlibdeps (dpkg-dev).
ensure_packages dpkg-dev >&2
[ "$build" = 1 ] && cargo build --release >&2
target_dir=${CARGO_TARGET_DIR:-$repo/target}
[ -x "$target_dir/release/stratafs" ] || die "no $target_dir/release/stratafs: build it first"
mkdir -p target/deb-assets
gzip -9n <docs/stratafs.1 >target/deb-assets/stratafs.1.gz
deb=$(cargo deb --no-build --strip | tail -n 1)
[ -f "$deb" ] || die "cargo deb made no package (it said: $deb)"
say "$deb"
