"""BOLD (Dhamala et al., FAccT 2021; CC BY-SA 4.0): the one reader of its files, and the data folder.

BOLD is read from where it lies, never copied into this repository. Two kinds of file, one shape:
``prompts/<domain>_prompt.json`` and ``wikipedia/<domain>_wiki.json``, each ``{category: {page_name:
[text, ...]}}``; the Hub dataset ``AlexaAI/bold`` holds the same as one row per Wikipedia page
(``domain``, ``name``, ``category``, ``prompts``, ``wikipedia``).

* :func:`default_data_dir` finds the offline evaluation data (BOLD, WinoBias, CrowS-Pairs):
  ``$FAIRDISTILL_DATA``, else ``../shared/data`` beside the repository (or beside the working directory).
* :func:`read_bold` returns ``{domain: {category: {page: [text, ...]}}}`` for prompts or Wikipedia
  sentences, validated, from a local folder or a Hub id. :func:`eval.prompts.load_bold_prompts` builds
  :class:`eval.prompts.Prompt` objects on top of it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

__all__ = ["BOLD_HUB_ID", "bold_dir", "default_data_dir", "read_bold", "read_bold_wikipedia"]

BOLD_HUB_ID = "AlexaAI/bold"
DATA_ENV = "FAIRDISTILL_DATA"
_HUB_COLUMNS = ("domain", "category")  # "name" (the page) is used when present
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FOLDER = {"prompts": ("prompts", "_prompt.json"), "wikipedia": ("wikipedia", "_wiki.json")}
_LAYOUT = "prompts/<domain>_prompt.json, each {category: {page_name: [prompt, ...]}}"
_SHAPE = "{category: {page_name: [text, ...]}}"
Kind = Literal["prompts", "wikipedia"]


def default_data_dir() -> Path | None:
    """The offline data folder: ``$FAIRDISTILL_DATA`` when set, else the first existing
    ``../shared/data`` beside the repository or beside the current directory; None when none exists."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser().resolve()
    repo = Path(__file__).resolve().parents[1]
    for root in (repo.parent, Path.cwd().resolve().parent, Path.cwd().resolve()):
        candidate = root / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def bold_dir() -> Path | None:
    """``$FAIRDISTILL_BOLD_DIR``, else ``<default_data_dir()>/bold``, when it exists."""
    if os.environ.get("FAIRDISTILL_BOLD_DIR"):
        return Path(os.environ["FAIRDISTILL_BOLD_DIR"]).expanduser().resolve()
    data = default_data_dir()
    return data / "bold" if data is not None and (data / "bold").is_dir() else None


def read_bold(
    source: str | Path = BOLD_HUB_ID, domains: str | Sequence[str] = ("profession",), kind: Kind = "prompts"
) -> dict[str, dict[str, dict[str, list[str]]]]:
    """``{domain: {category: {page: [text, ...]}}}`` of BOLD's prompts or Wikipedia sentences.

    ``source`` is a local folder laid out like the BOLD repository (``prompts/``, ``wikipedia/``; a folder
    holding the ``*_prompt.json`` files directly also works for prompts) or a Hub id (``AlexaAI/bold``).
    Raises FileNotFoundError (showing the layout), ValueError (bad JSON or shape, naming the file and the
    key; unknown domain), ConnectionError (a Hub id that is not cached while offline)."""
    if kind not in _FOLDER:
        raise ValueError(f"kind must be 'prompts' or 'wikipedia', got {kind!r}")
    domain_list = [domains] if isinstance(domains, str) else list(domains)
    if not domain_list:
        raise ValueError("domains is empty: pass at least one BOLD domain, e.g. domains=('profession',)")
    where, location = _resolve_source(source)
    if where == "hub":
        return _read_hub(str(location), domain_list, kind)
    return {d: _read_domain_file(_domain_file(Path(location), d, kind)) for d in domain_list}


def read_bold_wikipedia(source: str | Path = BOLD_HUB_ID, domains: str | Sequence[str] = ("profession",)):
    """BOLD's Wikipedia sentences: ``read_bold(source, domains, kind="wikipedia")``."""
    return read_bold(source, domains, kind="wikipedia")


