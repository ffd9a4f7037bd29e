# shellcheck shell=bash
# podman workloads on a real Debian image, shared by scripts/podman-debian.sh (the real-client
# test stage) and the benchmark of real container workloads (scripts/bench-podman.sh, run by
# scripts/bench.sh --podman).
# Source it after scripts/common.sh; do not run it.
#
# Every podman call goes through the array `pm` (the podman command line with its global
# options: a private storage, one driver), set by pd_set_podman. The workloads:
#   wl_import TAR TAG                  podman import of a rootfs tarball
#   wl_apt NAME IMAGE "PKGS" [SCRIPT]  a container NAME (kept) that runs apt-get update and
#                                      apt-get install PKGS (--network host), then SCRIPT
#   wl_commit NAME TAG                 podman commit of container NAME
#   wl_build CONTEXT TAG               podman build (a context from pd_write_build_context);
#                                      extra options in PD_BUILD_ARGS
#   wl_export_image IMAGE FILE         podman create + podman export of IMAGE to FILE
# PD_APT_TEST is the package set of the test, PD_APT_BIG the heavier one of the benchmark.

# shellcheck disable=SC2034 # PD_* are for the scripts that source this file
PD_APT_TEST="jq make bc"
# shellcheck disable=SC2034
PD_APT_BIG="python3 git make gcc libc6-dev"
# Limits podman.sh uses too: rootless podman cannot raise them above the user's.
PD_RUNARGS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

# pd_debian_tarball SCRATCH: sets PD_TARBALL to a verified tarball of a Debian minbase root
# file system (`debootstrap --variant=minbase CODENAME`, from the mirror apt uses, with the
# host's Debian entries as its sources.list) and PD_TARBALL_NOTE to how it was obtained.
# Kept in /var/cache/stratafs/ (or $STRATAFS_DEBIAN_CACHE) between runs when that directory
# can be written, with a .sha256 (checked at every use) and a .key (debootstrap version,
# variant, codename, mirror and sources: a different key rebuilds it); else built in SCRATCH.
pd_debian_tarball() {
  local scratch=$1 cache=${STRATAFS_DEBIAN_CACHE:-/var/cache/stratafs} codename mirror key tar t0 work
  codename=$(debian_codename)
  mirror=$(apt_debian_mirror "$codename") || { note "apt has no source for $codename"; return 1; }
  key="debootstrap $(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null) --variant=minbase $codename $mirror | $(apt_debian_sources "$codename" | tr '\n' '|')"
  if ! mkdir -p "$cache" 2>/dev/null || ! [ -w "$cache" ]; then
    cache=$scratch
  fi
  tar="$cache/debian-$codename-minbase.tar"
  if [ -f "$tar" ] && [ -f "$tar.sha256" ] && [ -f "$tar.key" ] && [ "$(cat "$tar.key")" = "$key" ] &&
    (cd "$cache" && sha256sum --status -c "$(basename "$tar").sha256"); then
    PD_TARBALL=$tar PD_TARBALL_NOTE="cached $tar (sha256 verified)"
    return 0
  fi
  [ -f "$tar" ] && note "$tar: missing or failed checksum or other key: building it again"
  t0=$(date +%s)
  work=$(mktemp -d "$cache/debootstrap.XXXXXX") || return 1
  if ! debootstrap --variant=minbase "$codename" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    rm -rf --one-file-system "$work"
    return 1
  fi
  apt_debian_sources "$codename" | sed 's/^/deb /' >"$work/rootfs/etc/apt/sources.list"
  # The .debs debootstrap fetched and its package lists: the image starts with neither,
  # as Debian's own images do; `apt-get update` in the container fetches the lists.
  find "$work/rootfs/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -delete
  find "$work/rootfs/var/lib/apt/lists" -maxdepth 1 -type f -delete
  if ! { tar --numeric-owner --xattrs -C "$work/rootfs" -cf "$work/rootfs.tar" . &&
    (cd "$work" && sha256sum rootfs.tar | sed "s# rootfs.tar# $(basename "$tar")#" >rootfs.tar.sha256) &&
    mv "$work/rootfs.tar" "$tar" && mv "$work/rootfs.tar.sha256" "$tar.sha256" &&
    printf '%s\n' "$key" >"$tar.key"; }; then
    rm -rf --one-file-system "$work"
    return 1
  fi
  rm -rf --one-file-system "$work"
  # shellcheck disable=SC2034 # read by the caller
  PD_TARBALL=$tar PD_TARBALL_NOTE="built $tar with debootstrap from $mirror in $(($(date +%s) - t0)) s"
}

