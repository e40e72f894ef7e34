"""The fairdistill-cda command line, in-process (main([...])) and as `python -m counterfactuals`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from counterfactuals.cli import SAMPLE_CORPUS, main

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
}
LINES = ["He thanked his aunt.", "", "The sky is blue.", "My sister is an actress."]


def run_module(
    *args: str, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "counterfactuals", *args],
        input=stdin,
        capture_output=True,
        env=ENV,
        cwd=cwd,
        timeout=120,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- swap ------------------------------------------------------------------------------------------


def test_swap_argv(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["swap", "He thanked his aunt."]) == 0
    assert capsys.readouterr().out == "She thanked her uncle.\n"


def test_swap_names_and_lexicon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["swap", "--names", "John met Mary."]) == 0
    assert capsys.readouterr().out == "Mary met John.\n"
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("wizard\twitch\n", encoding="utf-8")
    assert main(["swap", "--lexicon", str(pairs), "The wizard and he."]) == 0
    assert capsys.readouterr().out == "The witch and he.\n"  # the file replaces the built-in pairs


def test_swap_stdin_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("He saw her.\nThe dog.\n"))
    assert main(["swap"]) == 0
    assert capsys.readouterr().out == "She saw him.\nThe dog.\n"  # text copied exactly, no extra newline


def test_swap_stdin_subprocess() -> None:
    result = run_module("swap", stdin=b"Mr Smith is an actor.\nIl pleut.\n")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == "Ms Smith is an actress.\nIl pleut.\n"


def test_swap_non_utf8_stdin_is_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"He is caf\xe9.\n")))
    assert main(["swap"]) == 2
    err = capsys.readouterr().err
    assert "byte 9" in err and "iconv -f latin1" in err and "Traceback" not in err


def test_bad_lexicon_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("king queen\n", encoding="utf-8")  # spaces, not a TAB
    assert main(["swap", "--lexicon", str(pairs), "x"]) == 2
    assert "pairs.tsv:1" in capsys.readouterr().err


# -- augment ---------------------------------------------------------------------------------------


def test_augment_txt_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    out = tmp_path / "new" / "dir" / "cda.jsonl"  # parent folders are created

    assert main(["augment", str(src), "-o", str(out)]) == 0

    summary = capsys.readouterr().out
    assert "3 rows in, 5 rows out, 2 rows swapped" in summary
    rows = read_jsonl(out)
    assert [r["text"] for r in rows] == [
        "He thanked his aunt.",
        "She thanked her uncle.",
        "The sky is blue.",
        "My sister is an actress.",
        "My brother is an actor.",
    ]
    assert [r["cda_source"] for r in rows] == [
        "original",
        "counterfactual",
        "original",
        "original",
        "counterfactual",
    ]
    assert [r["cda_swapped"] for r in rows] == [True, True, False, True, True]


def test_augment_jsonl_subprocess(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "corpus.jsonl"
    records = [
        {"sentence": "She lent him her notes.", "id": 7},
        {"sentence": "Café au lait, s'il vous plaît.", "id": 8},
    ]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")

    out_jsonl = tmp_path / "out.jsonl"
    result = run_module("augment", str(src), "-o", str(out_jsonl), "--text-column", "sentence", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert "2 rows in, 3 rows out, 1 rows swapped" in result.stdout.decode()
    rows = read_jsonl(out_jsonl)
    assert [(r["sentence"], r["id"], r["cda_source"]) for r in rows] == [
        ("She lent him her notes.", 7, "original"),
        ("He lent her his notes.", 7, "counterfactual"),
        ("Café au lait, s'il vous plaît.", 8, "original"),
    ]

    out_txt = tmp_path / "out.txt"  # text lines only, counterfactuals included
    argv = ["augment", str(src), "-o", str(out_txt), "--text-column", "sentence", "--mode", "one_sided"]
    assert main(argv) == 0
    assert "2 rows in, 2 rows out, 1 rows swapped" in capsys.readouterr().out
    assert out_txt.read_text(encoding="utf-8") == "He lent her his notes.\nCafé au lait, s'il vous plaît.\n"


def test_augment_num_proc(tmp_path: Path) -> None:
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(LINES * 5), encoding="utf-8")
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert main(["augment", str(src), "-o", str(one)]) == 0
    assert main(["augment", str(src), "-o", str(two), "--num-proc", "2"]) == 0
    assert one.read_text() == two.read_text()


def test_non_utf8_input_is_exit_2_with_offset_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "latin1.txt"
    src.write_bytes("He is here.\nShe ordered a café.\n".encode("latin-1"))
    out = tmp_path / "out.jsonl"

    assert main(["augment", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "byte 29" in err and "line 2" in err  # 12 bytes of line 1 + "She ordered a caf"
    assert "--encoding latin-1" in err and "iconv -f latin1 -t utf-8" in err
    assert not out.exists()

    assert main(["augment", str(src), "-o", str(out), "--encoding", "latin-1"]) == 0
    assert read_jsonl(out)[-1]["text"] == "He ordered a café."


def test_utf8_bom_is_not_part_of_the_first_example(tmp_path: Path) -> None:
    src = tmp_path / "bom.txt"
    src.write_bytes(b"\xef\xbb\xbfHe ran.\n")
    out = tmp_path / "out.txt"
    assert main(["augment", str(src), "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == "He ran.\nShe ran.\n"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.txt", None, "does not exist"),
        ("empty.txt", b"", "is empty"),
        ("blank.txt", b"\n  \n\t\n", "is empty"),
        ("empty.jsonl", b"\n", "no records"),
        ("corpus.csv", b"text\nHe ran.\n", "unsupported input type"),
        ("bad.jsonl", b'{"text": "He ran."}\n{"text": oops}\n', "bad.jsonl:2"),
        ("fields.jsonl", b'{"body": "He ran."}\n', "--text-column body"),
        ("ints.jsonl", b'{"text": 1}\n{"text": 2}\n', "holds int64 values, not text"),
        ("nulls.jsonl", b'{"text": "He ran."}\n{"n": 1}\n{"text": null}\n', "record 2 has no text"),
        ("nested.json", b'{"data": [{"text": "He ran."}]}', "jq -c '.data[]'"),
    ],
)
def test_bad_input_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes | None, expected: str
) -> None:
    src = tmp_path / name
    if content is not None:
        src.write_bytes(content)
    assert main(["augment", str(src), "-o", str(tmp_path / "out.jsonl")]) == 2
    captured = capsys.readouterr()
    assert expected in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out.jsonl").exists()


def test_bad_output_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "corpus.txt"
    src.write_text("He ran.\n", encoding="utf-8")
    assert main(["augment", str(src), "-o", str(tmp_path / "out.parquet")]) == 2
    assert "use .jsonl" in capsys.readouterr().err
    assert main(["augment", str(src), "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["augment", str(src), "-o", str(src)]) == 2
    assert "is the input file" in capsys.readouterr().err


def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["augment", "x.txt"]) == 2  # -o missing: argparse's message
    assert "--output" in capsys.readouterr().err
    assert main(["--help"]) == 0


# -- pairs -----------------------------------------------------------------------------------------


def test_pairs_from_a_local_tokenizer_folder(
    tmp_path: Path, gpt2_tok, capsys: pytest.CaptureFixture[str]
) -> None:
    gpt2_tok.save_pretrained(tmp_path / "gpt2")
    assert main(["pairs", "--tokenizer", str(tmp_path / "gpt2"), "--show", "5"]) == 0
    out = capsys.readouterr().out
    assert "(50257 tokens): the pair map swaps" in out
    assert "' he' -> ' she'" in out


def test_pairs_unloadable_tokenizer_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pairs", "--tokenizer", str(tmp_path / "no-such-model")]) == 2
    err = capsys.readouterr().err
    assert "could not load a tokenizer" in err and "Traceback" not in err


# -- demo ------------------------------------------------------------------------------------------


def test_demo_on_bold(tmp_path: Path, bold_dir: Path) -> None:
    out_dir = tmp_path / "demo"
    result = run_module("demo", "--bold-dir", str(bold_dir), "--limit", "200", "--out-dir", str(out_dir))
    assert result.returncode == 0, result.stderr.decode()
    stdout = result.stdout.decode()
    assert "[demo 5/5]" in stdout and "falling back" not in stdout

    summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["source"] == "bold"
    assert summary["rows_in"] == 200
    assert summary["rows_out"] == 200 + summary["rows_swapped"]
    assert 0.05 < summary["share_rows_gendered"] < 0.9
    assert summary["swap_mb_per_s"] > 0 and summary["cda_mb_per_s"] > 0
    assert len(summary["examples"]) == 5
    token = summary["token_level"]
    assert 100 < token["tokens_swapped"] < 1000 and token["vocab_size"] == 50257
    assert 0.05 < token["share_rows_changed"] <= summary["share_rows_gendered"] + 0.05
    assert token["share_equal_to_tokenized_text_swap"] > 0.8
    assert len(token["examples"]) == 3
    assert len(read_jsonl(out_dir / "cda_two_sided.jsonl")) == summary["rows_out"]


def test_demo_falls_back_to_the_sample_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "demo"
    assert main(["demo", "--bold-dir", str(tmp_path / "no-bold"), "--out-dir", str(out_dir)]) == 0
    assert "falling back to the bundled sample corpus" in capsys.readouterr().out
    summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    lines = [line for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert summary["source"] == "sample_corpus"
    assert summary["rows_in"] == len(lines) >= 30
    assert summary["rows_out"] == len(lines) + summary["rows_swapped"]
    assert 0.3 < summary["share_rows_gendered"] < 1.0  # the sample mixes gendered and neutral text
