#!/usr/bin/env bash
# Regenerate constraints.txt: the exact versions the test suite last passed with.
#   pip install uv && bash scripts/lock.sh
# Every extra is resolved, for every Python quantcl supports (--universal); torch is held at the
# CPU build the README installs first. After regenerating, run the suite (`bash .ci/run`) before
# committing: the file is a claim that these versions pass.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="2.13.0"
uv pip compile pyproject.toml --all-extras --universal --python-version 3.10 \
    --override <(echo "torch==${TORCH_VERSION}") \
    --custom-compile-command "bash scripts/lock.sh" \
    --quiet -o constraints.txt
