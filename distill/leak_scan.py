"""What must never be uploaded: access tokens, W&B keys and absolute local paths.

:func:`find_leaks` reads every file of a folder about to be pushed and reports each hit by file and line;
:func:`strip_local_paths` rewrites local paths in text we write ourselves (a config, a command line)
so that the scan has nothing to find.

The rules, chosen to catch real leaks and nothing that belongs in a model repository:

- **Hugging Face token**: ``hf_`` starting a word, then 30 or more letters and digits (real tokens have 34).
- **W&B API key**: 40 hex digits (optionally behind a ``host-`` prefix, as local-server keys are) right
  after a name containing ``wandb`` and ``key`` (``WANDB_API_KEY=...``, ``"wandb_api_key": "..."``), or
  after ``password`` as in a ``.netrc`` line (``machine api.wandb.ai login user password ...``).
- **Absolute local path**: a path that starts at a filesystem root where people's files live -- ``/home``,
  ``/root``, ``/Users``, ``/tmp``, ``/var``, ``/private``, ``/mnt``, ``/media``, ``/opt``, ``/srv``,
  ``/scratch``, ``/data``, ``/work``, ``/workspace``, ``/nfs``, ``/gpfs``, ``/lustre``, ``/content``,
  ``/kaggle``, ``/Volumes`` -- or ``~/``, a Windows ``C:\\Users\\`` path, or a ``file://`` URL. The path
  must begin the token: a ``/`` right after a letter, digit, ``.``, ``:``, ``/``, ``-`` or ``~`` is part
  of a URL (``https://huggingface.co/data/...``), a relative path (``runs/tmp/x``, ``./home``) or a ratio
  (``f/m``), never a local root. A fixed list of roots, rather than "anything that starts with /", keeps
  tokenizer vocabularies (which hold tokens such as ``/`` and ``/>``) and prose free of false alarms.
- Any exact secret the caller passes (the token used to push).

Safetensors files are scanned in their JSON header (where metadata lives), not in their tensor bytes.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = ["LOCAL_PATH", "Leak", "find_leaks", "strip_local_paths"]

_ROOTS = (
    "home|root|Users|tmp|var|private|mnt|media|opt|srv|scratch|data|work|workspace|nfs|gpfs|lustre|"
    "content|kaggle|Volumes"
)
_NOT_AFTER = r"(?<![\w.:/~\\-])"  # see the module docstring: URLs, relative paths, ratios
_PATH_TAIL = r"""[^\s"'`<>|,;)\]}]*"""
LOCAL_PATH = re.compile(
    rf"{_NOT_AFTER}(?:/(?:{_ROOTS})(?=[/\s\"'`<>|,;)\]}}]|$){_PATH_TAIL}"
    rf"|~/{_PATH_TAIL}"
    rf"|(?<![\w])[A-Za-z]:\\{{1,2}}(?:Users|Documents and Settings)\\{_PATH_TAIL}"
    rf"|\bfile:///{_PATH_TAIL})"
)
_HF_TOKEN = re.compile(r"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{30,}")
_WANDB_KEY = re.compile(r"(?i)(?:wandb\w*key\W{0,4}|\bpassword\s+)(?:[\w.]+-)?[0-9a-f]{40}(?![0-9a-f])")


@dataclass(frozen=True)
class Leak:
    path: Path  # relative to the scanned folder
    line: int  # 1-based; 0 for a safetensors header
    what: str  # what was found, never the secret itself

    def __str__(self) -> str:
        where = f"{self.path.as_posix()}:{self.line}" if self.line else f"{self.path.as_posix()} (header)"
        return f"{where} contains {self.what}"


def _safetensors_header(path: Path) -> str:
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            return ""
        (size,) = struct.unpack("<Q", raw)
        return f.read(min(size, 100_000_000)).decode("utf-8", errors="replace")


def _line_leaks(text: str, secrets: Iterable[str]) -> Iterable[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if any(secret and secret in line for secret in secrets):
            yield number, "your Hugging Face token (the one used to push)"
        elif _HF_TOKEN.search(line):
            yield number, "a Hugging Face access token (hf_...)"
        if _WANDB_KEY.search(line):
            yield number, "a W&B API key"
        match = LOCAL_PATH.search(line)
        if match:
            yield number, f"an absolute local path ({match.group(0)[:80]})"


def find_leaks(folder: str | Path, *, secrets: Iterable[str] = ()) -> list[Leak]:
    """Every token, W&B key, local path or given secret in the files under ``folder``, in file order."""
    folder = Path(folder)
    secrets = [s for s in secrets if s]
    leaks = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if path.name.endswith(".safetensors"):
            header = _safetensors_header(path)
            leaks += [Leak(relative, 0, what) for _, what in _line_leaks(header, secrets)]
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        leaks += [Leak(relative, number, what) for number, what in _line_leaks(text, secrets)]
    return leaks


def _local_name(match: re.Match[str]) -> str:
    path = match.group(0).rstrip("/\\")
    name = (PureWindowsPath if "\\" in path else PurePosixPath)(path).name
    return f"<local: {name}>" if name else "<local>"


def strip_local_paths(text: str) -> str:
    """``text`` with every absolute local path replaced by ``<local: NAME>`` (its last component)."""
    return LOCAL_PATH.sub(_local_name, text)


def strip_local_paths_in(value):
    """A JSON-like value (dicts, lists, strings) with :func:`strip_local_paths` applied to every string."""
    if isinstance(value, str):
        return strip_local_paths(value)
    if isinstance(value, dict):
        return {key: strip_local_paths_in(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strip_local_paths_in(item) for item in value]
    return value


if __name__ == "__main__":  # pragma: no cover - a manual check: python -m distill.leak_scan FOLDER
    import sys

    found = find_leaks(sys.argv[1])
    print(json.dumps([str(leak) for leak in found], indent=2))
    sys.exit(1 if found else 0)
