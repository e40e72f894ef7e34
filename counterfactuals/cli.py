"""``fairdistill-cda`` (also ``python -m counterfactuals``): gender counterfactuals from the shell.

Subcommands:

``swap [TEXT]``
    Print the gender-swapped text (stdin when TEXT is omitted).
``augment INPUT -o OUTPUT``
    Counterfactual data augmentation of a local ``.txt`` (one example per non-empty line) or
    ``.jsonl``/``.json`` file, written as JSONL or text lines.
``pairs --tokenizer PATH_OR_HUB_ID``
    How many vocabulary tokens the token-level swap changes for a tokenizer, with a sample.
``demo``
    Moved to ``python -m fairdistill.demo`` (it reads BOLD and builds a tokenizer: application work);
    here it prints where, with exit status 2.

First names (``counterfactuals/data/first_names.tsv``) are swapped too unless ``--no-names``, as in
fairdistill training (``swap_names``, default on); ``--lexicon FILE`` replaces both lists.

Every user error (missing or empty file, bad encoding, missing column, ...) is one message on
stderr naming the fix, and exit status 2 — never a traceback. ``swap`` and ``augment`` import neither
torch nor transformers (importing torch took most of ``swap``'s start-up); ``pairs`` loads them when it
runs.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cda import COUNTERFACTUAL, MODES, ORIGINAL, SOURCE_COLUMN, SWAPPED_COLUMN, CDAError, augment_dataset
from .lexicon import Lexicon, LexiconError, default_lexicon, load_lexicon
from .swap import TextSwapper

PROG = "fairdistill-cda"
EXIT_USAGE = 2
DEMO_MOVED = (
    "the CDA demo moved: run `python -m fairdistill.demo` (same options: --bold-dir, --limit, --out-dir)"
)
INPUT_TYPES = {".txt": "text", ".jsonl": "json", ".json": "json"}
OUTPUT_TYPES = (".jsonl", ".json", ".txt")


class CLIError(Exception):
    """A problem with the user's input or settings: printed on stderr (no traceback), exit status 2."""


# --------------------------------------------------------------------------------------------------
# Input files


@dataclass(frozen=True)
class TextFileScan:
    """What :func:`scan_text_file` learnt about a file before ``datasets`` reads it."""

    size: int
    has_content: bool  # holds something other than whitespace
    encoding: str  # the encoding to load it with ("utf-8-sig" when a UTF-8 BOM leads)


def scan_text_file(path: Path, encoding: str = "utf-8", chunk_size: int = 1 << 20) -> TextFileScan:
    """Decode ``path`` in binary chunks and fail on the first undecodable byte with its offset, line
    and the fix. Done before loading because ``datasets`` would raise deep inside its builder, with
    a position relative to its read chunk and no hint. Also detects a blank file and a UTF-8 BOM."""
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise CLIError(
            f"unknown encoding {encoding!r}; use a Python codec name such as utf-8, latin-1, cp1252 or utf-16"
        ) from None
    decoder = codec.incrementaldecoder("strict")
    size = path.stat().st_size
    has_content = False
    offset = 0
    with path.open("rb") as f:
        head = f.read(4)
        f.seek(0)
        if head.startswith(b"\x1f\x8b"):
            raise CLIError(f"{path} is gzip-compressed; decompress it first (gunzip -k {path})")
        while True:
            chunk = f.read(chunk_size)
            final = not chunk
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk, final=final)
            except UnicodeDecodeError as err:
                raise CLIError(
                    _decode_error_message(path, codec.name, offset - pending + err.start, err)
                ) from None
            has_content = has_content or bool(text.strip().strip("\ufeff"))
            offset += len(chunk)
            if final:
                break
    if codec.name == "utf-8" and head.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"  # else the BOM would stick to the first example
    return TextFileScan(size=size, has_content=has_content, encoding=encoding)


