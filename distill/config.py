"""``DistillationConfig``: everything a distillation run needs, as ``TrainingArguments`` plus our fields.

One dataclass so that ``HfArgumentParser`` reads it from a YAML recipe and ``--key value`` overrides,
every field carries its help text, and ``__post_init__`` rejects bad values before any model loads.
"""

from __future__ import annotations

import argparse
import functools
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import HfArgumentParser, TrainingArguments

from .losses import COMBINE_MODES, SCOPES

STUDENT_INITS = ("layers", "pretrained", "config", "lora")
LAYER_SELECTIONS = ("even", "scan", "angular")  # distill.layer_selection.LAYER_SELECTION_METHODS
CDA_MODES = ("two_sided", "one_sided")
DTYPES = ("auto", "float32", "bfloat16", "float16")
NONFINITE_POLICIES = ("error", "skip_step")


def _accelerator_available() -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS, ...
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def one_of(choices: tuple[str, ...]) -> str:
    """``--help``'s placeholder for a field with a fixed set of values, e.g. ``{max,mean,expMean}``. A
    placeholder, not argparse ``choices``: values from a YAML recipe bypass argparse, so
    ``__post_init__`` stays the one check, with the same message for both."""
    return "{" + ",".join(choices) + "}"


@dataclass
class DistillationConfig(TrainingArguments):
    # --- teacher -------------------------------------------------------------------------------------
    teacher_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Teacher: a Hub id (gpt2), a local directory, or a .gguf file (dequantised on load)."
        },
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={
            "metavar": one_of(DTYPES),
            "help": "Teacher weights dtype: auto (bf16 when training in bf16, fp16 in fp16, else fp32), "
            "float32, bfloat16 or float16. The frozen teacher only runs forward passes.",
        },
    )
    teacher_revision: str | None = field(
        default=None,
        metadata={"help": "Teacher (and tokenizer) revision on the Hub: a branch, tag or commit hash."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run modelling code shipped with the teacher or student checkpoint (off unless asked: it "
            "executes code from the checkpoint's repository)."
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel of the teacher (a student built from its layers or with LoRA inherits "
            "it) and of a pretrained student: eager, sdpa, flash_attention_2, ... (unset: transformers' "
            "default for the model)."
        },
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={
            "help": "Directory written by `python -m distill.teacher_cache --config <recipe> --out DIR`: the "
            "teacher's top-k log-probabilities (and the counterfactual view's) for every training and eval "
            "block. The targets are rebuilt from it and the teacher is never run (its weights load only "
            "when the student is built from them); the cache must match the recipe's data, teacher and "
            "pair map (checked). Sets remove_unused_columns to false: the cache travels as dataset columns."
        },
    )
    # --- student -------------------------------------------------------------------------------------
    student_init: str = field(
        default="layers",
        metadata={
            "metavar": one_of(STUDENT_INITS),
            "help": "How to build the student: 'layers' copies chosen teacher layers (DistilGPT-2 recipe), "
            "'pretrained' loads student_name_or_path, 'config' initialises student_name_or_path's config "
            "randomly, 'lora' is the teacher plus LoRA adapters (the paper's fine-tuned variant).",
        },
    )
    student_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Student model or config (Hub id or path) for student_init pretrained/config."},
    )
    student_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Teacher layers copied into the student (student_init=layers), e.g. 0 2 4 7 9 11."},
    )
    student_num_layers: int | None = field(
        default=None,
        metadata={
            "help": "Student layer count when student_layers is unset; which teacher layers: "
            "student_layer_selection."
        },
    )
    student_layer_selection: str = field(
        default="even",
        metadata={
            "help": "How student_init=layers picks student_num_layers teacher layers when student_layers is "
            "unset: 'even' spaces them evenly (DistilGPT-2's map), 'scan' removes greedily the layers whose "
            "removal raises the teacher's loss on calibration text least, 'angular' drops the contiguous "
            "block whose input and output hidden states differ least (Gromov et al. 2024). scan/angular "
            "measure on the first layer_selection_tokens tokens of the training blocks (never eval text); "
            "the choice and every score go to the resolved config and the student's config.json."
        },
    )
    layer_selection_tokens: int = field(
        default=4096,
        metadata={
            "help": "Calibration tokens for student_layer_selection scan/angular, taken as whole training "
            "blocks (at least one block_size)."
        },
    )
    layer_selection_block: int = field(
        default=1,
        metadata={
            "help": "Layers student_layer_selection=scan removes per greedy step (a contiguous run of kept "
            "layers): 1 is the finest search; larger is cheaper (a step costs about one teacher pass per "
            "candidate position)."
        },
    )
    student_layer_selection_record: dict | str | None = field(
        default=None,
        metadata={
            "help": "Written by the run, not read: what student_layer_selection chose and measured (kept "
            "layers, every candidate's score, calibration token count and sha256, seconds)."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (student_init=lora)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (student_init=lora)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (student_init=lora)."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Modules LoRA adapts (student_init=lora); default: all linear layers."},
    )
    # --- data ----------------------------------------------------------------------------------------
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Training text: a Hub dataset id, or a local .txt/.jsonl/.json/.parquet/.csv file or dir."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Hub dataset configuration name."}
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    train_split: str = field(
        default="train", metadata={"help": "Training split, slicing allowed: train[:10000]."}
    )
    eval_split: str | None = field(default=None, metadata={"help": "Evaluation split of the same dataset."})
    validation_split_percentage: float = field(
        default=0.0,
        metadata={"help": "Percent of the training split held out for evaluation (when no eval_split)."},
    )
    block_size: int = field(default=512, metadata={"help": "Tokens per packed training sequence."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep at most this many training blocks."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep at most this many eval blocks."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenisation and CDA (datasets.map num_proc)."}
    )
    # --- counterfactual modifications ----------------------------------------------------------------
    perturbation: str | None = field(
        default=None,
        metadata={
            "metavar": one_of(COMBINE_MODES),
            "help": "Teacher-prediction perturbation (counterfactual role reversal): max, mean or expMean. "
            "Unset = plain KD target.",
        },
    )
    perturbation_scope: str = field(
        default="all",
        metadata={
            "metavar": one_of(SCOPES),
            "help": "Combine over the whole vocabulary ('all') or only over gendered tokens ('gendered').",
        },
    )
    cda: str | None = field(
        default=None,
        metadata={
            "metavar": one_of(CDA_MODES),
            "help": "Counterfactual data augmentation of the training text: two_sided, one_sided or unset.",
        },
    )
    swap_names: bool = field(
        default=True,
        metadata={
            "help": "Also swap first names (counterfactuals/data/first_names.tsv, 400 pairs) in the CDA text "
            "and the perturbation's token pair map, as name-swapping CDA does. On by default: without it "
            "a context gendered only by a name ('Mary said that') reads as neutral, and role reversal "
            "would force P(he) = P(she) after it; with it the pronoun preference is kept. "
            "false = the gendered words only."
        },
    )
    # --- loss ----------------------------------------------------------------------------------------
    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of teacher and student."})
    kd_beta: float = field(
        default=0.0,
        metadata={
            "help": "Divergence: 0 = forward KL(teacher||student), 1 = reverse KL, between = generalized JSD."
        },
    )
    alpha_kd: float = field(default=1.0, metadata={"help": "Weight of the distillation (KD) term."})
    alpha_clm: float = field(
        default=0.0, metadata={"help": "Weight of the student's own next-token CE term."}
    )
    alpha_cos: float = field(
        default=0.0, metadata={"help": "Weight of the hidden-state cosine term (needs equal hidden sizes)."}
    )
    scale_kd_by_temperature_squared: bool = field(
        default=True, metadata={"help": "Multiply the KD term by temperature^2 (Hinton et al.)."}
    )
    kd_chunk_size: int = field(
        default=1024, metadata={"help": "Positions per chunk in the KD loss and target (bounds fp32 memory)."}
    )
    joint_teacher_pass: bool = field(
        default=True,
        metadata={
            "help": "Run the teacher on the original rows and the swapped rows in one forward pass "
            "(faster on GPUs); off = two passes (less peak memory)."
        },
    )
    teacher_prefix_sharing: bool = field(
        default=True,
        metadata={
            "help": "Run the counterfactual teacher pass of a swapped row only from its first swapped token: "
            "before it both views read the same context, so the original pass's logits and key/value cache "
            "are reused (exact, not an approximation). Rows swapped at position 0 are read in full (with "
            "joint_teacher_pass, inside the original pass). Off = every swapped row is read again in full. "
            "Not used with a sharded teacher (FSDP, ZeRO-3) or one whose cache cannot be cut (sliding "
            "window): those read the rows in full."
        },
    )
    teacher_suffix_passes: int = field(
        default=4,
        metadata={
            "help": "With teacher_prefix_sharing: at most this many counterfactual passes per batch. Swapped "
            "rows are grouped by their first swapped position (each group starts at its earliest) so that "
            "the teacher reads the fewest tokens; 1 = one pass from the batch's earliest swap. More passes "
            "read fewer tokens, each in a smaller batch: where small batches run inefficiently (a small "
            "teacher on a GPU) fewer passes may be faster."
        },
    )

    # --- safety (issue 18) ----------------------------------------------------------------------------
    nonfinite_policy: str = field(
        default="error",
        metadata={
            "help": "What a non-finite loss term does: 'error' stops the run, naming the term, step and "
            "rows; 'skip_step' drops that optimizer step (no update), counts it (logged as "
            "nonfinite_skipped_steps) and goes on. Non-finite weights are never saved either way."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Allow distill.train to start in a non-empty output_dir, replacing the run there (its "
            "checkpoint-N folders are removed first). Without it a non-empty output_dir is refused unless "
            "resuming (--resume_from_checkpoint latest)."
        },
    )
    lexicon: str | None = field(
        default=None,
        metadata={
            "help": "Gendered word pairs (a .tsv or .json file, as fairdistill-cda --lexicon takes) "
            "replacing the built-in lexicon for CDA and the perturbation's token pair map; swap_names "
            "does not apply."
        },
    )

    fairness_eval: bool = field(
        default=False,
        metadata={
            "help": "At every evaluation also score bias (pronoun gap, ~220 generations of built-in "
            "profession prompts) with eval.callback.FairnessEvalCallback; logged with the eval metrics."
        },
    )

    def __post_init__(self) -> None:
        _check_field_types(self)  # before TrainingArguments reads them: a 1.5 or a list fails here, by name
        _check_ranges(self)
        super().__post_init__()
        if self.dataloader_pin_memory and (self.use_cpu or not _accelerator_available()):
            # Pinned host memory only speeds up copies to an accelerator; without one, torch warns at every
            # DataLoader that it is ignored (Trainer's default is on).
            self.dataloader_pin_memory = False
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError(
                "push_to_hub needs --hub_model_id user/name: the Hub repo to publish the student to"
            )
        if self.teacher_dtype not in DTYPES:
            raise ValueError(f"teacher_dtype={self.teacher_dtype!r}: use one of {', '.join(DTYPES)}")
        if self.student_init not in STUDENT_INITS:
            raise ValueError(f"student_init={self.student_init!r}: use one of {', '.join(STUDENT_INITS)}")
        if self.student_init in ("pretrained", "config") and not self.student_name_or_path:
            raise ValueError(
                f"student_init={self.student_init} needs --student_name_or_path (a Hub id or path)"
            )
        if self.student_init != "layers" and (self.student_layers or self.student_num_layers):
            raise ValueError("student_layers / student_num_layers only apply to student_init=layers")
        if self.student_layers is not None and self.student_num_layers is not None:
            if len(self.student_layers) != self.student_num_layers:
                raise ValueError(
                    f"student_layers has {len(self.student_layers)} entries but student_num_layers="
                    f"{self.student_num_layers}; give one of them"
                )
        if self.student_num_layers is not None and self.student_num_layers < 1:
            raise ValueError(f"student_num_layers must be >= 1, got {self.student_num_layers}")
        if self.student_layer_selection not in LAYER_SELECTIONS:
            raise ValueError(
                f"student_layer_selection={self.student_layer_selection!r}: use one of "
                f"{', '.join(LAYER_SELECTIONS)}"
            )
        if self.student_layer_selection != "even":
            if self.student_init != "layers":
                raise ValueError(
                    f"student_layer_selection={self.student_layer_selection} picks teacher layers for "
                    "student_init=layers; drop it or set student_init=layers"
                )
            if self.student_layers is not None:
                raise ValueError(
                    f"student_layers fixes the layers, so student_layer_selection="
                    f"{self.student_layer_selection} has nothing to choose; give one of them"
                )
            if self.layer_selection_tokens < self.block_size:
                raise ValueError(
                    f"layer_selection_tokens={self.layer_selection_tokens} is less than one training block "
                    f"(block_size={self.block_size}); pass at least {self.block_size}"
                )
        if self.layer_selection_block < 1:
            raise ValueError(f"layer_selection_block must be >= 1, got {self.layer_selection_block}")
        if self.perturbation is not None and self.perturbation not in COMBINE_MODES:
            raise ValueError(
                f"perturbation={self.perturbation!r}: use one of {', '.join(COMBINE_MODES)}, "
                "or leave it unset for plain KD"
            )
        if self.perturbation_scope not in SCOPES:
            raise ValueError(
                f"perturbation_scope={self.perturbation_scope!r}: use one of {', '.join(SCOPES)}"
            )
        if self.cda is not None and self.cda not in CDA_MODES:
            raise ValueError(f"cda={self.cda!r}: use one of {', '.join(CDA_MODES)}, or leave it unset")
        if self.nonfinite_policy not in NONFINITE_POLICIES:
            raise ValueError(
                f"nonfinite_policy={self.nonfinite_policy!r}: use one of {', '.join(NONFINITE_POLICIES)}"
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.kd_beta <= 1.0:
            raise ValueError(f"kd_beta must lie in [0, 1], got {self.kd_beta}")
        weights = {"alpha_kd": self.alpha_kd, "alpha_clm": self.alpha_clm, "alpha_cos": self.alpha_cos}
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise ValueError(f"loss weights must be >= 0 with at least one > 0, got {weights}")
        if self.block_size < 2:
            raise ValueError(f"block_size must be >= 2, got {self.block_size}")
        if self.kd_chunk_size < 1:
            raise ValueError(f"kd_chunk_size must be >= 1, got {self.kd_chunk_size}")
        if self.teacher_suffix_passes < 1:
            raise ValueError(
                f"teacher_suffix_passes must be >= 1 (counterfactual passes per batch), got "
                f"{self.teacher_suffix_passes}"
            )
        if not 0.0 <= self.validation_split_percentage < 100.0:
            raise ValueError(
                f"validation_split_percentage must lie in [0, 100), got {self.validation_split_percentage}"
            )
        if self.lora_r < 1 or self.lora_alpha <= 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError("lora_r must be >= 1, lora_alpha > 0 and lora_dropout in [0, 1)")
        if self.teacher_cache is not None:
            if self.alpha_cos > 0:
                raise ValueError(
                    "alpha_cos > 0 needs the teacher's hidden states, which a teacher cache does not hold: "
                    "set alpha_cos to 0, or drop teacher_cache to run the live teacher"
                )
            # the cache rows are extra dataset columns; Trainer would drop them before compute_loss
            self.remove_unused_columns = False

    def teacher_load_kwargs(self, *, tokenizer: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``load_causal_lm`` (or, with ``tokenizer``, ``load_tokenizer``) of the
        teacher: ``revision``, ``trust_remote_code`` and, for the model, ``attn_implementation``."""
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.teacher_revision is not None:
            kwargs["revision"] = self.teacher_revision
        if self.attn_implementation is not None and not tokenizer:
            kwargs["attn_implementation"] = self.attn_implementation
        return kwargs

    def to_dict(self) -> dict:
        """TrainingArguments.to_dict (which hides ``*_token``), also hiding any other credential-like value
        (``*key*``, ``*secret*``): this dict is what the JSON config and trackers (W&B) record."""
        from .guards import redact_mapping

        return redact_mapping(super().to_dict())


# --- generic checks of every field's type and range, from the dataclass annotations -------------------

_SIMPLE = (bool, int, float, str, type(None))


@functools.cache
def _checkable_types() -> dict[str, tuple]:
    """Field name -> the types its annotation allows: our fields made only of bool/int/float/str/None and
    lists of those, and TrainingArguments' numeric and boolean fields (its __post_init__ rewrites some
    string fields into other types, which a dataclasses.replace copy would then fail on)."""
    hints = typing.get_type_hints(DistillationConfig)
    ours = set(DistillationConfig.__annotations__)
    out = {}
    for f in fields(DistillationConfig):
        if not f.init:
            continue
        hint = hints[f.name]
        members = (
            typing.get_args(hint)
            if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
            else (hint,)
        )
        allowed = []
        for member in members:
            if member in _SIMPLE:
                allowed.append(member)
            elif typing.get_origin(member) is list and all(a in _SIMPLE for a in typing.get_args(member)):
                allowed.append(member)
            else:
                break
        else:
            if f.name in ours or set(allowed) <= {bool, int, float, type(None)}:
                out[f.name] = tuple(allowed)
    return out


def _is_instance(value, kind) -> bool:
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _type_name(kind) -> str:
    if typing.get_origin(kind) is list:
        return f"a list of {_type_name(typing.get_args(kind)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}[
        kind
    ]


def _check_field_types(config) -> None:
    for name, allowed in _checkable_types().items():
        value = getattr(config, name)
        if not any(_is_instance(value, kind) for kind in allowed):
            wanted = " or ".join(_type_name(kind) for kind in allowed)
            raise ValueError(f"{name}={value!r} ({type(value).__name__}): {name} must be {wanted}")
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise ValueError(f"{name}={value!r}: {name} must be a finite number")


# (field, check, what the field must be) for values whose type alone does not make them meaningful
_RANGES = (
    ("max_steps", lambda v: v == -1 or v >= 1, ">= 1, or -1 to train num_train_epochs"),
    ("num_train_epochs", lambda v: v > 0, "> 0"),
    ("learning_rate", lambda v: v >= 0, ">= 0"),
    ("per_device_train_batch_size", lambda v: v >= 1, ">= 1"),
    ("per_device_eval_batch_size", lambda v: v >= 1, ">= 1"),
    ("gradient_accumulation_steps", lambda v: v >= 1, ">= 1"),
    ("weight_decay", lambda v: v >= 0, ">= 0"),
    ("max_grad_norm", lambda v: v >= 0, ">= 0 (0 = no clipping)"),
    ("warmup_steps", lambda v: v >= 0, ">= 0"),
    ("adam_beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("adam_beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("adam_epsilon", lambda v: v > 0, "> 0"),
    ("logging_steps", lambda v: v > 0, "> 0"),
    ("save_steps", lambda v: v > 0, "> 0"),
    ("eval_steps", lambda v: v is None or v > 0, "> 0"),
    ("save_total_limit", lambda v: v is None or v >= 1, ">= 1"),
    ("seed", lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    ("dataloader_num_workers", lambda v: v >= 0, ">= 0"),
    ("ddp_timeout", lambda v: v >= 1, ">= 1 (seconds)"),
    ("temperature", lambda v: v > 0, "> 0"),
    ("max_train_samples", lambda v: v is None or v >= 1, ">= 1 (blocks)"),
    ("max_eval_samples", lambda v: v is None or v >= 1, ">= 1 (blocks)"),
    ("preprocessing_num_workers", lambda v: v is None or v >= 1, ">= 1"),
    ("lora_r", lambda v: v >= 1, ">= 1"),
    ("lora_alpha", lambda v: v > 0, "> 0"),
    ("student_layers", lambda v: v is None or (min(v, default=0) >= 0 and len(set(v)) == len(v) > 0),
     "distinct layer indices >= 0"),
)  # fmt: skip


def _check_ranges(config) -> None:
    for name, ok, what in _RANGES:
        value = getattr(config, name)
        if not ok(value):
            raise ValueError(f"{name}={value!r}: {name} must be {what}")


def config_parser() -> HfArgumentParser:
    """The command-line parser of :class:`DistillationConfig`, with ``--config`` listed in ``--help``
    (``parse_config`` reads the recipe before this parser sees the rest)."""
    parser = HfArgumentParser(
        DistillationConfig,
        description="--config RECIPE.yaml reads a recipe of DistillationConfig fields (recipes/*.yaml); "
        "every --field value listed here overrides it. Fields with a fixed set of values show them as "
        "{a,b,...}.",
    )
    parser.add_argument(
        "--config",
        metavar="RECIPE.yaml",
        default=argparse.SUPPRESS,  # never a field: read by parse_config before the fields are parsed
        help="A YAML recipe of the fields listed here (recipes/*.yaml); the options given override it.",
    )
    return parser
