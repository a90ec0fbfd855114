#!/usr/bin/env bash
# The wheels bench/gpu_check.sh installs on a bare GPU machine (python3 with torch and torchvision,
# no package index): the control plane's other dependencies and pycocotools, one folder per
# CPython version, manylinux x86_64 or pure wheels only, no dependencies resolved (numpy,
# typing_extensions and MarkupSafe come with torch, torchvision and jinja2 there). docs/gpu.md.
#   scripts/make-gpu-wheelhouse.sh [--python-version 3.12]... [DIR]
# Default versions: 3.12 (the GPU machines) and 3.11 (this project's CI and dev machines);
# default DIR: wheelhouse/ in the checkout (git-ignored: carry it to the GPU machine).
# Env: PYTHON (whose pip downloads; default .venv/bin/python, else python3).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
# Pinned to the versions the project is tested with (pip list in .venv); invoke: paramiko 5's.
wheels="SQLAlchemy==2.1.9 alembic==1.20.1 Mako==1.4.3 paramiko==5.1.0 invoke==3.0.3 bcrypt==5.0.0
  cryptography==51.0.1 cffi==2.1.1 pycparser==3.12 PyNaCl==1.6.2 pycocotools==2.0.11 click==8.5.1
  rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 Pygments==2.21.0"
versions=()
dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version)
      case "${2:-}" in 3.[0-9]|3.[0-9][0-9]) versions+=("$2") ;;
        *) echo "error: --python-version ${2:-} is not like 3.12" >&2; exit 2 ;; esac
      shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) dir=$1 ;;
  esac
  shift
done
[ ${#versions[@]} -gt 0 ] || versions=(3.12 3.11)
dir=${dir:-$here/wheelhouse}
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$here/.venv/bin/python" ]; then python="$here/.venv/bin/python"; else python=python3; fi
fi

for version in "${versions[@]}"; do
  tag="cp${version/./}"
  out="$dir/$tag"
  marker="$out/.complete"
  if [ -f "$marker" ] && [ "$(cat "$marker")" = "$wheels" ]; then
    echo "$out: already complete" >&2
    continue
  fi
  mkdir -p "$out"
  # glibc 2.28 at least: torch 2.x's own wheels need it, so every machine running torch has it.
  # shellcheck disable=SC2086
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$out" \
    --python-version "$version" --implementation cp --abi "$tag" --abi abi3 --abi none \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any $wheels >&2
  printf '%s' "$wheels" >"$marker"
  echo "$out: $(find "$out" -name '*.whl' | wc -l) wheels, $(du -sh "$out" | cut -f1)" >&2
done
echo "$dir"
