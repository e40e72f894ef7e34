"""Text in, student out: the README's "Distil your own model" lines run as written (tiny random
teacher and student, the real GPT-2 tokenizer), and the trainer's own preparation of raw text, chat
messages and tokenized data."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from datasets import Dataset

from counterfactuals import swap_gender
from distill.config import DistillationConfig
from distill.data import load_text_dataset, prepare_lm_datasets
from distill.trainer import CounterfactualDistillationTrainer
from distill.trainer_data import prepare_dataset
from tests.assets import gpt2_tokenizer, tiny_gpt2

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "recipes" / "data" / "sample_corpus.txt"
# ChatML, as SmolLM2-Instruct's template renders it; GPT-2's tokenizer ships no chat template
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
)


def readme_example() -> str:
    """The Python block of the README's "Distil your own model" section."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Distil your own model", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README: no Python block under 'Distil your own model'"
    return match.group(1)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny teacher and student saved like Hub checkpoints; the tokenizer, like GPT-2's on the Hub,
    has no pad token."""
    tokenizer = copy.deepcopy(gpt2_tokenizer())
    tokenizer.pad_token = None
    dirs = {}
    for name, model in (("teacher", tiny_gpt2(n_layer=2, seed=1)), ("student", tiny_gpt2(n_layer=1, seed=2))):
        dirs[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    return dirs


def run_example(code: str, models: dict[str, Path], tmp_path: Path, monkeypatch) -> dict:
    """Run the README lines with the Hub ids pointing at the tiny models; returns their variables."""
    for hub_id, local in (('"gpt2"', models["teacher"]), ('"distilgpt2"', models["student"])):
        assert code.count(hub_id) >= 1, f"the README example no longer loads {hub_id}"
        code = code.replace(hub_id, repr(str(local)))
    code = code.replace('"recipes/data/sample_corpus.txt"', repr(str(SAMPLE)))
    monkeypatch.chdir(tmp_path)  # output_dir="runs/..." lands in tmp_path
    namespace: dict = {}
    exec(compile(code, "README.md (Distil your own model)", "exec"), namespace)
    return namespace


def test_readme_example_distils_raw_text(models, tmp_path, monkeypatch):
    code = readme_example()
    assert 'data_files="recipes/data/sample_corpus.txt"' in code  # what the assertions below read
    ns = run_example(code, models, tmp_path, monkeypatch)
    trainer, config = ns["trainer"], ns["config"]
    assert (tmp_path / config.output_dir / "model.safetensors").is_file()
    assert trainer.state.global_step >= 1
    assert any("loss_kd" in entry for entry in trainer.state.log_history)
    blocks = trainer.train_dataset
    assert blocks.column_names == ["input_ids", "attention_mask", "labels"]
    assert {len(ids) for ids in blocks["input_ids"]} == {config.block_size}
    # two-sided CDA: the counterfactual of a gendered line of the corpus is in the training text
    text = ns["tokenizer"].decode([t for ids in blocks["input_ids"] for t in ids])
    line = next(line for line in SAMPLE.read_text().splitlines() if swap_gender(line) != line)
    assert line in text and swap_gender(line) in text
    assert ns["tokenizer"].pad_token == ns["tokenizer"].eos_token  # set for the padding collator


def test_readme_example_distils_chat_messages(models, tmp_path, monkeypatch):
    chats = [
        [
            {"role": "user", "content": f"Tell me about the {job}."},
            {"role": "assistant", "content": f"He is a {job} and his sister helps him every day."},
        ]
        for job in ("nurse", "carpenter", "pilot", "baker")
    ]
    code = readme_example()
    dataset_line = next(line for line in code.splitlines() if line.startswith("dataset = "))
    # the same lines, with a dataset of chat messages and a tokenizer that has a chat template
    chat_data = f"dataset = Dataset.from_dict({{'messages': {chats!r}}})"
    code = code.replace(dataset_line, f"{chat_data}\ntokenizer.chat_template = {CHATML!r}")
    code = "from datasets import Dataset\n" + code.replace("block_size=128", "block_size=32")
    ns = run_example(code, models, tmp_path, monkeypatch)
    blocks = ns["trainer"].train_dataset
    assert ns["trainer"].state.global_step >= 1
    text = ns["tokenizer"].decode([t for ids in blocks["input_ids"] for t in ids])
    # rendered with the template (the packer drops the last partial block, so no single turn is whole-sure)
    assert "<|im_end|>\n<|im_start|>assistant\nHe is a " in text
    assert "He is a nurse and his sister helps him every day." in text
    assert "She is a nurse and her brother helps her every day." in text  # CDA of the rendered chat


def test_trainer_packs_exactly_what_the_recipe_path_packs(gpt2_tok, tmp_path):
    config = DistillationConfig(
        output_dir=str(tmp_path), cda="two_sided", swap_names=True, block_size=32, seed=3,
        max_train_samples=7, report_to=[],
    )  # fmt: skip
    ours = prepare_dataset(load_text_dataset(str(SAMPLE)), gpt2_tok, config, train=True)
    recipe = prepare_lm_datasets(
        dataset_name=str(SAMPLE), tokenizer=gpt2_tok, block_size=32, cda="two_sided", cda_names=True,
        seed=3, max_train_samples=7,
    ).train  # fmt: skip
    assert len(ours) == 7 and ours["input_ids"] == recipe["input_ids"]
    # an evaluation split is packed but never augmented
    eval_blocks = prepare_dataset(load_text_dataset(str(SAMPLE)), gpt2_tok, config, train=False)
    plain = prepare_lm_datasets(dataset_name=str(SAMPLE), tokenizer=gpt2_tok, block_size=32).train
    assert eval_blocks["input_ids"] == plain["input_ids"]


def test_tokenized_data_passes_unchanged_and_bad_data_is_named(gpt2_tok, tmp_path):
    config = DistillationConfig(output_dir=str(tmp_path), report_to=[], block_size=16, text_column="body")
    tokenized = Dataset.from_dict({"input_ids": [[1, 2, 3, 4]], "labels": [[1, 2, 3, 4]]})
    trainer = CounterfactualDistillationTrainer(
        model=tiny_gpt2(n_layer=1), teacher_model=tiny_gpt2(n_layer=1), args=config,
        train_dataset=tokenized, eval_dataset={"a": tokenized}, processing_class=gpt2_tok,
    )  # fmt: skip
    assert trainer.train_dataset is tokenized and trainer.eval_dataset["a"] is tokenized
    body = Dataset.from_dict({"body": ["He thanked his aunt for the long letter she wrote him."] * 4})
    assert prepare_dataset(body, gpt2_tok, config, train=True).column_names[0] == "input_ids"
    with pytest.raises(ValueError, match=r"train_dataset has no 'body' column .*\['text'\]"):
        prepare_dataset(Dataset.from_dict({"text": ["x"]}), gpt2_tok, config, train=True)
    chats = Dataset.from_dict({"messages": [[{"role": "user", "content": "Hi"}]]})
    with pytest.raises(ValueError, match="eval_dataset holds chat 'messages' but the tokenizer has no chat"):
        prepare_dataset(chats, gpt2_tok, config, train=False)
    with pytest.raises(ValueError, match="train_dataset: packing produced 0 blocks"):
        prepare_dataset(Dataset.from_dict({"body": ["short"]}), gpt2_tok, config, train=True)
