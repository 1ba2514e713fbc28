#!/usr/bin/env bash
# The one prepared device check: every GPU path of the trainer, one PASS / FAIL / SKIP line each
# (benchmarks/gpu_check.py says what each check does). Within 8 minutes on one H100.
#
#   bash benchmarks/gpu_check.sh --wheels .whl [--out DIR] [--only CHECKS]   # a GPU machine
#   bash benchmarks/gpu_check.sh --dry-run                                    # CPU, tiny model
#
# A GPU machine with no network whose python3 has only torch and torchvision gets the rest as
# wheel files beside the repo (--wheels DIR: open_clip_torch, ftfy, wcwidth, braceexpand,
# webdataset; docs/benchmarks.md has the pip download command); they are installed into a
# temporary folder, never into that python. PYTHON picks the interpreter (default: this repo's
# .venv if there is one, else python3). Exit status 1 when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
wheels=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels="${2:?--wheels needs a folder}"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exec "$py" benchmarks/gpu_check.py --help ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -n "$wheels" ]; then
  site="${TMPDIR:-/tmp}/gpu_check_site"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$py" benchmarks/gpu_check.py "${args[@]}"
