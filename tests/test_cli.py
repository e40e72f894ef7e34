"""The fairdistill-cda command line, in-process (main([...])) and as `python -m counterfactuals`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from counterfactuals.cli import main

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
}
REPO_ROOT = Path(__file__).resolve().parents[1]
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
    assert main(["swap", "--names", "James met Mary."]) == 0
    assert capsys.readouterr().out == "Mary met James.\n"
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


# -- start-up and the moved demo -------------------------------------------------------------------


@pytest.mark.parametrize("command", [["swap", "He thanked his aunt."], ["augment", "IN", "-o", "OUT"]])
def test_text_commands_do_not_import_torch(tmp_path: Path, command: list[str]) -> None:
    """swap and augment need neither torch nor transformers, and must not pay for importing them."""
    src = tmp_path / "corpus.txt"
    src.write_text("He thanked his aunt.\n", encoding="utf-8")
    argv = [str(src) if a == "IN" else str(tmp_path / "out.jsonl") if a == "OUT" else a for a in command]
    code = (
        "import sys\n"
        "from counterfactuals.cli import main\n"
        f"code = main({argv!r})\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=ENV, cwd=REPO_ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()
    assert "heavy: []" in result.stdout.decode()


def test_pair_map_still_imports_from_the_package() -> None:
    import counterfactuals
    from counterfactuals import PairMap, build_pair_map
    from counterfactuals.pair_map import PairMap as Defined

    assert PairMap is Defined and callable(build_pair_map) and "build_pair_map" in counterfactuals.__all__
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        counterfactuals.nothing  # noqa: B018


def test_demo_points_to_its_new_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--limit", "10"]) == 2
    err = capsys.readouterr().err
    assert "python -m fairdistill.demo" in err and len(err.strip().splitlines()) == 1
