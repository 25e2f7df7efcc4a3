#!/usr/bin/env bash
# Build the fedseg images, also where Docker Hub and download.pytorch.org cannot be reached.
#
#   deploy/images.sh [--ca FILE]... [--base IMAGE] [--torch-index URL] [--no-cache] [TARGET...]
#
# TARGET: aggregator, site-agent (default both). Images: ${FEDSEG_REGISTRY:-fedseg}/aggregator
# and .../site-agent, tagged ${FEDSEG_TAG:-dev}. Both come from one deploy/Dockerfile whose
# shared stages install the project once; the second build reuses the first one's layers.
#
# Base image (--base or BASE_IMAGE): default python:3.11-slim-bookworm when it is present or can
# be pulled; otherwise fedseg/base:bookworm, made once with deploy/base_image.sh (debootstrap
# from the Debian archive, needs root).
# torch (--torch-index or TORCH_INDEX_URL): default https://download.pytorch.org/whl/cpu when the
# host reaches it; otherwise a local index from `pip download` on the host (CPU wheel only: a
# wheel without "+cpu" in its name is refused), kept in $FEDSEG_WHEELHOUSE (default
# ~/.cache/fedseg/wheelhouse) and copied into deploy/wheelhouse/ for the build.
# Extra CA certificates (--ca FILE, repeatable, or FEDSEG_BUILD_CA=file1:file2): copied to
# deploy/extra-ca/ for pip in the build and for the images' trust store.
# Builder: BuildKit where a CLI can drive it (buildx, or a CLI before 23 such as Debian 12's
# /usr/bin/docker, whose BuildKit client is built in): it skips the stages a target does not use
# and shares one cache between both targets. Else the legacy builder. DOCKER_BUILDKIT=0 forces
# the legacy builder. No `# syntax=` line, so BuildKit needs no frontend image. DOCKER names the
# CLI (default docker).
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER="${DOCKER:-docker}"
REGISTRY="${FEDSEG_REGISTRY:-fedseg}"
TAG="${FEDSEG_TAG:-dev}"
BASE="${BASE_IMAGE:-}"
TORCH_INDEX="${TORCH_INDEX_URL:-}"
TORCH_VERSION="${TORCH_VERSION:-$(python3 -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb")); print(next(r.split("==")[1] for r in d["project"]["dependencies"] if r.startswith("torch==")))')}"
DEFAULT_BASE=python:3.11-slim-bookworm
LOCAL_BASE=fedseg/base:bookworm
DEFAULT_TORCH_INDEX=https://download.pytorch.org/whl/cpu
WHEELHOUSE_CONTEXT=deploy/wheelhouse
# Kept outside the checkout, so a fresh clone (CI) reuses the download and the build cache.
WHEELHOUSE="${FEDSEG_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedseg/wheelhouse}"
CA_DIR=deploy/extra-ca
NO_CACHE=()
TARGETS=()
CAS=()
IFS=: read -r -a CAS <<< "${FEDSEG_BUILD_CA:-}"

say() { echo "images.sh: $*" >&2; }
die() { say "$*"; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --ca) CAS+=("$2"); shift 2 ;;
    --base) BASE="$2"; shift 2 ;;
    --torch-index) TORCH_INDEX="$2"; shift 2 ;;
    --no-cache) NO_CACHE=(--no-cache); shift ;;
    aggregator|site-agent) TARGETS+=("$1"); shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(aggregator site-agent)
"$DOCKER" info > /dev/null 2>&1 || die "docker does not answer (deploy/docker_daemon.sh starts one)"

# -- builder ------------------------------------------------------------------------------------
buildkit_cli() {  # a CLI that runs BuildKit builds, printed; nothing when none does
  local cli major
  if "$DOCKER" buildx version > /dev/null 2>&1; then echo "$DOCKER"; return; fi
  for cli in "$DOCKER" /usr/bin/docker; do
    command -v "$cli" > /dev/null 2>&1 || continue
    major="$("$cli" version --format '{{.Client.Version}}' 2> /dev/null | cut -d. -f1)"
    if [[ "$major" =~ ^[0-9]+$ ]] && [ "$major" -lt 23 ]; then echo "$cli"; return; fi
  done
}
PROGRESS=()
if [ "${DOCKER_BUILDKIT:-}" != 0 ] && cli="$(buildkit_cli)" && [ -n "$cli" ]; then
  DOCKER="$cli"
  export DOCKER_BUILDKIT=1
  PROGRESS=(--progress plain)
  say "builder: BuildKit ($DOCKER)"
else
  export DOCKER_BUILDKIT=0
  say "builder: legacy (no CLI here drives BuildKit: install docker-buildx for it)"
fi

# -- extra CA certificates ----------------------------------------------------------------------
# Given CAs replace the ones an earlier run copied; without any, deploy/extra-ca/ stays as it is.
n=0
[ -z "${CAS[*]}" ] || rm -f "$CA_DIR"/images-sh-*.crt
for ca in "${CAS[@]}"; do
  [ -n "$ca" ] || continue
  grep -q "BEGIN CERTIFICATE" "$ca" 2>/dev/null || die "--ca $ca: expected a PEM certificate file"
  n=$((n + 1))
  # Named after the file, not the position: the same CAs in another order keep the layer cache.
  cp "$ca" "$CA_DIR/images-sh-$(basename "$ca" .crt).crt"
