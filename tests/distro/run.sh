#!/usr/bin/env bash
# The test suite on another Debian userland: `make distro-test DISTRO=trixie|sid`.
#
# Builds (once, cached under build/distro/<distro>/) a minimal debootstrap
# rootfs holding python3 and what python-prctl builds against, copies the
# working tree into it, and runs `make test` there as an unprivileged user
# (uid 1000), in private mount and pid namespaces whose root is the rootfs.
# Same kernel, another glibc and another Python: trixie has 3.13, sid 3.14
# (with the public `concurrent.interpreters`).
#
# The root is switched with pivot_root, not chroot: the kernel refuses
# CLONE_NEWUSER to a chrooted process, and nsactor's sandboxes need it.
#
# Needs root (debootstrap, mounts) and the network (Debian's archive, PyPI).
# Env: DEBIAN_MIRROR (default http://deb.debian.org/debian), PYTEST_ARGS
# (passed to `make test`), DISTRO_REBUILD=1 (rebuild the rootfs), DISTRO_SRC
# (the git checkout to test; default: this one, with uncommitted changes).
set -euo pipefail

distro=${1:-${DISTRO:-}}
case "$distro" in
  trixie) want_py=3.13 ;;
  sid) want_py=3.14 ;;
  *) echo "usage: $0 trixie|sid   (or: make distro-test DISTRO=trixie|sid)" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
  echo "distro-test needs root: it runs debootstrap and mounts the rootfs (run it with sudo)" >&2
  exit 2
fi
for tool in unshare setpriv pivot_root tar; do
  command -v "$tool" >/dev/null || { echo "distro-test needs $tool (util-linux)" >&2; exit 2; }
done

repo=$(cd "$(dirname "$0")/../.." && pwd)
checkout=$(cd "${DISTRO_SRC:-$repo}" && pwd)
base="$repo/build/distro/$distro"
root="$base/rootfs"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
tester_uid=1000
log() { printf '[distro-test %s] %s\n' "$distro" "$*"; }

in_root() {  # run a command as root chrooted in the rootfs (apt only: no user namespaces needed)
  chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"
}

build_rootfs() {
  if ! command -v debootstrap >/dev/null; then
    if command -v apt-get >/dev/null; then
      log "installing debootstrap"
      apt-get install -y -qq debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
    else
      echo "distro-test needs debootstrap (install it with your package manager)" >&2; exit 2
    fi
  fi
  rm -rf "$base"
  mkdir -p "$base"
  log "debootstrap $distro from $mirror into $root (a few minutes, once)"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-dev,gcc,libc6-dev,libcap-dev,make,mount,ca-certificates \
    "$distro" "$root.tmp" "$mirror" >"$base/debootstrap.log" 2>&1 \
    || { tail -20 "$base/debootstrap.log"; exit 1; }
  mv "$root.tmp" "$root"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  mount -t proc proc "$root/proc"
  trap 'umount "$root/proc"' EXIT
  if ! in_root sh -c "command -v python$want_py" >/dev/null; then
    # sid's default python3 may still be the previous minor: add the one we test.
    log "python3 is $(in_root python3 --version); installing python$want_py"
    in_root apt-get install -y -qq "python$want_py" "python$want_py-venv" "python$want_py-dev" >/dev/null
  fi
  umount "$root/proc"
  trap - EXIT
  echo "tester:x:$tester_uid:$tester_uid:nsactor tester:/home/tester:/bin/sh" >>"$root/etc/passwd"
  echo "tester:x:$tester_uid:" >>"$root/etc/group"
  install -d -o "$tester_uid" -g "$tester_uid" "$root/home/tester"
  touch "$base/.built"
}

if [ "${DISTRO_REBUILD:-}" = 1 ]; then rm -f "$base/.built"; fi
if [ ! -e "$base/.built" ]; then
  t0=$(date +%s)
  build_rootfs
  log "rootfs built in $(( $(date +%s) - t0 )) s"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The host's trust store, in case pip reaches PyPI through an intercepting proxy.
if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/host-ca-bundle.crt"
fi

# The working tree (tracked and new files, not ignored ones), fresh each run;
# the .venv made inside by `make test` is kept between runs.
src="$root/home/tester/nsactor"
mkdir -p "$src"
find "$src" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
(cd "$checkout" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -C "$src" -xpf -
# make rebuilds the venv when pyproject.toml is newer than it; mtimes of
# different checkouts do not order, so compare contents instead.
sum=$(sha256sum <"$src/pyproject.toml")
if [ "$sum" != "$(cat "$base/venv.pyproject.sha256" 2>/dev/null)" ]; then
  rm -rf "$src/.venv"
  echo "$sum" >"$base/venv.pyproject.sha256"
fi
chown -R "$tester_uid:$tester_uid" "$root/home/tester"

log "$(chroot "$root" sh -c "python$want_py --version; ldd --version | head -1")"
if [ "$want_py" = 3.14 ] && ! chroot "$root" "python$want_py" -c 'import concurrent.interpreters'; then
  echo "python$want_py in $distro has no concurrent.interpreters: this leg proves nothing" >&2; exit 1
fi
log "make test as uid $tester_uid inside $root"
start=$(date +%s)
set +e
# Private mount and pid namespaces: the rootfs becomes / via pivot_root, the
# old root is detached, then the suite runs as the unprivileged tester.
unshare --mount --pid --fork --propagation private -- /bin/sh -es -- "$root" "$tester_uid" "${PYTEST_ARGS:-}" <<'INNER'
root=$1 uid=$2 pytest_args=$3
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -o remount,bind,ro "$root/sys"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mkdir -p "$root/.oldroot"
cd "$root"
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot
ca=; [ -e /etc/ssl/host-ca-bundle.crt ] && ca=/etc/ssl/host-ca-bundle.crt
exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --inh-caps=-all \
  env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/home/tester LANG=C.UTF-8 ${ca:+PIP_CERT=$ca} \
  ${CI:+CI=$CI} PYTEST_ARGS="-rs $pytest_args" \
  sh -c 'cd /home/tester/nsactor && exec make test'
INNER
rc=$?
set -e
log "exit $rc after $(( $(date +%s) - start )) s"
exit $rc
