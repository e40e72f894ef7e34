#!/usr/bin/env bash
# The project's main job (recipes/main_job.py): distil SmolLM2-135M-Instruct offline with counterfactual
# role reversal + CDA, evaluate teacher and student, print the comparison and write the report to runs/main.
# Extra arguments are passed to recipes/main_job.py (e.g. --steps 20, --wandb, -- --key value).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup_env.sh
source scripts/setup_env.sh

export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
export WANDB_MODE="${WANDB_MODE:-offline}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

exec python recipes/main_job.py "$@"
