#!/usr/bin/env bash
# One GPU check in one command (issue 17 §2): environment, bf16 throughput and MFU (GPT-2- and
# SmolLM2-shaped teachers, plain KD and CF-KD at 0/30/100% gendered rows), KD loss peak memory, and
# accelerate launches with FSDP2 / DeepSpeed ZeRO-3. See bench/gpu_check.py for what is measured and how.
#
#   bash bench/gpu_check.sh [--cpu --tiny] [--out DIR] [--tokenizer-dir DIR] [--smollm2-tokenizer-dir DIR]
#
# Runs from a source checkout without installing it (the repository goes on PYTHONPATH); PYTHON picks
# the interpreter (default python3). Writes DIR/gpu_check.json after every section.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
exec "${PYTHON:-python3}" "${repo}/bench/gpu_check.py" "$@"
