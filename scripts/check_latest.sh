#!/usr/bin/env bash
# Run the test suite against the newest release of every dependency (torch aside), in a fresh venv:
#   bash scripts/check_latest.sh [pytest args...]
# It prints the packages whose installed version differs from constraints.txt, then runs pytest.
# A failure here is drift a user's unpinned `pip install quantcl` would meet; fix it, then
# refresh constraints.txt (bash scripts/lock.sh) and run `bash .ci/run`.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
work="$(mktemp -d)"
export QUANTCL_CACHE="$work/cache"
python3 -m venv "$work/venv" && . "$work/venv/bin/activate"
pip install "${TORCH_SPEC:-torch==2.13.0}"
pip install --upgrade --upgrade-strategy eager -e ".[test,humaneval]" "${TORCH_SPEC:-torch==2.13.0}"
python - <<'PY'
import re
from importlib.metadata import distributions
from packaging.markers import Marker

locked = {}
for line in open("constraints.txt"):
    m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)\s*(?:;\s*(.+))?$", line.strip())
    if m and (m.group(3) is None or Marker(m.group(3)).evaluate()):
        locked[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
newer = []
for d in distributions():
    name = re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower()
    if name in locked and locked[name] != d.version and not d.version.startswith(locked[name] + "+"):
        newer.append(f"{name} {locked[name]} -> {d.version}")
print("differs from constraints.txt:", ", ".join(sorted(newer)) or "nothing")
PY
python -m pytest "$@"
