"""Building students: fewer-layer copies of the teacher, any model from a config, or LoRA copies.

Three ways to get a student, matching the paper's variants:

* :func:`student_from_teacher_layers` -- the DistilGPT-2 / DistilBERT recipe for any HF causal LM: keep a
  subset of the teacher's decoder blocks (plus embeddings, final norm and head) and distil into it.
* :func:`student_from_config` / :func:`student_from_pretrained` -- any architecture, randomly initialised
  or loaded; distillation only needs the student to share the teacher's vocabulary.
* :func:`lora_student` -- the "fine-tuned" variant: a copy of the teacher with LoRA adapters, trained
  against the frozen original. :func:`merge_lora` folds the adapters back in for export.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from distill.models import DTYPE_KWARG, _explain_load_error, load_causal_lm, resolve_dtype

__all__ = [
    "count_parameters",
    "decoder_layers",
    "default_layer_map",
    "lora_student",
    "merge_lora",
    "student_from_config",
    "student_from_pretrained",
    "student_from_teacher_layers",
]

# Per-layer lists some configs carry (Qwen2/Gemma `layer_types`, SmolLM3 `no_rope_layers`): a student keeps
# the entries of the layers it keeps, so each copied block still gets the attention it was trained with.
logger = logging.getLogger(__name__)

_PER_LAYER_CONFIG_FIELDS = ("layer_types", "no_rope_layers")
# Tie-breakers when a model has several ModuleLists as long as its layer count.
_DECODER_LIST_NAMES = ("layers", "h", "blocks", "layer", "decoder_layers")


# ----------------------------------------------------------------------------------------------------
# Layer selection
# ----------------------------------------------------------------------------------------------------


def default_layer_map(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spaced teacher layers for a student, first and last kept.

    ``round(linspace(0, n_teacher - 1, n_student))`` with halves rounded up, in exact integer arithmetic
    (no float ties): 12 -> 6 gives DistilGPT-2's ``[0, 2, 4, 7, 9, 11]``, 30 -> 6 gives
    ``[0, 6, 12, 17, 23, 29]``. The spacing is at least 1, so the result is strictly increasing. A
    one-layer student keeps layer 0, the block the embeddings feed.
    """
    for name, value in (("n_teacher", n_teacher), ("n_student", n_student)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if n_student > n_teacher:
        raise ValueError(
            f"a student cannot have more layers than its teacher ({n_student} > {n_teacher}); "
            f"pass n_student between 1 and {n_teacher}"
        )
    if n_student == 1:
        return [0]
    span, steps = n_teacher - 1, n_student - 1
    # floor(i * span / steps + 1/2) == (2 * i * span + steps) // (2 * steps)
    return [(2 * i * span + steps) // (2 * steps) for i in range(n_student)]


def _validate_layers(layers: Sequence[int], n_teacher: int) -> list[int]:
    layers = list(layers)
    if not layers:
        raise ValueError(f"layers is empty; pick at least one teacher layer in [0, {n_teacher - 1}]")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"layers must be integers in [0, {n_teacher - 1}], got {layer!r}")
        if not 0 <= layer < n_teacher:
            raise ValueError(
                f"layer {layer} is out of range: the teacher has {n_teacher} layers, valid indices are "
                f"[0, {n_teacher - 1}]"
            )
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers {layers} has duplicates; each teacher layer can be copied once")
    if layers != sorted(layers):
        raise ValueError(
            f"layers {layers} must be strictly increasing (blocks keep the teacher's order); "
            f"did you mean {sorted(layers)}?"
        )
    return layers


def _num_layers(config: PretrainedConfig) -> int:
    n = getattr(config.get_text_config(decoder=True), "num_hidden_layers", None)
    if not isinstance(n, int):
        raise ValueError(f"{type(config).__name__} has no integer num_hidden_layers; cannot pick layers")
    return n


def decoder_layers(model: PreTrainedModel) -> tuple[str, nn.ModuleList]:
    """The decoder-block ``ModuleList`` and its state-dict prefix, found without per-architecture code.

    It is the ``nn.ModuleList`` as long as ``config.num_hidden_layers`` whose entries share one class
    (GPT-2: ``transformer.h``, Llama / SmolLM2 / Qwen: ``model.layers``).
    """
    n = _num_layers(model.config)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) == n
        and len({type(block) for block in module}) == 1
        and any(True for _ in module.parameters())
    ]
    if len(candidates) > 1:
        preferred = [c for c in candidates if c[0].rsplit(".", 1)[-1] in _DECODER_LIST_NAMES]
        candidates = preferred if len(preferred) == 1 else candidates
    if len(candidates) != 1:
        found = [name for name, _ in candidates] or "none"
        raise ValueError(
            f"could not find the decoder blocks of {type(model).__name__}: expected exactly one "
            f"nn.ModuleList of {n} identical blocks, found {found}"
        )
    return candidates[0]


