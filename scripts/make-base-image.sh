#!/usr/bin/env bash
# Makes the Debian base image that the `cpu` profile and the tests build on, without a registry:
# debootstrap a minimal bookworm with Python, then `docker import` it. The tag is a hash of the
# debootstrap parameters, so the image is made once per machine and reused by content.
#   scripts/make-base-image.sh              -> prints e.g. orchestrator/base-bookworm:3f2a9c0d1e4b5a67
#   scripts/make-base-image.sh --print-ref  -> only prints the reference it would make
#   scripts/make-base-image.sh --without-python -> orchestrator/base-bookworm-nopython:<tag>, a
#       base like a CUDA runtime image: no python3, no InfiniBand libraries (the tests of the
#       image's system stage build on it)
# Env: BASE_SUITE (bookworm), BASE_MIRROR (http://deb.debian.org/debian), BASE_NAME
# (orchestrator/base-bookworm), DOCKER_HOST (which daemon to import into).
set -euo pipefail
log() { echo "$*" >&2; }

print_ref=false; python=true
for arg in "$@"; do
  case "$arg" in
    --print-ref) print_ref=true ;;
    --without-python) python=false ;;
    *) log "unknown option $arg (use --print-ref, --without-python)"; exit 2 ;;
  esac
done
suite="${BASE_SUITE:-bookworm}"
mirror="${BASE_MIRROR:-http://deb.debian.org/debian}"
variant="minbase"
if $python; then
  name="${BASE_NAME:-orchestrator/base-${suite}}"
  include="python3,python3-venv,python3-pip,ca-certificates"
else
  name="${BASE_NAME:-orchestrator/base-${suite}-nopython}"
  include="ca-certificates"
fi
# Bump `recipe` when this script changes what goes into the image.
recipe="1"
tag="$(printf 'recipe=%s\nsuite=%s\nvariant=%s\ninclude=%s\nmirror=%s\n' \
  "$recipe" "$suite" "$variant" "$include" "$mirror" | sha256sum | cut -c1-16)"
ref="${name}:${tag}"
if $print_ref; then echo "$ref"; exit 0; fi

if docker image inspect "$ref" >/dev/null 2>&1; then
  log "base image $ref already present"
  echo "$ref"
  exit 0
fi

command -v debootstrap >/dev/null || { log "debootstrap is missing: apt-get install -y debootstrap"; exit 1; }
root="$(mktemp -d /var/tmp/orch-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
log "debootstrap $suite into $root (about 70 s)"
debootstrap --variant="$variant" --include="$include" "$suite" "$root" "$mirror" >"$root.log" 2>&1 || {
  tail -n 20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# Smaller image, nothing machine-specific: apt caches and the host's resolv.conf go.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/etc/resolv.conf
log "docker import $ref"
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap $variant $suite +$include" - "$ref" >/dev/null
echo "$ref"
