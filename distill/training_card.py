"""What a distillation run can say about itself, as model-card parts, and the training-only card.

A model card has two kinds of content: what the run *was* (teacher, student, method, loss, data,
training length) -- known to ``distill`` from the resolved config -- and what the student *measures*
(bias, perplexity) -- known only to an evaluation. This module writes the first kind
(:func:`card_parts`) and, from it alone, :func:`training_card`: the card ``distill.train --push_to_hub``
publishes, which makes no claim about bias or quality because nothing was measured. The card with
evaluation results is built above distill and eval (``fairdistill.card``) from the same parts, and is
handed to :func:`distill.publish.publish` as a card builder (a callable taking a :class:`CardContext`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .leak_scan import strip_local_paths
from .models import SMOLLM2_ALIAS
from .run_record import TrainingSummary, read_training_summary
from .trainer import RESOLVED_CONFIG_NAME

__all__ = [
    "CARD_TAGS",
    "CardBuilder",
    "CardContext",
    "CardParts",
    "card_parts",
    "hub_id",
    "parse_model_card",
    "render_card",
    "training_card",
]

CARD_TAGS = ["fairdistill", "knowledge-distillation", "gender-bias", "counterfactual-role-reversal"]
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

# Licenses of teachers we know; anything else gets "other" and a note asking the user to set it.
_KNOWN_LICENSES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(openai-community/)?gpt2(-medium|-large|-xl)?$"), "mit"),
    (re.compile(r"^(distilbert/)?distilgpt2$"), "apache-2.0"),
    (re.compile(r"^HuggingFaceTB/SmolLM2-"), "apache-2.0"),
]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
LOCAL_FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow", ".gguf")

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


@dataclass(frozen=True)
class CardContext:
    """What :func:`distill.publish.publish` knows about the student it publishes; a card builder's input."""

    config: dict[str, Any]  # the resolved run configuration; {} when the run folder has none
    model_name: str  # the title and the model-index name
    base_model: str | None = None  # the teacher's Hub id; None for a local teacher
    repo_id: str | None = None  # where it is pushed; used in the loading snippet
    license: str | None = None  # the user's choice; None: the teacher's when known, else "other"
    adapters: bool = False  # the folder holds LoRA adapters, not a full model
    model_dir: Path | None = None  # the training output folder the student comes from


CardBuilder = Callable[[CardContext], str]


@dataclass
class CardParts:
    """The run-describing pieces of a card; a builder arranges them around its own sections."""

    meta: dict[str, Any]  # YAML front matter
    title: list[str]  # heading and the one-paragraph description
    details: list[str]  # "## Model details" (and the license note)
    training: list[str]  # "## Training": what the run recorded (steps, tokens, losses, versions, W&B)
    usage: list[str]  # "## How to use"
    limitations: list[str] = field(default_factory=list)  # bullets that hold for any fairdistill student
    citations: list[str] = field(default_factory=list)  # BibTeX entries
    teacher_ref: str = "TEACHER"  # how to name the teacher on a command line


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------


def hub_id(name: Any) -> str | None:
    """``name`` when it reads as a Hub id (``gpt2``, ``org/name``), None for local paths and files.

    Metadata such as ``base_model`` and ``datasets`` must name Hub repositories: a local path there is
    meaningless to readers and makes the Hub flag the card.
    """
    if not isinstance(name, str) or not name:
        return None
    if name == SMOLLM2_ALIAS:
        return SMOLLM2_HUB_ID
    if name.startswith(("/", ".", "~")) or name.lower().endswith(LOCAL_FILE_SUFFIXES) or "\\" in name:
        return None
    if not _HUB_ID.match(name) or Path(name).expanduser().exists():
        return None
    return name


def teacher_license(teacher_hub_id: str | None) -> str:
    for pattern, license_id in _KNOWN_LICENSES:
        if teacher_hub_id and pattern.match(teacher_hub_id):
            return license_id
    return "other"


def finite(value: Any) -> float | None:
    """A finite number, or None (missing, NaN, inf): a card never shows or publishes a non-number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


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


def render_card(meta: dict[str, Any], body: list[str]) -> str:
    """YAML front matter and a Markdown body, as the Hub reads them, with every absolute local path cut
    to its last component: whatever a description quotes from the config (a local student, a recorded
    layer-selection source), the card never shows the training machine's paths."""
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return strip_local_paths(f"---\n{front}---\n\n" + "\n".join(body))


