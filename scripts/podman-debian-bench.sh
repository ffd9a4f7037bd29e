# shellcheck shell=bash disable=SC2154,SC2034 # variables of podman-debian.sh, which sources this
# scripts/podman-debian.sh --bench [--runs=N]: the podman workloads of scripts/podman-lib.sh
# timed rootful with three storage drivers: stratafs and fuse-overlayfs 1.10
# (/usr/bin/fuse-overlayfs) as overlay mount_program, and the native overlay driver (kernel
# overlayfs). Sourced by podman-debian.sh after its set-up (scratch dir, tarball, mount
# program, pd_set_podman); not a script of its own.
#
# Each run of each driver starts from an empty private storage and times:
#   import   podman import of the Debian minbase tarball
#   apt      apt-get update + apt-get install $PD_APT_BIG in a container; the .debs come from a
#            host directory filled once before the timing (bind-mounted on
#            /var/cache/apt/archives), so the mirror's speed is not measured, only unpacking,
#            maintainer scripts and the storage
#   commit   podman commit of that container
#   build    podman build of the 12-step Containerfile FROM the committed image
# Drivers take turns (A B C, then B C A, ...); the table gives the median of the runs.

bench_drivers=(stratafs fuse-overlayfs native)
archives="$scratch/archives"
mkdir -p "$archives"
results="$scratch/bench.tsv"
: >"$results"

bench_time() { # DRIVER RUN WORKLOAD CMD...: runs CMD, appends "DRIVER WORKLOAD SECS" (or FAIL)
  local driver=$1 run=$2 wl=$3 t0 rc
  shift 3
  t0=$(now)
  "$@" >"$scratch/bench-$driver-$run-$wl.out" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then
    printf '%s\t%s\t%s\n' "$driver" "$wl" "$(secs "$t0")" >>"$results"
    say "  $driver run $run: $wl $(secs "$t0") s"
  else
    printf '%s\t%s\tFAIL\n' "$driver" "$wl" >>"$results"
    say "  $driver run $run: $wl FAILED (exit $rc):"
    tail -n 3 "$scratch/bench-$driver-$run-$wl.out" | cut -c1-300 | sed 's/^/    | /'
  fi
  return $rc
}

bench_once() { # DRIVER RUN
  local driver=$1 run=$2 home="$scratch/b$2-$1"
  pd_set_podman rootful "$driver" "$home" "$(mount_program "$driver")"
  PD_APT_RUNARGS=(-v "$archives:/var/cache/apt/archives")
  bench_time "$driver" "$run" import wl_import "$PD_TARBALL" localhost/debian &&
    bench_time "$driver" "$run" apt wl_apt bench-apt localhost/debian "$PD_APT_BIG" &&
    bench_time "$driver" "$run" commit wl_commit bench-apt localhost/pd-apt &&
    bench_time "$driver" "$run" build wl_build "$scratch/bench-build" localhost/pd-built
  "${pm[@]}" rm -af >/dev/null 2>&1
  "${pm[@]}" rmi -af >/dev/null 2>&1
  remove_scratch "$home" || note "left $home behind"
}

section "Benchmark: podman workloads, rootful, $runs runs, drivers ${bench_drivers[*]}"
say "packages: $PD_APT_BIG; mount programs: stratafs $bin, fuse-overlayfs $(/usr/bin/fuse-overlayfs --version 2>&1 | grep -m1 "^fuse-overlayfs:")"
pd_write_build_context "$scratch/bench-build" localhost/pd-apt git
# The .debs, once, outside the timing (native driver; the storage is thrown away).
pd_set_podman rootful native "$scratch/b0-fill"
PD_APT_RUNARGS=(-v "$archives:/var/cache/apt/archives")
t0=$(now)
# bc too: the build's step 1 installs it.
if ! { wl_import "$PD_TARBALL" localhost/debian && wl_apt bench-fill localhost/debian "$PD_APT_BIG bc"; } >"$scratch/bench-fill.out" 2>&1; then
  tail -n 5 "$scratch/bench-fill.out"
  die "could not fetch the packages for the benchmark"
fi
"${pm[@]}" rm -af >/dev/null 2>&1
"${pm[@]}" rmi -af >/dev/null 2>&1
remove_scratch "$scratch/b0-fill" || true
say "fetched $(find "$archives" -name '*.deb' | wc -l) .debs ($(du -sm "$archives" | cut -f1) MiB) in $(secs "$t0") s"

for ((r = 1; r <= runs; r++)); do
  n=${#bench_drivers[@]}
  for ((i = 0; i < n; i++)); do
    bench_once "${bench_drivers[$(((i + r - 1) % n))]}" "$r"
  done
done

section "Medians of $runs runs (seconds; rootful; lower is better)"
awk -F'\t' -v drivers="${bench_drivers[*]}" '
  { v[$1, $2] = v[$1, $2] " " $3 }
  function median(s,   a, n, i, j, t, bad) {
    n = split(s, a, " "); bad = 0
    for (i = 1; i <= n; i++) if (a[i] == "FAIL") bad++
    if (bad) return "FAIL(" bad "/" n ")"
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n ? a[int((n + 1) / 2)] : "-"
  }
  END {
    nd = split(drivers, d, " "); nw = split("import apt commit build", w, " ")
    printf "| %-14s |", "driver"; for (j = 1; j <= nw; j++) printf " %8s |", w[j]; print ""
    for (i = 1; i <= nd; i++) {
      printf "| %-14s |", d[i]
      for (j = 1; j <= nw; j++) printf " %8s |", ((d[i], w[j]) in v) ? median(v[d[i], w[j]]) : "-"
      print ""
    }
  }' "$results"
say "raw times: $results (every run)"
cp "$results" "$repo/target/podman-debian-bench.tsv" 2>/dev/null && say "copied to target/podman-debian-bench.tsv"
true
