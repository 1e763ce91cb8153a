#!/usr/bin/env bash
# Installs AI Studio into a virtualenv. The README, the test command and the Docker image all use
# this script. AISTUDIO_VENV: venv folder (default .venv). AISTUDIO_EXTRAS: comma list (test,bench,gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${AISTUDIO_VENV:-.venv}
extras=${AISTUDIO_EXTRAS:-}
python=${AISTUDIO_PYTHON:-$(command -v python3.11 || command -v python3)}

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11), "AI Studio needs Python 3.11"'
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
# torch/torchvision are pinned in pyproject.toml; on these machines pip takes them from a local cache.
"$venv/bin/python" -m pip install --disable-pip-version-check -q -e "$spec" ${AISTUDIO_PIP_ARGS:-}