# pd_set_podman MODE DRIVER HOME [MOUNT_PROGRAM] [USER]: sets `pm` to podman with a private
# storage under HOME (root, runroot, tmpdir and a storage.conf of its own, so neither the
# host's configuration nor its storage is used). DRIVER: stratafs or fuse-overlayfs (overlay
# with MOUNT_PROGRAM) or native (the kernel overlayfs: overlay with no mount_program). MODE
# rootless runs podman as USER (HOME must belong to USER). runc: crun fails on this host's
# cgroups; cgroupfs and a file event log: no systemd session is needed.
pd_set_podman() {
  local mode=$1 driver=$2 home=$3 mp=${4:-} user=${5:-}
  mkdir -p "$home/root" "$home/runroot" "$home/tmp" "$home/xdg" "$home/home"
  chmod 0700 "$home/xdg"
  {
    printf '[storage]\ndriver = "overlay"\nrunroot = "%s"\ngraphroot = "%s"\n' "$home/runroot" "$home/root"
    printf '[storage.options.overlay]\n'
    [ "$driver" = native ] || printf 'mount_program = "%s"\n' "$mp"
  } >"$home/storage.conf"
  local opts=(--root "$home/root" --runroot "$home/runroot" --tmpdir "$home/tmp"
    --storage-driver overlay --runtime runc --cgroup-manager cgroupfs --events-backend file)
  [ "$driver" = native ] || opts+=(--storage-opt "overlay.mount_program=$mp")
  if [ "$mode" = rootless ]; then
    chown -R "$user:" "$home"
    pm=(runuser -u "$user" -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$home/home"
      XDG_RUNTIME_DIR="$home/xdg" XDG_CONFIG_HOME="$home/home/.config" LC_ALL=C
      CONTAINERS_STORAGE_CONF="$home/storage.conf" podman "${opts[@]}")
  else
    pm=(env CONTAINERS_STORAGE_CONF="$home/storage.conf" podman "${opts[@]}")
  fi
}

# pd_rootless_user USER: makes sure USER (the rootless podman user) exists and has
# /etc/subuid and /etc/subgid ranges (300000-365535 when it has none); says what it has.
pd_rootless_user() {
  local u=$1
  if ! id "$u" >/dev/null 2>&1; then
    useradd -m -s /bin/sh "$u" || die "useradd $u failed"
    say "created user $u"
  fi
  if ! grep -q "^$u:" /etc/subuid; then
    usermod --add-subuids 300000-365535 "$u" && say "added /etc/subuid range 300000-365535"
  fi
  if ! grep -q "^$u:" /etc/subgid; then
    usermod --add-subgids 300000-365535 "$u" && say "added /etc/subgid range 300000-365535"
  fi
  say "$u: uid $(id -u "$u"), subuid $(grep "^$u:" /etc/subuid | head -n1 | cut -d: -f2-), subgid $(grep "^$u:" /etc/subgid | head -n1 | cut -d: -f2-)"
}

wl_import() { # TAR TAG
  "${pm[@]}" import -q - "$2" <"$1"
}

wl_apt() { # NAME IMAGE "PKGS" [SCRIPT]: extra `podman run` options in PD_APT_RUNARGS
  local name=$1 image=$2 pkgs=$3 script=${4:-true}
  "${pm[@]}" run --name "$name" --network host "${PD_RUNARGS[@]}" ${PD_APT_RUNARGS[@]+"${PD_APT_RUNARGS[@]}"} \
    -e DEBIAN_FRONTEND=noninteractive "$image" sh -c \
    "apt-get update -q && apt-get install -y -q --no-install-recommends $pkgs && $script"
}

wl_commit() { # NAME TAG
  "${pm[@]}" commit -q "$1" "$2"
}

wl_build() { # CONTEXT TAG: extra `podman build` options in PD_BUILD_ARGS
  "${pm[@]}" build -q --network host "${PD_RUNARGS[@]}" ${PD_BUILD_ARGS[@]+"${PD_BUILD_ARGS[@]}"} -t "$2" "$1"
}

wl_export_image() { # IMAGE FILE
  local c="pd-export-$$"
  "${pm[@]}" create -q --name "$c" "$1" true >/dev/null && "${pm[@]}" export -o "$2" "$c"
  local rc=$?
  "${pm[@]}" rm -f "$c" >/dev/null 2>&1
  return $rc
}

