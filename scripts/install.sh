#!/usr/bin/env bash
# Creates the virtual environment and installs medcls into it.
# usage: scripts/install.sh VENV [EXTRAS]   e.g. scripts/install.sh .venv test
set -euo pipefail
venv=${1:-.venv}
extras=${2:-}
python=${PYTHON:-python3}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# CPU set-up for this machine: the torch/torchvision pair that lies on the local
# wheel cache. Override TORCH_SPEC for another machine, e.g. a CUDA build:
#   TORCH_SPEC="torch torchvision" scripts/install.sh .venv
torch_spec=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    echo "installing PyTorch ($torch_spec) into $venv ..."
    # shellcheck disable=SC2086
    pip install $torch_spec
fi
target="."
[ -n "$extras" ] && target=".[$extras]"
echo "installing medcls$([ -n "$extras" ] && echo "[$extras]") into $venv ..."
pip install -e "$target"

# The test extra opens HTML reports in a real headless Chromium: Debian's package
# (Playwright drives it; no browser download).
if [[ ",$extras," == *",test,"* ]] && ! command -v chromium >/dev/null 2>&1; then
    echo "installing chromium (Debian package, for the report and web page tests) ..."
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium
fi
