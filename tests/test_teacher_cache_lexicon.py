"""A teacher cache written for a recipe with a custom lexicon (``lexicon: pairs.tsv``) holds that lexicon's
counterfactual view, trains exactly as the live teacher does, and is refused for a recipe whose token swap
differs. Real parts: a tiny GPT-2 teacher saved to disk with the real GPT-2 tokenizer, YAML recipes, the
cache command (``python -m distill.teacher_cache``'s ``main``) and ``distill.pipeline.run``.

The lexicon pairs words that are not gendered (day/night, north/south, ...) over a corpus with no gendered
word: with the built-in lexicon no row would have a counterfactual, so every counterfactual row counted here
comes from the custom lexicon.
"""

from __future__ import annotations

import pytest
import yaml

from counterfactuals import build_pair_map, load_lexicon
from distill.recipe import parse_config
from distill.teacher_cache import TeacherCacheError, pair_map_fingerprint
from distill.teacher_cache.__main__ import main as write_cache_of_recipe
from distill.token_swap import run_pair_map
from tests.assets import GPT2_VOCAB_SIZE, tiny_gpt2

V = GPT2_VOCAB_SIZE
LEXICON = "day\tnight\nnorth\tsouth\nsun\tmoon\nsummer\twinter\n"
CORPUS = [
    "The day was long and the night was cold.",
    "We walked north in the morning and south in the evening.",
    "The sun rose over the hills while the moon set behind the sea.",
    "Every summer the river ran low, every winter it froze.",
    "A train left the station at noon and arrived late.",
    "The committee approved the budget after a long debate.",
    "At night the north wind blew across the fields.",
    "Rain fell on the old town all afternoon.",
    "By day the south road was busy with carts and traders.",
    "The winter sun was pale and the summer moon was bright.",
] * 3
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


@pytest.fixture(scope="module")
def assets(tmp_path_factory, gpt2_tok):
    root = tmp_path_factory.mktemp("lexicon_cache")
    teacher_dir = root / "teacher"
    tiny_gpt2(n_layer=2, seed=1, initializer_range=0.2, **NO_DROPOUT).save_pretrained(teacher_dir)
    gpt2_tok.save_pretrained(teacher_dir)
    (root / "pairs.tsv").write_text(LEXICON, encoding="utf-8")
    (root / "corpus.txt").write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    return root


def recipe(root, name: str, **fields) -> list[str]:
    """A tiny YAML recipe (null values included, which the command line cannot express) as an argv."""
    values = {
        "teacher_name_or_path": str(root / "teacher"),
        "student_init": "layers",
        "student_num_layers": 1,
        "dataset_name": str(root / "corpus.txt"),
        "validation_split_percentage": 20,
        "block_size": 12,
        "max_train_samples": 4,
        "max_eval_samples": 2,
        "perturbation": "max",
        "cda": "two_sided",
        "lexicon": str(root / "pairs.tsv"),
        "temperature": 2.0,
        "alpha_kd": 1.0,
        "alpha_clm": 0.5,
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "use_cpu": True,
        "disable_tqdm": True,
    } | fields
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return ["--config", str(path)]


def losses(trainer) -> list[float]:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


@pytest.mark.parametrize(
    "name, fields, flags, counterfactual",
    [
        ("max", {}, [], True),  # perturbation max: σ of the custom lexicon
        ("cda_only", {"perturbation": None}, [], False),  # the CDA-augmented data, no pair map
        # the counterfactual view stored for a recipe without perturbation: still the recipe's lexicon
        ("cda_only_cf", {"perturbation": None}, ["--counterfactual"], True),
    ],
)
def test_a_cache_of_a_custom_lexicon_recipe_trains_as_the_live_teacher(
    assets, gpt2_tok, tmp_path, name, fields, flags, counterfactual
):
    from distill.pipeline import run

    argv = recipe(assets, name, **fields)
    config = parse_config(argv)
    manifests = write_cache_of_recipe(
        [*argv, *flags, "--out", str(tmp_path / "cache"), "--k", str(V), "--dtype", "float32"]
    )
    assert [m["rows"] for m in manifests] == [4, 2]
    assert all(m["counterfactual"] is counterfactual for m in manifests)
    if counterfactual:
        custom = run_pair_map(config, gpt2_tok, V, counterfactual=True)
        built_in = build_pair_map(gpt2_tok, names=config.swap_names, vocab_size=V)
        assert custom.vocab_size == V and pair_map_fingerprint(custom) != pair_map_fingerprint(built_in)
        assert all(m["pair_map_fingerprint"] == pair_map_fingerprint(custom) for m in manifests)
        assert manifests[0]["counterfactual_rows"] > 0  # only the custom lexicon swaps anything here

    live, live_metrics = run(parse_config([*argv, "--output_dir", str(tmp_path / "live")]))
    cached, metrics = run(
        parse_config([*argv, "--output_dir", str(tmp_path / "c"), "--teacher_cache", str(tmp_path / "cache")])
    )
    assert cached.teacher is None and live.teacher is not None
    assert len(losses(cached)) == 2 and losses(cached) == pytest.approx(losses(live), rel=1e-5)
    assert metrics["eval_loss_kd"] == pytest.approx(live_metrics["eval_loss_kd"], rel=1e-5)


def test_a_cache_of_the_built_in_lexicon_is_refused_for_a_custom_lexicon_recipe(assets, tmp_path):
    from distill.pipeline import run

    # no CDA: both recipes train on the same blocks, so only the token swap differs
    built_in = recipe(assets, "built_in", cda=None, lexicon=None)
    custom = recipe(assets, "custom", cda=None)
    write_cache_of_recipe([*built_in, "--out", str(tmp_path / "cache"), "--k", "8"])
    with pytest.raises(TeacherCacheError, match="another token swap.*lexicon") as refused:
        run(
            parse_config(
                [*custom, "--output_dir", str(tmp_path / "c"), "--teacher_cache", str(tmp_path / "cache")]
            )
        )
    assert "python -m distill.teacher_cache" in str(refused.value)  # the fix is named
    assert len(str(refused.value).splitlines()) == 1
    assert load_lexicon(assets / "pairs.tsv")  # the custom lexicon itself is valid: the refusal is the swap's