done
[ "$n" = 0 ] || say "trusting $n extra CA certificate(s) in the build and the images"

# -- base image ---------------------------------------------------------------------------------
if [ -z "$BASE" ]; then
  if "$DOCKER" image inspect "$DEFAULT_BASE" > /dev/null 2>&1 \
      || timeout 60 "$DOCKER" pull -q "$DEFAULT_BASE" > /dev/null 2>&1; then
    BASE="$DEFAULT_BASE"
  else
    say "$DEFAULT_BASE cannot be pulled; using $LOCAL_BASE (Debian archive)"
    "$DOCKER" image inspect "$LOCAL_BASE" > /dev/null 2>&1 || deploy/base_image.sh "$LOCAL_BASE"
    BASE="$LOCAL_BASE"
  fi
fi

# -- torch index --------------------------------------------------------------------------------
reachable() { timeout 20 python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=15)' "$1" > /dev/null 2>&1; }

local_torch_index() {
  local files="$WHEELHOUSE/files" simple="$WHEELHOUSE/simple" wheel
  mkdir -p "$WHEELHOUSE"
  if ! ls "$files"/torch-"$TORCH_VERSION"+cpu-*.whl > /dev/null 2>&1; then
    rm -rf "$files" "$simple"
    mkdir -p "$files"
    say "downloading torch==$TORCH_VERSION (CPU) and its dependencies into $files"
    # The pinned torch from local sources only (pip's find-links), then its dependencies.
    python3 -m pip download -q --no-deps --no-index "torch==$TORCH_VERSION" -d "$files" 2> /dev/null \
      || python3 -m pip download -q --no-deps --index-url "$DEFAULT_TORCH_INDEX" "torch==$TORCH_VERSION" -d "$files" \
      || die "no torch==$TORCH_VERSION wheel found (set TORCH_INDEX_URL to an index that has it)"
  fi
  wheel="$(ls "$files"/torch-"$TORCH_VERSION"*.whl | head -1)"
  case "$wheel" in *+cpu-*) ;; *) die "$wheel is not a CPU wheel; refusing a multi-GB CUDA build" ;; esac
  TORCH_INDEX="file:///wheelhouse/simple"
  if [ -f "$simple/torch/index.html" ]; then
    copy_wheelhouse  # made by an earlier run for this torch version: reuse it
    return 0
  fi
  # Wheels for the image's python (3.11, glibc x86_64), whatever the host's python is.
  python3 -m pip download -q --only-binary=:all: --python-version 3.11 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "$wheel" -d "$files" 2> "$WHEELHOUSE/pip.log" \
    || { cat "$WHEELHOUSE/pip.log" >&2; die "pip download of torch's dependencies failed"; }
  # A PEP 503 index: simple/<project>/index.html linking to the files.
  python3 - "$files" "$simple" <<'PY'
import html, pathlib, re, sys
files, simple = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
projects: dict[str, list[str]] = {}
for f in sorted(files.iterdir()):
    if f.suffix == ".whl" or f.name.endswith(".tar.gz"):
        name = re.split(r"-\d", f.name, maxsplit=1)[0]
        projects.setdefault(re.sub(r"[-_.]+", "-", name).lower(), []).append(f.name)
for project, names in projects.items():
    folder = simple / project
    folder.mkdir(parents=True, exist_ok=True)
    links = "".join(f'<a href="../../files/{html.escape(n)}">{html.escape(n)}</a><br>\n' for n in names)
    (folder / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
index = "".join(f'<a href="{p}/">{p}</a><br>\n' for p in sorted(projects))
(simple / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{index}</body></html>\n")
PY
  copy_wheelhouse
}

# Into the build context, times kept: the same files give the same layer (cache hit).
copy_wheelhouse() {
  rm -rf "${WHEELHOUSE_CONTEXT:?}/files" "$WHEELHOUSE_CONTEXT/simple" "$WHEELHOUSE_CONTEXT/pip.log"
  cp -a "$WHEELHOUSE/files" "$WHEELHOUSE/simple" "$WHEELHOUSE_CONTEXT/"
}

if [[ " ${TARGETS[*]} " == *" site-agent "* ]] && [ -z "$TORCH_INDEX" ]; then
  if reachable "$DEFAULT_TORCH_INDEX/torch/"; then
    TORCH_INDEX="$DEFAULT_TORCH_INDEX"
  else
    say "$DEFAULT_TORCH_INDEX cannot be reached; building a local CPU torch index"
    local_torch_index
  fi
fi
TORCH_INDEX="${TORCH_INDEX:-$DEFAULT_TORCH_INDEX}"

# -- build --------------------------------------------------------------------------------------
for target in "${TARGETS[@]}"; do
  image="$REGISTRY/$target:$TAG"
  say "building $image (base $BASE, torch from $TORCH_INDEX)"
  start=$(date +%s)
  "$DOCKER" build "${NO_CACHE[@]}" "${PROGRESS[@]}" -f deploy/Dockerfile --target "$target" \
    --build-arg "BASE_IMAGE=$BASE" \
    --build-arg "TORCH_VERSION=$TORCH_VERSION" \
    --build-arg "TORCH_INDEX_URL=$TORCH_INDEX" \
    ${PIP_INDEX_URL:+--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL"} \
    -t "$image" . >&2
  size=$("$DOCKER" image inspect --format '{{.Size}}' "$image")
  say "built $image in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB"
done