def _resolve_source(source: str | Path) -> tuple[str, str | Path]:
    """("local", path) for a ``Path`` or an existing folder, ("hub", id) for an ``owner/name`` string."""
    if isinstance(source, Path):
        return "local", source.expanduser()
    path = Path(source).expanduser()
    if path.exists() or not _HUB_ID_RE.match(source):
        return "local", path
    return "hub", source


def _domain_file(root: Path, domain: str, kind: Kind) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(
            f"BOLD folder {root} does not exist; pass a folder laid out like the BOLD repository "
            f"({root}/{_LAYOUT}) or a Hub dataset id such as {BOLD_HUB_ID!r}"
        )
    sub, suffix = _FOLDER[kind]
    folder = root / sub if (root / sub).is_dir() else root
    path = folder / f"{domain}{suffix}"
    if not path.is_file():
        present = sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))
        raise FileNotFoundError(
            f"{path} not found: a BOLD folder holds {_LAYOUT}; domains present in {folder}: "
            f"{present or 'none'}"
        )
    return path


def _read_domain_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """Parse and validate one ``<domain>_prompt.json`` / ``<domain>_wiki.json``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            f"a BOLD prompt file holds {_SHAPE}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); expected {_SHAPE}"
        ) from (exc)
    return _validate_shape(data, str(path))


def _validate_shape(data: Any, where: str) -> dict[str, dict[str, list[str]]]:
    def fail(at: str, value: Any) -> ValueError:
        return ValueError(f"{where}: expected {_SHAPE}, but {at} is a {type(value).__name__}")

    if not isinstance(data, dict):
        raise fail("the top level", data)
    for category, pages in data.items():
        if not isinstance(pages, dict):
            raise fail(f"[{category!r}]", pages)
        for page, prompts in pages.items():
            if not isinstance(prompts, list):
                raise fail(f"[{category!r}][{page!r}]", prompts)
            for i, text in enumerate(prompts):
                if not isinstance(text, str):
                    raise fail(f"[{category!r}][{page!r}][{i}]", text)
    return data


def _read_hub(
    dataset_id: str, domains: Sequence[str], kind: Kind
) -> dict[str, dict[str, dict[str, list[str]]]]:
    """Read a BOLD-shaped Hub dataset into ``{domain: {category: {page: [prompt, ...]}}}``."""
    import datasets  # lazy: the local path and the builtin prompts need no `datasets`

    hint = f"pass the path of a local BOLD folder ({_LAYOUT.split(',')[0]})"
    try:
        table = datasets.load_dataset(dataset_id, split="train")
    except ConnectionError as exc:  # offline mode (HF_DATASETS_OFFLINE=1) or no network
        raise ConnectionError(f"{dataset_id} is not cached and the Hub is unreachable; {hint}") from exc
    except datasets.exceptions.DatasetNotFoundError as exc:
        raise FileNotFoundError(f"Hub dataset {dataset_id!r} was not found; {hint}") from exc

    missing = [c for c in (*_HUB_COLUMNS, kind) if c not in table.column_names]
    if missing:
        raise ValueError(
            f"Hub dataset {dataset_id!r} has columns {table.column_names}, not BOLD's "
            f"(domain, name, category, prompts, wikipedia): missing {missing}; {hint}"
        )
    names = table["name"] if "name" in table.column_names else [None] * len(table)
    out: dict[str, dict[str, dict[str, list[str]]]] = {}
    for row, (domain, name, category, prompts) in enumerate(
        zip(table["domain"], names, table["category"], table[kind], strict=True)
    ):
        page = name if name is not None else f"row{row}"
        out.setdefault(domain, {}).setdefault(category, {})[page] = prompts
    unknown = [d for d in domains if d not in out]
    if unknown:
        raise ValueError(f"unknown BOLD domain(s) {unknown} in {dataset_id!r}; available: {sorted(out)}")
    return {d: _validate_shape(out[d], f"{dataset_id} (domain {d!r})") for d in domains}
