#!/usr/bin/env bash
# Prepare the project's virtual environment (idempotent; a second run returns at once).
#
#   bash run_scripts/setup.sh            # creates ./.venv
#   VCLIP_VENV=/path/venv bash run_scripts/setup.sh
#
# A torch that the base Python already has (GPU nodes bring their own) is reused through
# --system-site-packages and pinned for every later pip call, so it is never replaced.
# Without one, VCLIP_TORCH (default "torch==2.14.1 torchvision==0.29.1") is installed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VCLIP_VENV:-$root/.venv}
base_python=${PYTHON:-python3}
torch_spec=${VCLIP_TORCH:-torch==2.14.1 torchvision==0.29.1}
stamp="$venv/.setup-$(cat "$root/pyproject.toml" "$root/setup.py" "$root/run_scripts/setup.sh" | sha1sum | cut -c1-16)"

if [ -f "$stamp" ] && "$venv/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('cn_clip_ext') is None)" 2>/dev/null; then
  exit 0
fi

log() { echo "[setup] $*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
  if "$base_python" -c "import torch" 2>/dev/null; then
    log "reusing the torch of $base_python"
    "$base_python" -m venv --system-site-packages "$venv"
  else
    "$base_python" -m venv "$venv"
  fi
fi
py="$venv/bin/python"
pip() { "$py" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$py" -c "import torch" 2>/dev/null; then
  log "installing $torch_spec"
  # shellcheck disable=SC2086
  pip $torch_spec
fi
# From here on the installed torch is a constraint: nothing may replace it.
constraints="$venv/torch-constraint.txt"
"$py" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$constraints"
if ! "$py" -c "import torchvision" 2>/dev/null; then
  log "installing a torchvision that matches $(cat "$constraints")"
  pip -c "$constraints" torchvision
fi

log "installing this project with every extra and the test tools, then cn_clip 1.6.0"
pip -c "$constraints" -e "$root[test]"
# cn_clip pins lmdb==1.3.0, which has no wheel for current Pythons; this project declares cn_clip's real
# needs (lmdb>=1.4 among them). Installed last and without its dependencies, nothing pip resolves here
# sees the pin, so no conflict is reported (a later `pip check` still lists it: that is the pin, not a fault).
pip -c "$constraints" --no-deps "cn_clip==1.6.0"
"$py" -c "import cn_clip_ext, cn_clip.clip" 
touch "$stamp"
log "ready: $venv"
