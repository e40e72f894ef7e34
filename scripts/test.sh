#!/usr/bin/env bash
# Run the project's checks: ruff, then pytest (offline). Extra arguments go to pytest, e.g.
#   bash scripts/test.sh tests/test_assets.py -k gpt2
# Exit status: pytest's when it fails, otherwise ruff's (so lint errors still fail CI).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup_env.sh
source scripts/setup_env.sh

export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
export WANDB_MODE="${WANDB_MODE:-offline}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

ruff_rc=0
echo "[test] ruff check ." >&2
ruff check . || ruff_rc=$?

pytest_rc=0
echo "[test] python -m pytest $*" >&2
python -m pytest "$@" || pytest_rc=$?

if [[ $pytest_rc -ne 0 ]]; then
    exit "$pytest_rc"
fi
exit "$ruff_rc"
