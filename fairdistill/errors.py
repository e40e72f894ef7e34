"""Errors a user can act on, for the application layer's commands (``recipes/main_job.py``,
``recipes/study.py``): one or two lines on stderr -- what was wrong, where, what to do -- and exit 2;
the traceback only with ``FAIRDISTILL_DEBUG=1`` (the same variable and message as ``distill.train``).

Also the checks every command needs for what users type: a name that becomes a path component
(:func:`check_path_name`), and text files read as UTF-8 with the line of a bad byte (:func:`read_text`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEBUG_ENV = "FAIRDISTILL_DEBUG"
# what a user's input can raise: our checks (ValueError subclasses, UnicodeDecodeError, JSONDecodeError)
# and missing or unreadable files and folders
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


class UserError(ValueError):
    """Bad input: a value, file or folder the user gave. The message says what, where and what to do."""


def debug() -> bool:
    """Whether ``FAIRDISTILL_DEBUG`` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def run_cli(main: Callable[[], Any], errors: tuple[type[BaseException], ...] = USER_ERRORS) -> Any:
    """``main()``; a user error in it is printed as one line plus a hint and exits 2 (re-raised with
    ``FAIRDISTILL_DEBUG=1``)."""
    try:
        return main()
    except errors as err:
        if debug():
            raise
        print(f"error: {err}\n(set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
        sys.exit(2)


def check_path_name(name: Any, what: str, error: type[UserError] = UserError) -> str:
    """``name`` if it is safe as one path component (a folder or file name under an output folder), else
    ``error`` (a :class:`UserError`): empty, ``.``/``..``, a separator, an absolute path or a control
    character could write outside the output folder or collide with another name."""
    problem = None
    if not isinstance(name, str) or not name.strip():
        problem = "is empty" if isinstance(name, str) or name is None else f"is a {type(name).__name__}"
    elif name in (".", "..") or name != name.strip():
        problem = "is not a plain name"
    elif "/" in name or "\\" in name or os.path.isabs(name) or (os.altsep and os.altsep in name):
        problem = "contains a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains a control character"
    if problem:
        raise error(
            f"{what} {name!r} {problem}: it names a folder, so use letters, digits and . _ - + only "
            "(no '/', '..' or absolute paths)"
        )
    return name


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of ``path``; a missing file or an invalid byte is a :class:`UserError` naming the
    file, the line and what to do."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder, not a file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(
            f"{what} {path}, line {line}: not valid UTF-8 (byte 0x{data[err.start]:02x} at offset "
            f"{err.start}); save it as UTF-8"
        ) from None


def check_text_file(path: str | Path, what: str = "text file", chunk_bytes: int = 1 << 20) -> Path:
    """``path`` if it is a file of UTF-8 text with something in it, read in pieces (memory stays flat
    whatever its size); else a :class:`UserError` naming the file, the line of a bad byte and the fix."""
    import codecs

    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a file")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines, content = 0, 1, False
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(chunk_bytes)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                # the decoder may hold back up to 3 bytes of an unfinished character from the last piece
                start = max(err.start - len(err.object) + len(chunk), 0)
                lines += chunk[:start].count(b"\n")
                raise UserError(
                    f"{what} {path}, line {lines}: not valid UTF-8 (near byte offset {offset + start}); "
                    "save it as UTF-8"
                ) from None
            content = content or bool(text.strip())
            lines += chunk.count(b"\n")
            offset += len(chunk)
            if not chunk:
                break
    if not content:
        raise UserError(f"{what} {path} is empty: give a file with text in it")
    return path


def read_json(path: str | Path, what: str = "file") -> Any:
    """:func:`read_text`, parsed as JSON; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as err:
        raise UserError(
            f"{what} {path}, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg})"
        ) from None
