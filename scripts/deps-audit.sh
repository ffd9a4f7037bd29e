#!/usr/bin/env bash
# Checks that scripts/test.sh installs every program its tests and stages run, so that the
# suite passes on a fresh machine and not only on one that happens to have the program.
#
#   scripts/deps-audit.sh                 audit this machine (run after test.sh's dependency step)
#   scripts/deps-audit.sh --without PKG   the same as if PKG were not in test.sh's list (must fail)
#   scripts/deps-audit.sh --self-test     --without each package of the list in turn: every run
#                                         must fail, or the package is installed for nothing
#
# The sources: tests/ (string literals of the Rust files, the Perl helper) and the scripts that
# scripts/test.sh runs. The manifest: scripts/test-programs.txt (its header says what is
# checked). Prints one line per problem; exit 0 only when there is none.
set -euo pipefail # (no `producer | grep -q` below: grep's early exit fails such a pipeline)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
manifest=scripts/test-programs.txt
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# The scripts scripts/test.sh runs (directly, or through a test or another script).
stage_scripts=(scripts/test.sh scripts/common.sh scripts/podman.sh scripts/podman-lib.sh
  scripts/podman-debian.sh scripts/podman-debian/check-apt scripts/podman-debian/check-built
  scripts/podman-debian/check-user scripts/podman-manifest.py scripts/gluster.sh
  scripts/live-cd.sh scripts/stress.sh scripts/deps-audit.sh scripts/package.sh
  scripts/package-debian.sh tests/common/nameless_ops.pl)

# The package list of test.sh's dependency step: the `ensure_packages` command at the start of
# a line, with its backslash-continued lines.
listed_packages() {
  sed -n '/^ensure_packages /,/[^\\]$/p' scripts/test.sh | tr -d '\\' | tr ' \t' '\n\n' |
    grep -v -e '^ensure_packages$' -e '^$'
}

# Every word of the sources that could be a program name: the words of each string literal of
# the Rust tests (comments dropped) and of each non-comment line of the scripts.
source_words() {
  python3 - "${stage_scripts[@]}" <<'PY'
import glob, re, sys
words = set()
def add(text):
    for w in re.split(r"[\s;|&()<>`'\"{}=,$\[\]\\]+", text):
        if re.fullmatch(r"[a-z][a-z0-9_.+-]*[a-z0-9]", w):
            words.add(w)
for f in glob.glob("tests/**/*.rs", recursive=True):
    src = re.sub(r"//[^\n]*", "", open(f).read())
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"', src):
        add(m.group(1))
for f in sys.argv[1:]:
    for line in open(f):
        add(re.sub(r"(^|\s)#.*", "", line))
print("\n".join(sorted(words)))
PY
}