# ----------------------------------------------------------------------------------------------------
# Students from teacher layers
# ----------------------------------------------------------------------------------------------------


def _student_config(teacher_config: PretrainedConfig, layers: list[int]) -> PretrainedConfig:
    config = copy.deepcopy(teacher_config)
    text_config = config.get_text_config(decoder=True)
    n_teacher = _num_layers(teacher_config)
    for field in _PER_LAYER_CONFIG_FIELDS:
        values = getattr(text_config, field, None)
        if isinstance(values, (list, tuple)) and len(values) == n_teacher:
            setattr(text_config, field, type(values)(values[i] for i in layers))
    # GPT-2's `n_layer` (and similar) are aliases of `num_hidden_layers` through `attribute_map`.
    text_config.num_hidden_layers = len(layers)
    return config


def _remap_state_dict(
    state_dict: dict[str, torch.Tensor], prefix: str, layers: list[int]
) -> dict[str, torch.Tensor]:
    """Keep the chosen blocks, renumbered ``<prefix>.<old>.<rest>`` -> ``<prefix>.<new>.<rest>``."""
    new_index = {old: new for new, old in enumerate(layers)}
    block_prefix = prefix + "."
    out = {}
    for key, tensor in state_dict.items():
        if not key.startswith(block_prefix):
            out[key] = tensor
            continue
        index, rest = key[len(block_prefix) :].split(".", 1)
        if int(index) in new_index:
            out[f"{block_prefix}{new_index[int(index)]}.{rest}"] = tensor
    return out


def student_from_teacher_layers(
    teacher: PreTrainedModel,
    layers: Sequence[int] | None = None,
    num_layers: int | None = None,
) -> PreTrainedModel:
    """A student made of some of the teacher's decoder blocks (the DistilGPT-2 initialisation).

    Works for any HF causal LM: the config is copied with fewer layers, a fresh model of the teacher's
    class is built from it, and the teacher's embeddings, position embeddings, chosen blocks (renumbered),
    final norm and LM head are copied in with a strict ``load_state_dict``. Building fresh modules, rather
    than deleting blocks from a deep copy, gives every block the right ``layer_idx`` for the KV cache.

    Args:
        teacher: the model to copy from; it is not modified and shares no tensors with the student.
        layers: teacher block indices to keep, strictly increasing.
        num_layers: the student's depth; layers are then :func:`default_layer_map`. Given together with
            ``layers`` it must equal ``len(layers)``. With neither, the student has half the teacher's
            depth (rounded up), DistilGPT-2's ratio.

    The student has the teacher's dtype and device, tied embeddings stay tied, and it starts in the
    teacher's train/eval mode.
    """
    if not isinstance(teacher, PreTrainedModel):
        raise TypeError(
            f"teacher must be a transformers PreTrainedModel, got {type(teacher).__name__}; for a PEFT "
            f"model pass merge_lora(model)"
        )
    n_teacher = _num_layers(teacher.config)
    if layers is None:
        if num_layers is None:
            num_layers = (n_teacher + 1) // 2
            logger.info("no layers / num_layers given: keeping %d of %d layers", num_layers, n_teacher)
        layers = default_layer_map(n_teacher, num_layers)
    else:
        layers = _validate_layers(layers, n_teacher)
        if num_layers is not None and num_layers != len(layers):
            raise ValueError(
                f"num_layers={num_layers} but layers={layers} has {len(layers)} entries; pass one of them"
            )

    renumbered = layers != list(range(len(layers)))
    if renumbered and getattr(teacher.config, "scale_attn_by_inverse_layer_idx", False):
        logger.warning(
            "scale_attn_by_inverse_layer_idx=True: attention scaling depends on a block's position, so the "
            "copied blocks %s will not compute exactly what they did in the teacher",
            layers,
        )
    prefix, _ = decoder_layers(teacher)
    state_dict = _remap_state_dict(teacher.state_dict(), prefix, layers)
    param = next(teacher.parameters())
    student = type(teacher)(_student_config(teacher.config, layers))
    student.to(device=param.device, dtype=teacher.dtype)
    result = student.load_state_dict(state_dict, strict=True)
    if result.missing_keys or result.unexpected_keys:  # strict=True raises first; belt and braces
        raise RuntimeError(f"layer copy mismatch: {result}")
    if teacher.generation_config is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)
    student.train(teacher.training)
    return student


# ----------------------------------------------------------------------------------------------------
# Students from a config or a checkpoint
# ----------------------------------------------------------------------------------------------------


