"""eval.prompts: BOLD loading (local folder and Hub id), the held-out split, our builtin prompts."""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict

import pytest

from counterfactuals import swap_gender
from eval.polarity import count_gender_words
from eval.prompts import (
    PROFESSIONS,
    Prompt,
    builtin_profession_prompts,
    load_bold_prompts,
    profession_contexts,
    split_prompts,
)

BOLD_PROFESSION_CATEGORIES = {
    "artistic_occupations",
    "computer_occupations",
    "corporate_titles",
    "dance_occupations",
    "engineering_branches",
    "entertainer_occupations",
    "film_and_television_occupations",
    "healthcare_occupations",
    "industrial_occupations",
    "mental_health_occupations",
    "metalworking_occupations",
    "nursing_specialties",
    "professional_driver_types",
    "railway_industry_occupations",
    "scientific_occupations",
    "sewing_occupations",
    "theatre_personnel",
    "writing_occupations",
}


@pytest.fixture(scope="module")
def profession(bold_dir):
    return load_bold_prompts(bold_dir)


def _write(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


# ----------------------------------------------------------------------------------------------------
# BOLD, local folder


def test_profession_domain_has_its_18_categories(profession):
    assert {p.category for p in profession} == BOLD_PROFESSION_CATEGORIES
    assert {p.domain for p in profession} == {"profession"}
    assert {p.source for p in profession} == {"bold"}
    assert len(profession) > 10_000


def test_gender_domain_and_several_domains(bold_dir):
    gender = load_bold_prompts(bold_dir, domains="gender")
    assert {p.category for p in gender} == {"American_actors", "American_actresses"}
    both = load_bold_prompts(str(bold_dir), domains=("gender", "profession"))
    assert [p.domain for p in both[: len(gender)]] == ["gender"] * len(gender)
    assert {p.category for p in both} == BOLD_PROFESSION_CATEGORIES | {
        "American_actors",
        "American_actresses",
    }


def test_prompts_are_stripped_of_trailing_whitespace_only(bold_dir, profession):
    raw = json.loads((bold_dir / "prompts" / "profession_prompt.json").read_text(encoding="utf-8"))
    for p in profession:
        assert p.text and p.text == p.text.rstrip()
        assert p.text == raw[p.category][p.page][p.index].rstrip()  # the id points back to the source
    assert not any(p.text[-1].isspace() for p in load_bold_prompts(bold_dir, domains=["gender", "race"]))


def test_ids_are_unique_and_stable(profession):
    ids = [p.id for p in profession]
    assert len(set(ids)) == len(ids)
    p = Prompt("The x", "profession", "c", "Page", "bold", 3)
    assert p.id == "bold/profession/c/Page/3"


def test_per_category_subsample_is_deterministic_nested_and_order_independent(bold_dir, tmp_path):
    a = load_bold_prompts(bold_dir, per_category=7, seed=1)
    assert a == load_bold_prompts(bold_dir, per_category=7, seed=1)
    counts = defaultdict(int)
    for p in a:
        counts[p.category] += 1
    assert set(counts) == BOLD_PROFESSION_CATEGORIES and set(counts.values()) == {7}
    assert {p.id for p in a} != {p.id for p in load_bold_prompts(bold_dir, per_category=7, seed=2)}
    # a larger sample only adds prompts
    assert {p.id for p in a} <= {p.id for p in load_bold_prompts(bold_dir, per_category=20, seed=1)}

    # the same data with categories and pages in reversed file order gives the same sample
    raw = json.loads((bold_dir / "prompts" / "profession_prompt.json").read_text(encoding="utf-8"))
    reordered = {c: dict(reversed(list(pages.items()))) for c, pages in reversed(list(raw.items()))}
    _write(tmp_path / "prompts" / "profession_prompt.json", reordered)
    assert load_bold_prompts(tmp_path, per_category=7, seed=1) == a

    # one category's sample does not depend on which other categories are loaded
    only = load_bold_prompts(bold_dir, categories=["nursing_specialties"], per_category=7, seed=1)
    assert only == [p for p in a if p.category == "nursing_specialties"]


def test_per_category_larger_than_category_keeps_all(bold_dir):
    drivers = load_bold_prompts(bold_dir, categories=["professional_driver_types"])
    assert (
        load_bold_prompts(bold_dir, categories=["professional_driver_types"], per_category=10**6) == drivers
    )
    with pytest.raises(ValueError, match="per_category"):
        load_bold_prompts(bold_dir, per_category=0)


def test_categories_filter_and_unknown_category(bold_dir):
    got = load_bold_prompts(bold_dir, categories=["dance_occupations", "corporate_titles"])
    assert {p.category for p in got} == {"dance_occupations", "corporate_titles"}
    with pytest.raises(ValueError, match="unknown BOLD category.*'nurses'.*healthcare_occupations"):
        load_bold_prompts(bold_dir, categories=["nurses"])


def test_missing_folder_and_missing_domain_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*prompts/<domain>_prompt\.json"):
        load_bold_prompts(tmp_path / "nowhere")
    _write(tmp_path / "prompts" / "gender_prompt.json", {"A": {"p": ["x "]}})
    with pytest.raises(FileNotFoundError, match=r"profession_prompt\.json not found.*present.*\['gender'\]"):
        load_bold_prompts(tmp_path)
    with pytest.raises(ValueError, match="domains is empty"):
        load_bold_prompts(tmp_path, domains=[])


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "prompts" / "profession_prompt.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"a": {"p": ["x",]}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"profession_prompt\.json is not valid JSON.*line 1"):
        load_bold_prompts(tmp_path)


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (["x"], "the top level is a list"),
        ({"cat": ["x"]}, r"\['cat'\] is a list"),
        ({"cat": {"page": "x"}}, r"\['cat'\]\['page'\] is a str"),
        ({"cat": {"page": ["x", 3]}}, r"\['cat'\]\['page'\]\[1\] is a int"),
    ],
)
def test_wrong_shape_names_the_file_and_the_key(tmp_path, data, where):
    _write(tmp_path / "prompts" / "profession_prompt.json", data)
    with pytest.raises(
        ValueError, match=rf"profession_prompt\.json: expected .*category.*page_name.*{where}"
    ):
        load_bold_prompts(tmp_path)


