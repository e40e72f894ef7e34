"""The config as a user meets it: ``--help`` lists ``--config`` and every choice field's values, the
teacher's loading options are fields that reach the loader, and no warning of ours on a CPU run."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from distill.config import CDA_MODES, DTYPES, STUDENT_INITS, DistillationConfig
from distill.losses import COMBINE_MODES, SCOPES
from distill.pipeline import run
from distill.recipe import parse_config
from distill.trainer import CounterfactualDistillationTrainer
from tests.assets import gpt2_tokenizer, tiny_gpt2
from tests.test_trainer import padded_dataset

REPO = Path(__file__).resolve().parents[1]
CHOICE_FIELDS = {
    "teacher_dtype": DTYPES,
    "student_init": STUDENT_INITS,
    "perturbation": COMBINE_MODES,
    "perturbation_scope": SCOPES,
    "cda": CDA_MODES,
}


def test_help_lists_the_recipe_option_and_every_allowed_value(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_config(["--help"])  # what `python -m distill.train --help` runs
    help_text = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "[--config RECIPE.yaml]" in help_text and "  --config RECIPE.yaml  A YAML recipe" in help_text
    for name, values in CHOICE_FIELDS.items():
        assert f"  --{name} {{{','.join(values)}}}" in help_text, name
    for name in ("teacher_revision", "trust_remote_code", "attn_implementation"):
        assert f"  --{name} " in help_text


def test_a_value_outside_the_choices_is_still_one_clear_error():
    with pytest.raises(ValueError, match="cda='three_sided': use one of two_sided, one_sided"):
        parse_config(["--config", str(REPO / "recipes/tiny.yaml"), "--cda", "three_sided"])


def test_teacher_loading_options_reach_the_loader(tmp_path):
    teacher_dir = tmp_path / "teacher"
    tiny_gpt2(n_layer=2, seed=1).save_pretrained(teacher_dir)
    gpt2_tokenizer().save_pretrained(teacher_dir)
    argv = [
        "--config", str(REPO / "recipes/tiny.yaml"), "--teacher_name_or_path", str(teacher_dir),
        "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--validation_split_percentage", "0",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    default = parse_config(argv)
    assert default.teacher_load_kwargs() == {"trust_remote_code": False}
    config = parse_config([*argv, "--attn_implementation", "eager", "--teacher_revision", "main"])
    assert config.teacher_load_kwargs() == {
        "trust_remote_code": False, "revision": "main", "attn_implementation": "eager"
    }  # fmt: skip
    assert config.teacher_load_kwargs(tokenizer=True) == {"trust_remote_code": False, "revision": "main"}
    trainer, _ = run(config)
    assert trainer.teacher.config._attn_implementation == "eager"  # transformers' default here is sdpa
    assert trainer.model.config._attn_implementation == "eager"  # the student is built from its layers


def test_no_pin_memory_warning_without_an_accelerator(tmp_path):
    config = DistillationConfig(output_dir=str(tmp_path), max_steps=1, report_to=[], disable_tqdm=True)
    has_accelerator = getattr(torch, "accelerator", torch.cuda).is_available()
    assert config.dataloader_pin_memory is has_accelerator
    tokenizer = gpt2_tokenizer()
    trainer = CounterfactualDistillationTrainer(
        model=tiny_gpt2(n_layer=1, seed=2), teacher_model=tiny_gpt2(n_layer=1, seed=1), args=config,
        train_dataset=padded_dataset(tokenizer), processing_class=tokenizer,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "pin_memory" in str(w.message)]