def _decode_error_message(path: Path, encoding: str, offset: int, err: UnicodeDecodeError) -> str:
    line, column, snippet = _locate_byte(path, offset)
    where = f"{path}: not valid {encoding} at byte {offset} (line {line}, column {column}): {err.reason}"
    where += f", in {snippet}"
    with path.open("rb") as f:
        head = f.read(2)
    if head in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return (
            f"{where}. The file starts with a UTF-16 byte-order mark: rerun with --encoding utf-16, "
            f"or convert it once with: iconv -f utf-16 -t utf-8 {path} > {path.stem}.utf8{path.suffix}"
        )
    other = "latin-1" if encoding != "latin-1" else "cp1252"
    return (
        f"{where}. The file is probably Latin-1 / Windows-1252: rerun with --encoding {other} "
        f"(or cp1252), or convert it once with: iconv -f latin1 -t utf-8 {path} > "
        f"{path.stem}.utf8{path.suffix}"
    )


def _locate_byte(path: Path, offset: int) -> tuple[int, int, str]:
    """(1-based line, 1-based byte column, a printable excerpt around the byte) of ``offset``."""
    with path.open("rb") as f:
        prefix = f.read(offset)
        after = f.read(24)
    line = prefix.count(b"\n") + 1
    line_start = prefix.rfind(b"\n") + 1
    before = prefix[max(line_start, offset - 32) :]
    after = after.split(b"\n", 1)[0]
    snippet = (before + after).decode("utf-8", errors="backslashreplace")
    snippet = "".join(c if c.isprintable() else repr(c)[1:-1] for c in snippet)
    return line, offset - line_start + 1, f'"{snippet}"'


def load_input(path: Path, *, text_column: str, encoding: str, cache_dir: str | None = None) -> Any:
    """Load a local .txt (one example per non-empty line) or .jsonl/.json file as a ``Dataset``,
    with every check that would otherwise end in a traceback done first."""
    suffix = path.suffix.lower()
    if suffix not in INPUT_TYPES:
        raise CLIError(
            f"{path}: unsupported input type {suffix or '(no extension)'!r}; use a .txt file (one example "
            "per line) or .jsonl/.json records (e.g. convert a CSV with "
            "python -c \"import datasets; datasets.load_dataset('csv', data_files='in.csv')['train']"
            ".to_json('in.jsonl')\")"
        )
    if not path.exists():
        raise CLIError(f"input file {path} does not exist")
    if path.is_dir():
        raise CLIError(f"input {path} is a directory; pass one .txt or .jsonl file")
    scan = scan_text_file(path, encoding)
    if not scan.has_content:
        what = "no non-empty lines" if suffix == ".txt" else "no records"
        raise CLIError(f"input file {path} is empty ({scan.size} bytes, {what}); nothing to augment")

    import datasets

    builder = INPUT_TYPES[suffix]
    verbosity = datasets.logging.get_verbosity()
    # the json loader logs a parser failure with its traceback before raising; we report it instead
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        dataset = datasets.load_dataset(
            builder, data_files=str(path), split="train", encoding=scan.encoding, cache_dir=cache_dir
        )
    except Exception as err:  # datasets wraps parser errors in several types; report, don't trace
        raise CLIError(_load_error_message(path, builder, scan.encoding, err)) from None
    finally:
        datasets.logging.set_verbosity(verbosity)

    if builder == "text":
        if text_column != "text":
            dataset = dataset.rename_column("text", text_column)
        dataset = dataset.filter(
            lambda batch: [bool(t.strip()) for t in batch[text_column]],
            batched=True,
            desc="dropping blank lines",
        )
    if len(dataset) == 0:
        raise CLIError(f"input file {path} holds no rows; nothing to augment")
    if text_column not in dataset.column_names:
        strings = [
            name
            for name, feature in dataset.features.items()
            if getattr(feature, "dtype", None) in ("string", "large_string")
        ]
        nested = [name for name, feature in dataset.features.items() if not hasattr(feature, "dtype")]
        if strings:
            hint = f"; pass --text-column {strings[0]}"
        elif nested:
            hint = (
                f"; the records seem nested under {nested[0]!r}: write them one per line first, e.g. "
                f"jq -c '.{nested[0]}[]' {path} > {path.stem}.jsonl"
            )
        else:
            hint = ""
        raise CLIError(
            f"{path}: the records have no {text_column!r} field; available fields: "
            f"{dataset.column_names}{hint}"
        )
    _check_text_values(dataset, path, text_column)
    return dataset


