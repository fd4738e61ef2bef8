#!/usr/bin/env bash
# Set up the verified mmmod stack in a virtual environment (default: ./.venv).
#
#   bash tools/setup_env.sh            # idempotent; fast when nothing changed
#
# Order matters: torch first, then mmcv compiled against that torch (full ops, no build
# isolation: an isolated build has no torch and silently skips the ops), then the rest.
# Built mmcv wheels are kept OUTSIDE the checkout, keyed by python + torch version, so that a
# fresh clone installs in minutes and a torch change triggers a rebuild (pip's own wheel cache
# keys on the source archive only and would silently reuse a wheel built for another torch).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MMMOD_VENV:-$root/.venv}
cache=${MMMOD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmmod}
py=${PYTHON:-python3}
MMCV_VERSION=2.1.0

log() { printf '[setup_env] %s\n' "$*" >&2; }

# A stamp over everything that decides the environment: re-running is a no-op when unchanged.
stamp_src=$(cat "$root"/requirements/*.txt "$root/setup.py" "$0" | sha256sum | cut -c1-16)
if [[ -f "$venv/.mmmod-stamp" && "$(cat "$venv/.mmmod-stamp")" == "$stamp_src" ]]; then
  log "environment up to date: $venv"
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating virtual environment $venv"
  "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"
pip() { "$vpy" -m pip --disable-pip-version-check "$@"; }

pip install -q --upgrade pip 'setuptools>=77.0.3,<82' wheel ninja
log "installing torch (requirements/torch.txt)"
pip install -q -r "$root/requirements/torch.txt"

torch_ver=$("$vpy" -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$("$vpy" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
wheel_dir="$cache/wheels/mmcv-$MMCV_VERSION/$py_tag-torch$torch_ver"

has_ops() { "$vpy" - <<'PY' 2>/dev/null
import importlib.metadata as md, sys
from mmcv.ops import nms, roi_align  # noqa: F401  compiled ops load
import torch
from mmcv.ops import nms as _n
b = torch.tensor([[0., 0., 1., 1.]]); s = torch.tensor([1.])
_n(b, s, 0.5)
sys.exit(0 if md.version('mmcv') == '2.1.0' else 1)
PY
}

if has_ops; then
  log "mmcv $MMCV_VERSION with compiled ops already installed"
else
  whl=$(ls "$wheel_dir"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)
  if [[ -z "$whl" ]]; then
    log "building mmcv $MMCV_VERSION against torch $torch_ver (about 16 minutes on 2 cores)"
    mkdir -p "$wheel_dir"
    tmp=$(mktemp -d)
    pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$tmp" "mmcv==$MMCV_VERSION"
    tar -xzf "$tmp/mmcv-$MMCV_VERSION.tar.gz" -C "$tmp"
    # torch >= 2.10 headers need C++20; mmcv 2.1.0's setup.py hard-codes -std=c++17 for the ops
    # (the last -std flag wins, so CXXFLAGS cannot override it).
    sed -i "s/'-std=c++17'/'-std=c++20'/g" "$tmp/mmcv-$MMCV_VERSION/setup.py"
    # mmcv's setup.py imports torch and pkg_resources; addict/yapf/etc. come later via deps.
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      pip wheel --no-build-isolation --no-deps --no-cache-dir -w "$tmp/dist" "$tmp/mmcv-$MMCV_VERSION"
    mv "$tmp"/dist/mmcv-*.whl "$wheel_dir"/
    rm -rf "$tmp"
    whl=$(ls "$wheel_dir"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)
  else
    log "reusing cached mmcv wheel $whl"
  fi
  pip install -q --force-reinstall --no-deps "$whl"
fi

log "installing the OpenMMLab stack and test requirements"
# mmcv's own dependencies (addict, yapf, ...) are resolved here with mmcv already in place.
pip install -q "mmcv==$MMCV_VERSION" -r "$root/requirements/runtime.txt" -r "$root/requirements/tests.txt"
pip install -q --no-deps -e "$root"

has_ops || { log "ERROR: mmcv compiled ops do not load; delete $wheel_dir and rerun"; exit 1; }
"$vpy" -c 'import mmmod, mmpretrain, mmseg, mmdet; print("mmmod", mmmod.__version__)' >&2
echo "$stamp_src" > "$venv/.mmmod-stamp"
log "done: $venv"
