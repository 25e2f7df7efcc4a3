#!/usr/bin/env bash
# A python3 base image without Docker Hub: Debian 12 (python 3.11) from the Debian archive.
#
#   deploy/base_image.sh [TAG]          # default fedseg/base:bookworm; needs root and debootstrap
#                                       # (installed with apt-get where missing)
#
# Used by deploy/images.sh when python:3.11-slim-bookworm cannot be pulled. The root filesystem
# is made with `debootstrap --variant=minbase` (python3, python3-venv, ca-certificates only),
# trimmed of docs, man pages, locales and apt lists, and imported with `docker import`.
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SUITE (bookworm).
set -euo pipefail

TAG="${1:-fedseg/base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${DEBIAN_SUITE:-bookworm}"

die() { echo "base_image.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "debootstrap needs root"
if ! command -v debootstrap >/dev/null; then
  command -v apt-get >/dev/null || die "debootstrap is not installed and there is no apt-get"
  echo "base_image.sh: installing debootstrap (apt)" >&2
  (apt-get install -y -qq -o DPkg::Lock::Timeout=300 debootstrap >/dev/null 2>&1 \
    || { apt-get update -qq -o DPkg::Lock::Timeout=300 >/dev/null 2>&1 \
         && apt-get install -y -qq -o DPkg::Lock::Timeout=300 debootstrap >/dev/null 2>&1; }) \
    || die "debootstrap is not installed and apt-get could not install it"
fi
command -v docker >/dev/null || die "docker CLI not found"

ROOTFS="$(mktemp -d /tmp/fedseg-rootfs.XXXXXX)"
cleanup() {
  # debootstrap mounts /proc (and more) inside the root; never delete through a mount.
  for m in dev/pts dev proc sys; do umount -l "$ROOTFS/$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$ROOTFS" "$ROOTFS.log"
}
trap cleanup EXIT

echo "base_image.sh: debootstrap $SUITE from $MIRROR (a few minutes)" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$SUITE" "$ROOTFS" "$MIRROR" > "$ROOTFS.log" 2>&1 \
  || { tail -20 "$ROOTFS.log" >&2; die "debootstrap failed (log above)"; }

# What a container never needs: package caches and lists, docs, man pages, translations.
rm -rf "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/* \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
  "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
find "$ROOTFS"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
# The same sources as the official debian images, for `apt-get update` in derived images.
printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
  "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "$SUITE" > "$ROOTFS/etc/apt/sources.list"

tar -C "$ROOTFS" --numeric-owner --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' -c . \
  | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "fedseg base: debootstrap $SUITE minbase + python3" - "$TAG" > /dev/null
echo "base_image.sh: built $TAG" >&2