def test_flat_folder_and_empty_prompts(tmp_path):
    # the *_prompt.json files directly in the folder work too; empty prompts are dropped
    _write(tmp_path / "profession_prompt.json", {"c": {"P": ["A b ", "  ", "C d\n"]}})
    got = load_bold_prompts(tmp_path)
    assert [(p.text, p.index) for p in got] == [("A b", 0), ("C d", 2)]


# ----------------------------------------------------------------------------------------------------
# BOLD, Hub dataset


def test_hub_id_offline_fails_fast_with_a_clear_message():
    start = time.perf_counter()
    try:
        got = load_bold_prompts("AlexaAI/bold")
    except ConnectionError as exc:
        assert "AlexaAI/bold is not cached and the Hub is unreachable" in str(exc)
        assert "local BOLD folder (prompts/<domain>_prompt.json)" in str(exc)
    else:  # pragma: no cover - only where the dataset is in the local cache
        pytest.skip(f"AlexaAI/bold is cached here ({len(got)} prompts)")
    assert time.perf_counter() - start < 5.0


def test_hub_rows_are_read_like_the_folder(monkeypatch):
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_dict(
        {
            "domain": ["profession", "profession", "gender"],
            "name": ["Nurse", "Welder", "Some_actor"],
            "category": ["healthcare_occupations", "metalworking_occupations", "American_actors"],
            "prompts": [["A nurse is ", "Nurses "], ["A welder "], ["X is an actor "]],
            "wikipedia": [["..."], ["..."], ["..."]],
        }
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: table)
    got = load_bold_prompts("AlexaAI/bold", per_category=1, seed=0)
    assert {p.category for p in got} == {"healthcare_occupations", "metalworking_occupations"}
    assert all(p.source == "bold" and not p.text.endswith(" ") for p in got)
    assert (
        load_bold_prompts("AlexaAI/bold", domains="gender")[0].id
        == "bold/gender/American_actors/Some_actor/0"
    )
    with pytest.raises(
        ValueError, match=r"unknown BOLD domain.*'race'.*available: \['gender', 'profession'\]"
    ):
        load_bold_prompts("AlexaAI/bold", domains="race")

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: table.remove_columns("prompts"))
    with pytest.raises(ValueError, match=r"missing \['prompts'\]"):
        load_bold_prompts("AlexaAI/bold")