# ----------------------------------------------------------------------------------------------------
# Describing the run
# ----------------------------------------------------------------------------------------------------


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
    names = ", first names included" if config.get("swap_names") else ""
    return (
        f"`{mode}` (scope `{scope}`): the teacher also reads the gender-swapped copy of every training "
        f"sequence{names}; its counterfactual next-token distribution is mapped back through the "
        f"gendered-token swap and combined with the original by `{mode}` over {over} (counterfactual role "
        "reversal)"
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
    beta = finite(config.get("kd_beta")) or 0.0
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
    return " + ".join(f"{weight} × {term}" for weight, term in terms if finite(weight))  # zero terms: off


def _describe_data(config: dict[str, Any]) -> str:
    name = config.get("dataset_name")
    if not name:
        return "unknown"
    hub = hub_id(name)
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


def _compact(value: Any, limit: int = 24) -> str:
    """A short, readable rendering of a recorded value (numbers to 4 significant digits)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(_compact(v, limit) for v in value[:limit])
        return f"[{shown}{', …' if len(value) > limit else ''}]"
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_compact(item, limit)}" for key, item in value.items())
    return str(value)


def _describe_layer_selection(config: dict[str, Any]) -> str | None:
    """How the student's layers were chosen, when the run recorded it (``student_layer_*`` keys), as
    recorded: this module does not interpret the selection method's fields."""
    recorded = {
        key: value
        for key, value in sorted(config.items())
        if key.startswith("student_layer_") and value not in (None, "", [], {})
    }
    if not recorded:
        return None
    if len(recorded) == 1:
        return _compact(next(iter(recorded.values())))
    return "; ".join(f"{key}: {_compact(value)}" for key, value in recorded.items())


def _method(config: dict[str, Any]) -> tuple[str, str]:
    """The intervention in a few words, and what it is meant to do (an aim, not a result)."""
    perturbation, cda = config.get("perturbation"), config.get("cda")
    if not config:
        return "a method this card cannot describe (the run's configuration was not found)", ""
    if perturbation and cda:
        how = "counterfactual role reversal and counterfactual data augmentation"
    elif perturbation:
        how = "counterfactual role reversal"
    elif cda:
        how = "counterfactual data augmentation"
    else:
        return "standard knowledge distillation (no gender intervention)", ""
    return how, (
        "The intervention aims to make the student associate professions with male and female words more "
        "evenly than the teacher does; whether it did is a matter of measurement (see Evaluation)."
    )


def _training_section(summary: TrainingSummary) -> list[str]:
    lines = ["## Training", ""]
    rows = []
    if summary.steps is not None:
        planned = (
            f" (of {summary.max_steps} planned)" if summary.max_steps not in (None, summary.steps) else ""
        )
        epochs = f", {summary.epochs:.3g} epochs" if summary.epochs is not None else ""
        rows.append(("Steps", f"{summary.steps} optimizer steps{planned}{epochs}"))
    if summary.tokens is not None:
        how = (
            "counted by Trainer"
            if summary.tokens_counted
            else "steps × sequences per step × block size; a short last batch of an epoch makes it less"
        )
        rows.append(("Training tokens", f"{summary.tokens:,} ({how})"))
    if summary.num_processes is not None:
        rows.append(("Processes", str(summary.num_processes)))
    if summary.final_losses:
        terms = ", ".join(f"{k} {v:.4g}" for k, v in summary.final_losses.items())
        step = f" (step {summary.final_losses_step})" if summary.final_losses_step is not None else ""
        rows.append((f"Last logged training loss{step}", terms))
    if summary.eval_losses:
        rows.append(
            ("Last evaluation loss", ", ".join(f"{k} {v:.4g}" for k, v in summary.eval_losses.items()))
        )
    if summary.wandb:
        url, run_id = summary.wandb.get("url"), summary.wandb.get("id")
        if isinstance(url, str) and url.startswith("https://"):
            rows.append(("W&B run", f"[{run_id or url}]({url})"))
        elif run_id:
            project = summary.wandb.get("project")
            rows.append(
                ("W&B run", f"offline run `{run_id}` (project `{project}`), not synced when it ended")
            )
    versions = ", ".join(f"{name} {version}" for name, version in summary.versions.items())
    where = (
        "recorded by the training run"
        if summary.versions_recorded
        else "of the publishing machine; the run recorded none"
    )
    rows.append(("Framework versions", f"{versions} ({where})"))
    if summary.steps is None:
        lines += [
            "No `trainer_state.json` was found beside the model, so steps and losses are not reported.",
            "",
        ]
    lines += ["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows), ""]
    return lines


def _teacher_text(ctx: CardContext) -> str:
    spec = ctx.config.get("teacher_name_or_path")
    if ctx.base_model:
        return f"[`{ctx.base_model}`](https://huggingface.co/{ctx.base_model})"
    if hub_id(spec):  # a Hub id we leave out of the metadata, e.g. one the caller overrode
        return f"[`{hub_id(spec)}`](https://huggingface.co/{hub_id(spec)})"
    if spec:
        return f"`{Path(str(spec)).name}` (a local checkpoint)"
    return "unknown"


def _usage(ctx: CardContext) -> list[str]:
    where = ctx.repo_id or "PATH_TO_THIS_FOLDER"
    lines = ["## How to use", "", "```python"]
    if ctx.adapters:
        lines += [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{where}")  # downloads the base model too',
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        ]
    else:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{where}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        ]
    return lines + [
        'inputs = tokenizer("The nurse said that", return_tensors="pt")',
        "output = model.generate(**inputs, max_new_tokens=30, do_sample=True, top_k=40, top_p=0.95)",
        "print(tokenizer.decode(output[0], skip_special_tokens=True))",
        "```",
        "",
    ]


def card_parts(ctx: CardContext, *, license_hint: str = "python -m fairdistill.publish_cli") -> CardParts:
    """The parts of a card that describe the run (metadata, description, details, usage, citation)."""
    config = ctx.config
    license_id = ctx.license or teacher_license(ctx.base_model)
    meta: dict[str, Any] = {"license": license_id, "library_name": "peft" if ctx.adapters else "transformers"}
    if ctx.base_model:
        meta["base_model"] = ctx.base_model
    meta.update({"pipeline_tag": "text-generation", "language": ["en"], "tags": list(CARD_TAGS)})
    dataset = hub_id(config.get("dataset_name"))
    if dataset:
        meta["datasets"] = [dataset]

    teacher_text = _teacher_text(ctx)
    if ctx.adapters:
        weights = "LoRA adapters (load them on top of the teacher)"
    elif config.get("student_init") == "lora":
        weights = "a full model (LoRA adapters merged into the teacher's weights)"
    else:
        weights = "a full model"
    how, aim = _method(config)
    title = [
        f"# {ctx.model_name}",
        "",
        f"{ctx.model_name} is a causal language model distilled from {teacher_text} with {how}, as "
        "implemented by fairdistill after Gupta et al., *Mitigating Gender Bias in Distilled Language Models "
        "via Counterfactual Role Reversal* (Findings of ACL 2022, [arXiv:2203.12574]"
        "(https://arxiv.org/abs/2203.12574)). " + aim,
        "",
    ]
    details = [
        "## Model details",
        "",
        "| | |",
        "|---|---|",
        f"| Teacher | {teacher_text} |",
        f"| Student | {_describe_student(config)} |",
        *([f"| Layer selection | {selection} |"] if (selection := _describe_layer_selection(config)) else []),
        f"| Weights | {weights} |",
        f"| Teacher-prediction perturbation | {_describe_perturbation(config)} |",
        f"| Counterfactual data augmentation | {_describe_cda(config)} |",
        f"| Loss | {_describe_loss(config)} |",
        f"| Training setup | {_describe_training(config)} |",
        f"| Data | {_describe_data(config)} |",
        "",
        f"The full resolved training configuration is in `{RESOLVED_CONFIG_NAME}`.",
    ]
    if license_id == "other" and ctx.license is None:
        details += [
            "",
            "**License**: set to `other` because the teacher's license is not known to the publishing tool; "
            "a distilled model is a derivative of its teacher, so the teacher's license applies. Set the "
            f"right one with `{license_hint} ... --license ID`.",
        ]
    details += [""]
    limitations = [
        "- **Binary gender lexicon.** The counterfactual swap and the metrics use lists of male and female "
        "words (he ↔ she, actor ↔ actress, ...). Non-binary and other gender identities are neither "
        "measured nor protected, and words missing from the lists are not swapped.",
        "- **English only.** The lexicon, the training intervention and the evaluation are English.",
    ]
    spec = config.get("teacher_name_or_path")
    return CardParts(
        meta=meta,
        title=title,
        details=details,
        training=_training_section(read_training_summary(ctx.model_dir, config)),
        usage=_usage(ctx),
        limitations=limitations,
        citations=[GUPTA_2022_BIBTEX],
        teacher_ref=ctx.base_model or hub_id(spec) or spec or "TEACHER",
    )


def training_card(ctx: CardContext) -> str:
    """The card for a student nobody has evaluated: the run, and no claim about bias or quality."""
    parts = card_parts(ctx)
    body = [
        *parts.title,
        *parts.details,
        *parts.training,
        "## Evaluation",
        "",
        "**Not evaluated.** This card was written when training ended, so it reports no bias or quality "
        "measurement and makes no claim about either. Evaluate the student against its teacher and "
        'republish with the results to add them (see fairdistill\'s README, "Publishing").',
        "",
        "## Intended use",
        "",
        "Research on gender bias in language generation and on fairness-aware knowledge distillation. It is "
        "not intended for decisions about people (hiring, lending, moderation, ...).",
        "",
        "## Limitations and bias",
        "",
        *parts.limitations,
        "- **Other biases are untouched.** Only gender was targeted. The model still reflects whatever "
        "race, religion, political and other biases the teacher and the training text carry, and it can "
        "generate stereotyped, offensive or false text.",
        "",
        *parts.usage,
        "## Citation",
        "",
        "```bibtex",
        "\n\n".join(parts.citations),
        "```",
        "",
    ]
    return render_card(parts.meta, body)