# owners PATH...: prints "PATH<TAB>PACKAGE" for each PATH owned by a Debian package. dpkg may
# know a file by another name (/bin/x for /usr/bin/x, or its symlink's target): all the names
# are asked in one dpkg-query, which reads every package's file list once.
owners() {
  local line p o c
  declare -A found=()
  while IFS= read -r line; do
    [[ $line == diversion* ]] && continue
    o=${line%%: *}
    found[${line#*: }]=${o%%,*}
  done < <(for p in "$@"; do printf '%s\n' "$p" "${p#/usr}" "$(readlink -f "$p")"; done |
    sort -u | xargs -d '\n' dpkg-query -S 2>/dev/null)
  for p in "$@"; do
    for c in "$p" "${p#/usr}" "$(readlink -f "$p")"; do
      o=${found[$c]:-}
      [ -z "$o" ] || { printf '%s\t%s\n' "$p" "${o%%:*}"; break; }
    done
  done
}

# base_pkg PKG: true when PKG is on every Debian system (Priority required, or Essential).
base_pkg() {
  case "$(dpkg-query -W -f='${Priority} ${Essential}' "$1" 2>/dev/null)" in
    required* | *yes) return 0 ;;
  esac
  return 1
}

audit() { # WITHOUT: a package to leave out of the list ("" for none); prints problems
  local without=$1 list prog pkg path owner
  list=$(listed_packages | grep -vx -- "${without:-@none@}" || true)
  local programs not_run
  programs=$(grep -v -e '^\s*#' -e '^-not-run' -e '^\s*$' "$manifest" | awk '{print $1, $2}')
  not_run=$(sed -n 's/^-not-run //p' "$manifest" | tr ' ' '\n')
  # 1. Every program listed is installed, from its package, and that package is in the list.
  local progs=() pkgs=() paths=() i
  while read -r prog pkg; do
    if [ "${prog#/}" != "$prog" ]; then path=$prog; else path=$(type -P "$prog" || true); fi
    if [ -z "$path" ] || [ ! -e "$path" ]; then
      echo "missing: $prog is not installed (package $pkg)"
      continue
    fi
    progs+=("$prog") pkgs+=("$pkg") paths+=("$path")
  done <<<"$programs"
  declare -A owner_of=()
  while IFS=$'\t' read -r path owner; do owner_of[$path]=$owner; done < <(owners "${paths[@]}")
  for i in "${!progs[@]}"; do
    prog=${progs[$i]} pkg=${pkgs[$i]} owner=${owner_of[${paths[$i]}]:-}
    [ "$owner" = "$pkg" ] || echo "manifest: $prog (${paths[$i]}) comes from package '${owner:-none}', not $pkg"
    grep -qx -- "$pkg" <<<"$list" || base_pkg "$pkg" ||
      echo "unlisted: $prog needs package $pkg, which scripts/test.sh does not install"
  done
  # 2. Every listed package provides something the suite uses.
  for pkg in $list; do
    grep -qx -- "$pkg" <<<"$(awk '{print $2}' <<<"$programs")" ||
      echo "unused: scripts/test.sh installs $pkg, which no program of $manifest comes from"
  done
  # 3. What a stage script installs by itself (when run alone) is in the list too.
  local stage_pkgs
  stage_pkgs=$(grep -h -e 'ensure_packages ' -e '^pkgs=(' "${stage_scripts[@]:1}" | grep -v '^\s*#' |
    sed 's/.*ensure_packages //; s/^pkgs=(//; s/[)|&>].*//' | tr ' ' '\n' | grep -E '^[a-z0-9][a-z0-9.+-]+$' || true)
  for pkg in $stage_pkgs; do
    grep -qx -- "$pkg" <<<"$list" ||
      echo "stage: a stage script installs $pkg by itself; scripts/test.sh must install it first"
  done
}

# Every word of the sources that names a program on this machine from a package outside
# Debian's base set must be in the manifest (as a program, or on the -not-run line).
audit_words() {
  local known words=() paths=() w p owner pkg
  known=$( (grep -v -e '^\s*#' -e '^-not-run' -e '^\s*$' "$manifest" | awk '{print $1}'
    sed -n 's/^-not-run //p' "$manifest" | tr ' ' '\n') | sort -u)
  for w in $(source_words | comm -23 - <(printf '%s\n' "$known")); do
    p=$(type -P "$w" || true)
    [ -n "$p" ] && words+=("$w") && paths+=("$p")
  done
  declare -A base=()
  while read -r pkg; do base[$pkg]=1; done < <(dpkg-query -W -f='${Package} ${Priority} ${Essential}\n' |
    awk '$2 == "required" || $3 == "yes" {print $1}')
  declare -A owner_of=()
  while IFS=$'\t' read -r p owner; do owner_of[$p]=$owner; done < <(owners "${paths[@]}")
  for i in "${!words[@]}"; do
    owner=${owner_of[${paths[$i]}]:-}
    [ -n "$owner" ] || continue # not from a package (the toolchain, the binary under test)
    [ -n "${base[${owner%%:*}]:-}" ] && continue
    echo "unknown: the sources name ${words[$i]} ($owner): add it to $manifest (and its package to test.sh)"
  done
}

case "${1:-}" in
  --without)
    out=$(audit "${2:?--without needs a package}")
    [ -z "$out" ] || { printf '%s\n' "$out"; exit 1; }
    echo "deps-audit: no problem found without $2"
    ;;
  --self-test)
    bad=0
    for pkg in $(listed_packages); do
      if [ -z "$(audit "$pkg")" ]; then
        echo "self-test: dropping $pkg from the list goes unnoticed"
        bad=1
      fi
    done
    [ "$bad" = 0 ] && echo "deps-audit self-test: dropping any one of $(listed_packages | wc -l) packages is caught"
    exit "$bad"
    ;;
  "")
    out=$(audit ""; audit_words)
    [ -z "$out" ] || { printf '%s\n' "$out"; exit 1; }
    echo "deps-audit: $(grep -c -v -e '^\s*#' -e '^-not-run' -e '^\s*$' "$manifest") programs, $(listed_packages | wc -l) packages, all installed and listed"
    ;;
  *) echo "usage: scripts/deps-audit.sh [--without PKG | --self-test]" >&2; exit 2 ;;
esac