def _check_text_values(dataset: Any, path: Path, text_column: str) -> None:
    """Name the first record without a string text in terms of the file (record number), not of the
    Python API: the CLI user fixes the file."""
    import pyarrow.compute as pc

    dtype = getattr(dataset.features[text_column], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise CLIError(
            f"{path}: field {text_column!r} holds {dtype or type(dataset.features[text_column]).__name__} "
            "values, not text; every record needs a string there (or pick another field with --text-column)"
        )
    column = dataset.data.column(text_column)
    if column.null_count:
        first = pc.index(pc.is_null(column), True).as_py()
        raise CLIError(
            f"{path}: record {first + 1} has no text in {text_column!r} (null or missing); "
            f"{column.null_count} record(s) in all — remove them or give them a string"
        )


def _load_error_message(path: Path, builder: str, encoding: str, err: Exception) -> str:
    cause: BaseException = err
    seen = {id(err)}
    while (inner := cause.__cause__ or cause.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        cause = inner  # the innermost error names the actual problem
    detail = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    if builder == "json":
        bad = _first_bad_json_line(path, encoding)
        if bad is not None:
            line, message = bad
            return (
                f"{path}:{line}: not a JSON record ({message}). Each line of a .jsonl file must be one "
                'JSON object such as {"text": "..."}; a .json file may also hold one list of such objects'
            )
    return f"could not read {path} with the datasets '{builder}' loader: {detail}"


def _first_bad_json_line(path: Path, encoding: str) -> tuple[int, str] | None:
    """(line, reason) of the first line of a JSON-lines file that is not a JSON object; None when
    the file is one JSON document (a .json list) or every line parses."""
    text = path.read_text(encoding=encoding)
    try:
        json.loads(text)
        return None  # a single JSON document: the loader's own message is the useful one
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            return number, f"{err.msg} at column {err.colno}"
        if not isinstance(value, dict):
            return number, f"got a JSON {type(value).__name__}, expected an object"
    return None


def _prepare_output(output: Path, input_path: Path | None = None) -> None:
    if output.is_dir():
        raise CLIError(f"output {output} is a directory; give a file name such as {output / 'cda.jsonl'}")
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_TYPES:
        raise CLIError(
            f"output {output}: unsupported type {suffix or '(no extension)'!r}; use .jsonl (all columns, "
            "one JSON record per line) or .txt (the text only, one example per line)"
        )
    if input_path is not None and output.resolve() == input_path.resolve():
        raise CLIError(f"output {output} is the input file; write to a new file")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot create the output folder {output.parent}: {err.strerror or err}") from None


@dataclass
class WriteStats:
    rows: int = 0
    swapped: int = 0  # input rows whose counterfactual differs from them
    multiline: int = 0  # rows with a line break (they span several lines of a .txt output)


def write_rows(dataset: Any, output: Path, *, text_column: str) -> WriteStats:
    """Write JSONL (``.jsonl``/``.json``) or text lines (``.txt``: the text column only), via a
    temporary file so a failed run never leaves half an output behind."""
    as_text = output.suffix.lower() == ".txt"
    stats = WriteStats()
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as f:
            for batch in dataset.iter(batch_size=1000):
                columns = list(batch)
                texts = batch[text_column]
                for i, text in enumerate(texts):
                    stats.rows += 1
                    # one counterfactual row per swapped input row, in both modes
                    stats.swapped += batch[SOURCE_COLUMN][i] == COUNTERFACTUAL
                    if as_text:
                        stats.multiline += "\n" in text or "\r" in text
                        f.write(text + "\n")
                    else:
                        record = {name: batch[name][i] for name in columns}
                        f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return stats


def _read_lexicon(path: str | None, names: bool | None) -> Lexicon:
    if path is None:
        return default_lexicon(names is not False)  # names on unless --no-names
    if names:
        print(
            "note: --names is ignored with --lexicon (the file replaces the built-in pairs)", file=sys.stderr
        )
    return load_lexicon(path)  # LexiconError names the file and line; main() prints it


# --------------------------------------------------------------------------------------------------
# Subcommands


def cmd_swap(args: argparse.Namespace) -> int:
    swapper = TextSwapper(_read_lexicon(args.lexicon, args.names))
    if args.text is not None:
        print(swapper(args.text))
        return 0
    if sys.stdin.isatty():
        print("reading text from stdin (end with Ctrl-D)", file=sys.stderr)
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text stream (e.g. replaced in tests)
        text = sys.stdin.read()
    else:
        data = stream.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise CLIError(
                f"stdin is not valid UTF-8 at byte {err.start} (line {line}): {err.reason}; convert it "
                "first, e.g. iconv -f latin1 -t utf-8 FILE | fairdistill-cda swap"
            ) from None
    sys.stdout.write(swapper(text))
    sys.stdout.flush()
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    input_path, output = Path(args.input), Path(args.output)
    lexicon = _read_lexicon(args.lexicon, args.names)
    if args.num_proc is not None and args.num_proc < 1:
        raise CLIError(f"--num-proc must be >= 1, got {args.num_proc}")
    _prepare_output(output, input_path)
    # A private cache: a one-off conversion should not leave Arrow copies of the corpus behind.
    with tempfile.TemporaryDirectory(prefix="fairdistill-cda-", ignore_cleanup_errors=True) as cache_dir:
        dataset = load_input(
            input_path, text_column=args.text_column, encoding=args.encoding, cache_dir=cache_dir
        )
        rows_in = len(dataset)
        augmented = augment_dataset(
            dataset, mode=args.mode, text_column=args.text_column, lexicon=lexicon, num_proc=args.num_proc
        )
        stats = write_rows(augmented, output, text_column=args.text_column)
        del dataset, augmented  # release the Arrow files before the folder is removed
    seconds = time.perf_counter() - start
    if stats.multiline:
        print(
            f"warning: {stats.multiline} rows contain line breaks, so they span several lines of {output}; "
            "write .jsonl to keep one row per example",
            file=sys.stderr,
        )
    share = stats.swapped / rows_in if rows_in else 0.0
    print(
        f"{args.mode}: {rows_in} rows in, {stats.rows} rows out, {stats.swapped} rows swapped "
        f"({share:.1%}), {seconds:.2f} s -> {output}"
    )
    return 0


def _load_tokenizer(name: str, gguf_file: str | None) -> Any:
    from transformers import AutoTokenizer

    path = Path(name)
    if gguf_file is None and path.suffix == ".gguf" and path.is_file():
        name, gguf_file = str(path.parent), path.name  # a .gguf path given directly
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(name, **kwargs)
    except Exception as err:  # OSError, ValueError, ImportError, hub errors: all mean "cannot load"
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        if isinstance(err, ImportError):
            hint = "install the missing package (reading a GGUF file needs: pip install gguf)"
        elif path.is_dir() and gguf_file and not (path / gguf_file).is_file():
            found = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"{path} has no file {gguf_file}; GGUF files there: {', '.join(found) or 'none'}"
        elif path.exists():
            hint = (
                "a tokenizer folder needs tokenizer.json or tokenizer_config.json with its vocabulary "
                "files (as written by tokenizer.save_pretrained), or pass a .gguf file"
            )
        elif offline:
            hint = (
                "offline (HF_HUB_OFFLINE=1) only a local folder with tokenizer files, a .gguf file "
                "(--gguf-file NAME) or a model already in the Hugging Face cache can be loaded; check "
                "the path or Hub id, or download it once with network access"
            )
        else:
            hint = "check the Hub id (owner/name) or the local path; gated models need `hf auth login`"
        raise CLIError(
            f"could not load a tokenizer from {name!r} ({type(err).__name__}: {detail}); {hint}"
        ) from None


def _decode_token(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id])


def cmd_pairs(args: argparse.Namespace) -> int:
    from .pair_map import build_pair_map

    lexicon = _read_lexicon(args.lexicon, args.names)
    tokenizer = _load_tokenizer(args.tokenizer, args.gguf_file)
    pair_map = build_pair_map(tokenizer, lexicon=lexicon)
    print(
        f"{type(tokenizer).__name__} ({len(tokenizer)} tokens): the pair map swaps {len(pair_map)} tokens "
        f"({pair_map.edge_src.numel()} source->target edges, {len(lexicon.swaps)} lexicon words)"
    )
    edges = list(zip(pair_map.edge_src.tolist(), pair_map.edge_dst.tolist(), strict=True))
    shown = edges[: max(args.show, 0)]
    if shown:
        print(f"first {len(shown)} by token id (lower ids are more frequent BPE merges):")
        for src, dst in shown:
            print(f"  {src:>6} {_decode_token(tokenizer, src)!r:>16} -> {_decode_token(tokenizer, dst)!r}")
    return 0


def cmd_demo_moved(args: argparse.Namespace) -> int:
    raise CLIError(DEMO_MOVED)  # counterfactuals imports nothing above it, so it points the way instead


# --------------------------------------------------------------------------------------------------
# Entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Gender counterfactuals of text: swap words, augment a corpus (CDA), "
        "or inspect a tokenizer's token-level pair map.",
        epilog="Examples:\n"
        "  fairdistill-cda swap 'He thanked his aunt.'\n"
        "  fairdistill-cda augment corpus.txt -o runs/corpus_cda.jsonl --num-proc 8\n"
        "  fairdistill-cda pairs --tokenizer HuggingFaceTB/SmolLM2-135M\n"
        "Exit status: 0 on success, 2 on bad input or settings (message on stderr).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def lexicon_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--names",
            action=argparse.BooleanOptionalAction,
            default=None,  # None = on; kept apart from an explicit --names for the --lexicon note
            help="also swap the built-in first-name pairs (default: on, as fairdistill training's "
            "swap_names; --no-names: the gendered words only)",
        )
        p.add_argument(
            "--lexicon",
            metavar="FILE",
            help="pair file (TSV 'male<TAB>female[<TAB>direction]' or JSON) replacing the built-in pairs",
        )

    p = sub.add_parser("swap", help="print the gender-swapped text", description="Print TEXT gender-swapped.")
    p.add_argument("text", nargs="?", metavar="TEXT", help="text to swap (default: read stdin)")
    lexicon_options(p)
    p.set_defaults(func=cmd_swap)

    p = sub.add_parser(
        "augment",
        help="counterfactual data augmentation of a .txt/.jsonl file",
        description="Counterfactual data augmentation. two_sided keeps every row and adds the "
        "counterfactual right after each row the swap changes (gender-neutral rows are not "
        "duplicated); one_sided replaces each row by its counterfactual. Output columns: the input's, "
        f"plus {SOURCE_COLUMN} ({ORIGINAL}|{COUNTERFACTUAL}) and {SWAPPED_COLUMN}.",
    )
    p.add_argument(
        "input", metavar="INPUT", help=".txt (one example per non-empty line) or .jsonl/.json records"
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="OUTPUT", help=".jsonl/.json (JSON lines) or .txt"
    )
    p.add_argument("--mode", choices=MODES, default="two_sided")
    p.add_argument("--text-column", default="text", help="field holding the text (default: text)")
    p.add_argument("--num-proc", type=int, default=None, metavar="N", help="worker processes for Dataset.map")
    p.add_argument(
        "--encoding", default="utf-8", help="input encoding (default: utf-8; output is always UTF-8)"
    )
    lexicon_options(p)
    p.set_defaults(func=cmd_augment)

    p = sub.add_parser(
        "pairs",
        help="show the token-level pair map of a tokenizer",
        description="Load a tokenizer and show how many vocabulary tokens the token-level gender swap "
        "changes.",
    )
    p.add_argument(
        "--tokenizer", required=True, metavar="PATH_OR_HUB_ID", help="local folder, .gguf file or Hub id"
    )
    p.add_argument("--gguf-file", metavar="NAME", help="GGUF file name inside the folder / Hub repo")
    p.add_argument("--show", type=int, default=20, metavar="N", help="how many pairs to print (default: 20)")
    lexicon_options(p)
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser("demo", help="moved: python -m fairdistill.demo", add_help=False)
    p.set_defaults(func=cmd_demo_moved)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input or usage) instead of exiting."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "demo":  # the moved demo's old options are not an error of their own
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # --help (0) or a usage error argparse already printed (2)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else EXIT_USAGE)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (CLIError, CDAError, LexiconError) as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `... | head`: stop quietly, as shell tools do
        _silence_stdout()
        return 141


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
