"""What ``python -m eval`` takes from the user, checked before any work, and how it says what is wrong.

* A model must be a causal LM whose weights all come from its checkpoint: ``AutoModelForCausalLM``
  happily builds a BERT folder into ``BertLMHeadModel`` (an encoder predicting masked tokens, run as if
  it were left-to-right), or fills an LM head missing from a checkpoint with random numbers; either way
  the report would be full of meaningless numbers. :func:`load_causal_lm_checked` refuses both, from the
  config before the weights load and from transformers' loading info after (``missing_keys``: weights
  that were randomly initialised; tied embeddings are not missing).
* A model's name (``--model NAME=PATH``) may name files or folders of the report: :func:`check_model_name`.
* :func:`run_cli`: a user error is one line and exit 2; ``FAIRDISTILL_DEBUG=1`` shows the traceback (the
  same contract as ``distill.train`` and the application layer's ``fairdistill.errors``, which ``eval``
  cannot import).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import torch

DEBUG_ENV = "FAIRDISTILL_DEBUG"


class ModelLoadError(ValueError):
    """A model folder ``python -m eval`` cannot evaluate; the message says why and what to pass instead."""


def _causal_class_names() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def check_causal_lm_config(config: Any, path: str) -> None:
    """Refuse a config that is not a left-to-right language model."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    saved_as = list(getattr(config, "architectures", None) or [])
    what = f"'{path}' is a {model_type} model" + (f" saved as {', '.join(saved_as)}" if saved_as else "")
    fix = "pass a causal (left-to-right) language model folder, e.g. a fairdistill student or GPT-2"
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(f"{what}, not a causal language model; {fix}")
    if not getattr(config, "is_decoder", False):
        if saved_as and not set(saved_as) & _causal_class_names():
            raise ModelLoadError(f"{what}, not a causal language model; {fix}")
        if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            raise ModelLoadError(f"{what}: an encoder (masked LM), not a causal language model; {fix}")


def load_causal_lm_checked(path: str, dtype: torch.dtype) -> torch.nn.Module:
    """``AutoModelForCausalLM.from_pretrained(path, dtype=dtype)``, refused (:class:`ModelLoadError`) when
    the folder is not a causal LM or some of its weights, the LM head above all, were not in it."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    check_causal_lm_config(AutoConfig.from_pretrained(path), path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report's table: we say what matters in one line
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        head = model.get_output_embeddings()
        head_names = {name for name, module in model.named_modules() if module is head and name}
        in_head = [key for key in missing if key.rsplit(".", 1)[0] in head_names]
        what = (
            f"its LM head ({', '.join(in_head)}) is not in the checkpoint and untied from the input "
            "embeddings"
            if in_head
            else f"{len(missing)} weights are not in the checkpoint ({', '.join(missing[:3])}...)"
        )
        raise ModelLoadError(
            f"'{path}': {what}, so transformers initialised them at random; evaluate a complete causal "
            "LM checkpoint (saved with save_pretrained from a *ForCausalLM / *LMHeadModel)"
        )
    return model


def check_model_name(name: str, spec: str) -> str:
    """``name`` if it can name a file or folder of the report (not empty, no separator, not ``.``/``..``)."""
    bad = (
        not name.strip()
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or os.path.isabs(name)
        or any(ord(c) < 32 for c in name)
    )
    if bad:
        raise ValueError(
            f"--model {spec}: the name {name!r} is not a plain name (it may become a folder of the report); "
            "use --model NAME=PATH with letters, digits and . _ - + in NAME"
        )
    return name


def run_cli(main: Callable[[], int]) -> int:
    """``main()``, with a user error (a bad value, file, folder or model) printed as one line; exit 2."""
    try:
        return main()
    except (ValueError, OSError) as err:
        if os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes"):
            raise
        print(f"error: {err}\n(set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
        return 2
