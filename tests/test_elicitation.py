"""eval.elicitation (pronoun-eliciting prompts, first-pronoun labels, the summary) and eval.bold."""

from __future__ import annotations

import pytest

from eval.bold import default_data_dir, read_bold, read_bold_wikipedia
from eval.elicitation import OCCUPATIONS, TEMPLATES, elicitation_prompts, elicitation_summary, first_pronoun
from eval.polarity import count_gender_words


def test_occupations_are_winobias_lists_and_bold_nouns(tmp_path):
    data = default_data_dir()
    if data is None or not (data / "winobias").is_dir():
        pytest.skip("WinoBias data not found beside the repo")
    for label in ("male", "female"):
        listed = (data / "winobias" / f"{label}_occupations.txt").read_text(encoding="utf-8").split("\n")
        assert [o.noun for o in OCCUPATIONS if o.stereotype == label] == [
            w.strip() for w in listed if w.strip()
        ]
    assert len({o.noun for o in OCCUPATIONS}) == len(OCCUPATIONS) == 53


def test_prompts_split_into_disjoint_halves_and_hold_no_gendered_word():
    everything = elicitation_prompts()
    dev, held = elicitation_prompts("dev"), elicitation_prompts("heldout")
    assert len(everything) == len(TEMPLATES) * len(OCCUPATIONS)
    assert not {p.category for p in dev} & {p.category for p in held}
    assert not {p.index for p in dev} & {p.index for p in held}
    for half in (dev, held):
        labels = {p.category: p.page for p in half}
        assert sum(v == "male" for v in labels.values()) == sum(v == "female" for v in labels.values()) == 10
    assert elicitation_prompts("heldout") == held  # deterministic
    assert all(count_gender_words(p.text) == (0, 0) and p.text == p.text.rstrip() for p in everything)
    with pytest.raises(ValueError, match="split"):
        elicitation_prompts("test")


@pytest.mark.parametrize(
    ("text", "label"),
    [(" she said he was right", "female"), (" He’d go", "male"), (" they left; her bag", "female"),
     (" the manager left", "neutral"), (" Sherlock and Hermes", "neutral")],
)  # fmt: skip
def test_first_pronoun(text, label):
    assert first_pronoun(text) == label


def test_summary_by_hand():
    prompts = [p for p in elicitation_prompts() if p.category in ("nurse", "mechanic")][:16]
    labels = [
        ["female"] * 3 + ["neutral"] if p.category == "nurse" else ["male"] * 3 + ["female"] for p in prompts
    ]
    s = elicitation_summary(prompts, labels)
    assert (
        s["occupations"]["nurse"]["female_share"] == 1.0
        and s["occupations"]["mechanic"]["female_share"] == 0.25
    )
    assert s["association"]["value"] == pytest.approx(0.75) and s["association"]["measurable"]
    assert s["global_shift"]["value"] == pytest.approx(8 * 4 / (8 * 3 + 8 * 4) - 0.5)
    lo, hi = s["association"]["ci"]
    assert lo < 0.75 < hi
    few = elicitation_summary(prompts[:2], labels[:2])
    assert not few["female_share"]["measurable"]  # 6 gendered < MIN_GENDERED


def test_bold_reader_finds_both_kinds(bold_dir):
    prompts = read_bold(bold_dir, ("profession", "gender"))
    wiki = read_bold_wikipedia(bold_dir, "profession")
    assert set(prompts) == {"profession", "gender"} and len(prompts["profession"]) == 18
    assert set(wiki["profession"]) == set(prompts["profession"])
    with pytest.raises(FileNotFoundError, match="race_wiki.json"):
        read_bold_wikipedia(bold_dir / "prompts", "race")
