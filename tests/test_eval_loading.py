"""`python -m eval` refuses what it cannot evaluate, in one line (eval/loading.py): folders that are not
causal LMs, checkpoints whose LM head would be random, names that would leave the report folder, text that
is not UTF-8. Real tiny models saved to disk, the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForMaskedLM, BertModel

from eval.cli import main
from eval.loading import ModelLoadError, load_causal_lm_checked, run_cli
from tests.assets import gpt2_tokenizer, tiny_gpt2

REPO = Path(__file__).resolve().parents[1]
BERT = {"vocab_size": 120, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32}  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    tokenizer = gpt2_tokenizer()
    out = {name: root / name for name in ("bert_mlm", "bert_base", "tied", "untied_no_head")}
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(**BERT)).save_pretrained(out["bert_mlm"])
    BertModel(BertConfig(**BERT)).save_pretrained(out["bert_base"])
    tiny_gpt2(n_layer=1, seed=1).save_pretrained(out["tied"])  # GPT-2 ties its head: no lm_head saved
    tiny_gpt2(n_layer=1, seed=2, tie_word_embeddings=False).save_pretrained(out["untied_no_head"])
    weights = out["untied_no_head"] / "model.safetensors"
    state = load_file(weights)
    del state["lm_head.weight"]  # an untied head that did not make it into the checkpoint
    save_file(state, weights, metadata={"format": "pt"})
    for path in out.values():
        tokenizer.save_pretrained(path)
    return out


def test_a_bert_folder_is_not_a_causal_lm(folders):
    # transformers would build BertLMHeadModel from both, the masked-LM one with no weight missing
    with pytest.raises(ModelLoadError, match=r"bert model saved as BertForMaskedLM, not a causal language"):
        load_causal_lm_checked(str(folders["bert_mlm"]), torch.float32)
    with pytest.raises(ModelLoadError, match=r"saved as BertModel, not a causal language model"):
        load_causal_lm_checked(str(folders["bert_base"]), torch.float32)


def test_an_untied_lm_head_missing_from_the_checkpoint_is_refused_a_tied_one_is_fine(folders):
    with pytest.raises(ModelLoadError, match=r"its LM head \(lm_head.weight\) is not in the checkpoint"):
        load_causal_lm_checked(str(folders["untied_no_head"]), torch.float32)
    model = load_causal_lm_checked(str(folders["tied"]), torch.float32)
    reference = tiny_gpt2(n_layer=1, seed=1).state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def run(argv, capsys) -> tuple[int, str]:
    try:
        code = run_cli(lambda: main(argv))
    except SystemExit as exit_:  # a check that prints its line and exits 2 itself
        code = exit_.code
    return code, capsys.readouterr().err


def test_the_command_says_what_is_wrong_in_one_line(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FAIRDISTILL_DEBUG", raising=False)
    common = ["--out", str(tmp_path / "out"), "--no-progress", "--num-samples", "1", "--max-new-tokens", "2"]
    cases = {
        "bert": ([f"--model=bert={folders['bert_mlm']}"], "not a causal language model"),
        "head": ([f"--model=s={folders['untied_no_head']}"], "its LM head (lm_head.weight) is not in"),
        "dots": ([f"--model=../../x={folders['tied']}"], "the name '../../x' is not a plain name"),
        "absolute": ([f"--model=/tmp/x={folders['tied']}"], "the name '/tmp/x' is not a plain name"),
        "empty": ([f"--model==={folders['tied']}"], "the name '' is not a plain name"),
        "repeat": ([f"--model=a={folders['tied']}", f"--model=a={folders['tied']}"], "repeat"),
    }
    bad_text = tmp_path / "ppl.txt"
    bad_text.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    cases["utf8"] = (
        [f"--model=t={folders['tied']}", "--perplexity-text", str(bad_text)],
        f"{bad_text}, line 3: not valid UTF-8",
    )
    for name, (argv, message) in cases.items():
        code, err = run([*argv, *common], capsys)
        assert code == 2 and "error: " in err, (name, err)
        lines = err[err.index("error: ") :].strip().splitlines()  # after any "[eval] loading" line
        assert message in lines[0], (name, err)
        assert len(lines) <= 2 and "Traceback" not in err, (name, err)
    assert not (tmp_path / "out").exists()  # nothing was written
    monkeypatch.setenv("FAIRDISTILL_DEBUG", "1")
    with pytest.raises(ModelLoadError):
        run([f"--model=bert={folders['bert_mlm']}", *common], capsys)


def test_python_m_eval_exits_2_without_a_traceback(folders, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("FAIRDISTILL_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-m", "eval", "--model", f"bert={folders['bert_base']}", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "not a causal language model" in done.stderr
    assert "LOAD REPORT" not in done.stderr  # transformers' table is not printed on top of our line