def _vocab_size_of(source: Any) -> int:
    """A vocabulary size from an int, a model (its output width), a config or a tokenizer."""
    if isinstance(source, int) and not isinstance(source, bool):
        return source
    if isinstance(source, PreTrainedModel):
        head = source.get_output_embeddings()
        if head is not None and hasattr(head, "weight"):
            return head.weight.shape[0]
        return source.config.get_text_config(decoder=True).vocab_size
    if isinstance(source, PretrainedConfig):
        return source.get_text_config(decoder=True).vocab_size
    if hasattr(source, "__len__") and hasattr(source, "convert_tokens_to_ids"):
        return len(source)
    raise TypeError(
        f"vocab_size_from must be an int, a model, a config or a tokenizer, got {type(source).__name__}"
    )


def _as_config(config_or_path_or_dict: Any, trust_remote_code: bool) -> PretrainedConfig:
    source = config_or_path_or_dict
    if isinstance(source, PretrainedConfig):
        return copy.deepcopy(source)
    if isinstance(source, dict):
        kwargs = dict(source)
        model_type = kwargs.pop("model_type", None)
        if model_type is None:
            raise ValueError(
                "a config dict needs a 'model_type' (e.g. 'gpt2', 'llama') to know which architecture "
                "to build"
            )
        return AutoConfig.for_model(model_type, **kwargs)
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        try:
            return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        except OSError as err:
            clearer = _explain_load_error(name, err)
            if clearer is None:
                raise
            raise clearer from err
    raise TypeError(
        f"expected a PretrainedConfig, a dict with 'model_type', or a path / Hub id, "
        f"got {type(source).__name__}"
    )


def student_from_config(
    config_or_path_or_dict: PretrainedConfig | dict | str | os.PathLike,
    *,
    vocab_size_from: Any = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A randomly initialised causal LM of any architecture.

    Args:
        config_or_path_or_dict: a config object, a dict with ``model_type`` (``{"model_type": "gpt2",
            "n_layer": 6}``), a ``config.json`` file, a directory holding one, or a Hub id.
        vocab_size_from: make the vocabulary match the teacher's -- distillation compares logits token
            by token, so the sizes must agree. An int, the teacher model (its LM-head width, which may be
            padded beyond the tokenizer), a config, or a tokenizer (``len(tokenizer)``).
        dtype: as in :func:`distill.models.load_causal_lm`; None keeps torch's default (float32).
    """
    config = _as_config(config_or_path_or_dict, trust_remote_code)
    if vocab_size_from is not None:
        config.get_text_config(decoder=True).vocab_size = _vocab_size_of(vocab_size_from)
    torch_dtype = resolve_dtype(dtype)
    kwargs = {DTYPE_KWARG: torch_dtype} if isinstance(torch_dtype, torch.dtype) else {}
    return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, **kwargs)


def student_from_pretrained(name_or_path: str | os.PathLike, **load_kwargs) -> PreTrainedModel:
    """A pretrained student (Hub id, directory or GGUF file); see :func:`distill.models.load_causal_lm`."""
    return load_causal_lm(name_or_path, **load_kwargs)


# ----------------------------------------------------------------------------------------------------
# LoRA students
# ----------------------------------------------------------------------------------------------------


def lora_student(
    teacher: PreTrainedModel,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | Sequence[str] | None = None,
):
    """The paper's "fine-tuned" student: a copy of the teacher with trainable LoRA adapters.

    The teacher is deep-copied first: ``get_peft_model`` rewrites modules in place, and the frozen teacher
    must keep producing the original predictions. Only the adapters train.

    Args:
        target_modules: peft's module names; default ``"all-linear"`` (every linear layer but the LM head).
            GPT-2's ``Conv1D`` layers store weights transposed; ``fan_in_fan_out`` is set for them.

    Returns:
        a ``peft.PeftModel``.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if not isinstance(teacher, PreTrainedModel):
        raise TypeError(f"teacher must be a transformers PreTrainedModel, got {type(teacher).__name__}")
    base = copy.deepcopy(teacher)
    targets = "all-linear" if target_modules is None else target_modules
    if not isinstance(targets, str):
        targets = list(targets)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in base.modules()),
    )
    return get_peft_model(base, config)


def merge_lora(model) -> PreTrainedModel:
    """Fold LoRA adapters into the base weights and return the plain model (for export / evaluation).

    The PEFT wrapper is consumed: its base model is modified in place.
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError(
            f"merge_lora expects a peft.PeftModel (from lora_student), got {type(model).__name__}"
        )
    return model.merge_and_unload(safe_merge=True)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; tied weights count once (``parameters()`` de-duplicates)."""
    trainable = total = 0
    for param in model.parameters():
        n = getattr(param, "ds_numel", None) or param.numel()  # DeepSpeed ZeRO-3 shards report ds_numel
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