# ----------------------------------------------------------------------------------------------------
# Held-out split


def test_split_keeps_pages_together_and_is_stratified(profession):
    kept, held = split_prompts(profession, 0.25, seed=0)
    assert len(kept) + len(held) == len(profession)
    assert {p.id for p in kept}.isdisjoint({p.id for p in held})
    assert {p.page for p in kept}.isdisjoint({p.page for p in held})  # pages never straddle the split
    assert {p.category for p in held} == BOLD_PROFESSION_CATEGORIES  # every category on both sides
    assert {p.category for p in kept} == BOLD_PROFESSION_CATEGORIES
    pages = {p.page for p in profession}
    assert 0.2 < len({p.page for p in held}) / len(pages) < 0.3
    # input order kept within each side
    position = {p.id: i for i, p in enumerate(profession)}
    assert [position[p.id] for p in held] == sorted(position[p.id] for p in held)


def test_split_is_deterministic_and_order_independent(profession):
    kept, held = split_prompts(profession, 0.3, seed=5)
    shuffled = list(profession)
    random.Random(0).shuffle(shuffled)
    kept2, held2 = split_prompts(shuffled, 0.3, seed=5)
    assert {p.id for p in held2} == {p.id for p in held}
    assert {p.id for p in split_prompts(profession, 0.3, seed=6)[1]} != {p.id for p in held}


def test_split_edge_fractions():
    prompts = builtin_profession_prompts()
    assert split_prompts(prompts, 0.0, 0) == (prompts, [])
    assert split_prompts(prompts, 1.0, 0) == ([], prompts)
    kept, held = split_prompts(prompts, 0.01, 0)  # at least one page per category with 2+ pages
    multi = {c for c in {c for _, c in PROFESSIONS} if sum(cc == c for _, cc in PROFESSIONS) >= 2}
    assert {p.category for p in held} == multi
    assert {p.page for p in kept}.isdisjoint({p.page for p in held})
    with pytest.raises(ValueError, match="holdout_fraction"):
        split_prompts(prompts, 1.5, 0)


def test_split_prompts_without_page_are_their_own_group():
    prompts = [Prompt(f"t{i}", "d", "c", None, "builtin", i) for i in range(10)]
    kept, held = split_prompts(prompts, 0.5, 0)
    assert len(held) == 5 and len(kept) == 5


# ----------------------------------------------------------------------------------------------------
# Builtin prompts and contexts


def test_builtin_prompts_cover_professions_without_gendered_words():
    prompts = builtin_profession_prompts()
    professions = {p.page for p in prompts}
    assert len(professions) >= 12
    assert len({p.id for p in prompts}) == len(prompts)
    assert {p.source for p in prompts} == {"builtin"} and {p.domain for p in prompts} == {"profession"}
    for p in prompts:
        assert count_gender_words(p.text) == (0, 0), p.text
        assert swap_gender(p.text) == p.text, p.text  # nothing for the counterfactual lexicon either
        assert p.text == p.text.strip() and p.page in p.text
    assert "My neighbour, an engineer, told me that" in {p.text for p in prompts}
    assert builtin_profession_prompts() == prompts


def test_profession_contexts(gpt2_tok):
    contexts = profession_contexts()
    assert {c.profession for c in contexts} == {p for p, _ in PROFESSIONS}
    assert all(c.text == c.text.strip() and count_gender_words(c.text) == (0, 0) for c in contexts)
    assert ("nurse", "healthcare_occupations", "The nurse said that") in contexts
    # the next word is one GPT-2 token (" he" / " she") appended to the context's tokens
    he, she = (gpt2_tok.encode(w) for w in (" he", " she"))
    assert len(he) == len(she) == 1
    for c in contexts[:10]:
        assert gpt2_tok.encode(c.text + " she") == gpt2_tok.encode(c.text) + she
    custom = profession_contexts(["I met a {profession} and"])
    assert len(custom) == len(PROFESSIONS) and custom[0].text == f"I met a {PROFESSIONS[0][0]} and"
    with pytest.raises(ValueError, match=r"\{profession\} placeholder"):
        profession_contexts(["The {p} said"])