# pd_write_build_context DIR BASE [PKG]: a Containerfile FROM BASE (an image with apt's package
# lists and PKG, default jq, installed, as wl_apt leaves it) and the directory it COPYs. Twelve steps, each a
# case the kernel overlayfs defines: apt-get install, COPY of a directory, rm -rf and mv of
# lower directories, hard links of lower files, a chmod through one name of a lower hard-link
# pair (the other name must keep its mode), chmod/chown of lower files,
# a user, USER steps and RUN as that user, apt-get remove.
pd_write_build_context() { # DIR BASE [PKG]: PKG (default jq) is removed in step 10
  local dir=$1 base=$2 remove=${3:-jq} t
  t="$dir/tree"
  mkdir -p "$t/sub/deeper" "$t/empty-dir"
  printf 'file one\n' >"$t/file1"
  printf '#!/bin/sh\necho exec\n' >"$t/exec.sh"
  chmod 0755 "$t/exec.sh"
  printf 'a\n' >"$t/sub/a"
  printf 'b\n' >"$t/sub/deeper/b"
  ln -s file1 "$t/link"
  printf 'linked pair\n' >"$t/hl-a"
  ln "$t/hl-a" "$t/hl-b"
  printf 'spaces\n' >"$t/name with spaces"
  # 256 KiB of random bytes (one context serves every driver of a run).
  head -c 262144 /dev/urandom >"$t/big.bin"
  chmod -R a+rX "$dir"
  cat >"$dir/Containerfile" <<EOF
FROM $base
# 1. apt-get install (the package lists come from the parent image)
RUN apt-get install -y -q --no-install-recommends bc && echo '2^10' | bc | grep -qx 1024
# 2. COPY of a directory (files, a subtree, an empty directory, a symlink, a hard-linked pair)
COPY tree /opt/tree
# 3. rm -rf of lower directories: two from the Debian layer, one from the COPY layer
RUN rm -rf /usr/share/doc /usr/share/info /opt/tree/sub/deeper && test ! -e /usr/share/doc
# 4. mv of lower directories
RUN mv /usr/share/man /usr/share/man.moved && mv /opt/tree/sub /opt/tree/sub.moved
# 5. hard links of lower files (issue.net's is never touched again; debian_version and file1
#    are changed through their first name in step 6); a chmod through one name of the lower
#    pair perl/perl5.36.0 (perl must keep its mode)
RUN ln /etc/debian_version /etc/debian_version.link && ln /opt/tree/file1 /opt/tree/file1.link && \\
    ln /etc/issue.net /etc/issue.net.link && chmod 0700 /usr/bin/perl5.36.0 && perl -e 'exit 0'
# 6. chmod and chown of lower files and directories
RUN chmod 0600 /etc/debian_version && chmod 2775 /opt/tree/empty-dir && chmod u+s /opt/tree/exec.sh && \\
    chown 65534:65534 /opt/tree/file1 && chown -R 1000:1000 /opt/tree/sub.moved && chown :65534 /etc/issue
# 7. a user (a fixed password-change date, so the shadow file does not depend on the day)
RUN useradd -m -u 1000 -U -s /bin/sh builder && chage -d 19000 builder
# 8. USER step
USER builder
WORKDIR /home/builder
# 9. RUN as that user: its home, a hard link, a copy of a lower tree it owns, make; no write to /etc
RUN test "\$(id -un)" = builder && echo mine >own && ln own own.link && mkdir -p work/d && \\
    cp /etc/os-release work/d/ && cp -r /opt/tree/sub.moved work/tree-copy && \\
    ! touch /etc/not-mine 2>/dev/null && ! rm -f /etc/debian_version.link 2>/dev/null && \\
    printf 'all:\\n\\t@echo built\\n' >Makefile && make >made
# 10. back to root: apt-get remove of a package installed in a lower layer
USER root
RUN apt-get remove -y -q $remove && ! dpkg -s $remove 2>/dev/null | grep -q '^Status: install ok installed'
# 11. a directory made, filled and renamed in one step; rm of one name of a lower hard-linked pair
RUN mkdir /srv/new && echo x >/srv/new/x && mv /srv/new /srv/renamed && rm /opt/tree/hl-a
# 12. the image's user
USER builder
EOF
}
