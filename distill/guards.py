"""What keeps a run from silently corrupting, leaking or losing anything (issue 18).

* non-finite values: where a non-finite loss came from (which rows and positions of the student's logits
  or the teacher's target), and whether weights about to be saved are all finite;
* secrets: the command line and config values a tracker or a file may see, with tokens and keys redacted;
* output folders: refuse to write over a finished run; tell complete checkpoints from ones a kill cut short;
* tokenizers: one fingerprint of the token -> id map, so teacher and student are compared by content;
* stalled peers: a watchdog callback that ends a DDP rank left waiting longer than ddp_timeout.

Plain functions on tensors, paths and tokenizers, and that one callback; the trainer and the launcher
call them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from transformers import TrainerCallback

REDACTED = "<redacted>"
CHECKPOINT_PREFIX = "checkpoint-"
# a checkpoint is written under <output_dir>/tmp-checkpoints/ and renamed into place once complete, so a
# run killed mid-save leaves no half-written checkpoint-N (the trainer's _save_checkpoint)
STAGING_DIR = "tmp-checkpoints"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# the files a checkpoint is complete with: Trainer writes trainer_state.json last, after the weights,
# optimizer, scheduler and RNG state, so its presence (parsable) marks a checkpoint whose writing ended
STATE_FILE = "trainer_state.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "pytorch_model.bin",  # written by FSDP/DeepSpeed saves, never loaded by us from an untrusted source
)


class NonFiniteError(RuntimeError):
    """A non-finite loss term, target or weight: the run stops instead of training on or saving it."""


class OutputDirError(ValueError):
    """The output folder holds another run, or a checkpoint to resume from is missing or incomplete."""


# ----------------------------------------------------------------------------------------------------
# Non-finite values
# ----------------------------------------------------------------------------------------------------


def nonfinite_positions(values: torch.Tensor) -> list[tuple[int, int]]:
    """(row, position) of every position of a (B, T, V) tensor of logits or log-probabilities that cannot
    be a distribution: a NaN or +inf anywhere, or -inf everywhere (softmax of that is 0/0)."""
    values = values.detach()
    broken = values.isnan().any(-1) | values.isposinf().any(-1) | values.isneginf().all(-1)
    return [tuple(pair) for pair in broken.nonzero().tolist()]


def describe_positions(positions: Sequence[tuple[int, int]], limit: int = 5) -> str:
    """'rows [0, 3] (row 0 position 7; row 3 positions 2, 5)', at most ``limit`` rows spelled out."""
    by_row: dict[int, list[int]] = {}
    for row, position in positions:
        by_row.setdefault(row, []).append(position)
    rows = sorted(by_row)
    parts = []
    for row in rows[:limit]:
        at = by_row[row]
        shown = ", ".join(map(str, at[:limit])) + (", ..." if len(at) > limit else "")
        parts.append(f"row {row} position{'s' if len(at) > 1 else ''} {shown}")
    more = f", and {len(rows) - limit} more rows" if len(rows) > limit else ""
    return f"rows {rows[:limit]}{'...' if more else ''} ({'; '.join(parts)}{more})"


def nonfinite_parameters(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors holding a NaN or inf: one fused check and one host sync when all are finite
    (the usual case); the names are looked up only when something is not."""
    named = [(name, t) for name, t in named if t.is_floating_point()]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(t).all().to(named[0][1].device) for _, t in named])
    if bool(flags.all()):
        return []
    return [name for (name, _), ok in zip(named, flags.tolist(), strict=True) if not ok]


# ----------------------------------------------------------------------------------------------------
# Secrets
# ----------------------------------------------------------------------------------------------------


def is_secret_name(name: str) -> bool:
    """Field or flag names whose values are credentials: ``*_token`` (hub_token), anything with ``key``
    (api_key, wandb_key), ``secret`` or ``password`` in its name."""
    name = name.lower().lstrip("-").replace("-", "_")
    return name.endswith("_token") or name == "token" or any(w in name for w in ("key", "secret", "password"))


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the value of every secret flag (``--hub_token X``, ``--hub_token=X``) replaced."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
        elif arg.startswith("--") and "=" in arg and is_secret_name(arg.split("=", 1)[0]):
            out.append(arg.split("=", 1)[0] + "=" + REDACTED)
        elif arg.startswith("--") and is_secret_name(arg):
            out.append(arg)
            hide_next = True
        else:
            out.append(arg)
    return out


def redact_mapping(values: dict) -> dict:
    """A copy of a config mapping with the value of every secret key (set to anything) replaced."""
    return {k: (REDACTED if is_secret_name(k) and v not in (None, "") else v) for k, v in values.items()}


# ----------------------------------------------------------------------------------------------------
# Output folders and checkpoints
# ----------------------------------------------------------------------------------------------------


def check_output_dir(output_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start in a non-empty ``output_dir`` unless the run resumes from it or may overwrite it."""
    path = Path(output_dir)
    if resume or overwrite or not path.is_dir():
        return
    entries = sorted(p.name for p in path.iterdir())
    if entries:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise OutputDirError(
            f"output_dir {path} is not empty ({shown}): it holds another run. Pass --resume_from_checkpoint "
            "latest to continue it, --overwrite_output_dir true to replace it, or another --output_dir"
        )


def check_writable(output_dir: str | os.PathLike) -> None:
    """Write (then remove) a probe file in ``output_dir``, or in its nearest existing parent when it does
    not exist yet (nothing is left behind), so that a folder the run cannot write (under a regular file,
    read-only, a full disk) fails before any model loads, in one line."""
    import tempfile

    path = Path(output_dir)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputDirError(
            f"output_dir {path} cannot be created: {existing} is a file, not a folder; "
            "pass another --output_dir"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".fairdistill-write-probe-"):
            pass
    except OSError as err:
        raise OutputDirError(
            f"output_dir {path} cannot be written ({err.strerror or err}): pass an --output_dir in a "
            "folder you can write to"
        ) from None


def clear_checkpoints(output_dir: str | os.PathLike) -> list[str]:
    """Remove the ``checkpoint-N`` folders of a run being overwritten (so that none of them is resumed
    into the new run by mistake); the other files are replaced as the new run writes them."""
    import shutil

    removed = []
    for folder, _ in _numbered_checkpoints(Path(output_dir)):
        shutil.rmtree(folder)
        removed.append(folder.name)
    staging = Path(output_dir) / STAGING_DIR
    if staging.is_dir():  # what a save killed mid-way left
        shutil.rmtree(staging)
        removed.append(STAGING_DIR)
    return removed


def commit_checkpoint(staged: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the fully written checkpoint ``staged`` to ``final`` in one rename (atomic on one file
    system): ``final`` is either absent or complete. A ``final`` already there (the same step saved again
    after a resume) is replaced; the staging folder is removed once empty."""
    import shutil

    staged, final = Path(staged), Path(final)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staged, final)
    try:
        staged.parent.rmdir()
    except OSError:  # not empty: another save's leftovers, cleared when that step is saved again
        pass


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` is not a complete checkpoint (None when it is): the missing or unreadable file."""
    folder = Path(folder)
    if not folder.is_dir():
        return "it does not exist"
    state = folder / STATE_FILE
    if not state.is_file():
        return f"it has no {STATE_FILE} (its writing was cut short)"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return f"its {STATE_FILE} is not valid JSON (its writing was cut short)"
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        return f"it has no model weights ({' or '.join(WEIGHT_FILES[:3])})"
    return None


def _numbered_checkpoints(output_dir: Path) -> list[tuple[Path, int]]:
    if not output_dir.is_dir():
        return []
    found = [
        (p, int(m.group(1))) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))
    ]
    return sorted(found, key=lambda item: item[1])


def resolve_resume(output_dir: str | os.PathLike, resume: str | bool | None) -> tuple[str | None, list[str]]:
    """The checkpoint to resume from and notes on incomplete ones passed over.

    ``resume`` may be None/false (start fresh), true/latest (the newest *complete* ``checkpoint-N`` of
    ``output_dir``), or a checkpoint folder (refused, naming the last complete one, when incomplete)."""
    if resume is None or resume is False or str(resume).lower() in ("", "false", "no", "none"):
        return None, []
    output_dir = Path(output_dir)
    checkpoints = _numbered_checkpoints(output_dir)
    problems = {folder: checkpoint_problem(folder) for folder, _ in checkpoints}
    complete = [folder for folder, _ in checkpoints if problems[folder] is None]
    last = (
        f"the last complete one is {complete[-1]}" if complete else f"{output_dir} has no complete checkpoint"
    )
    if resume is True or str(resume).lower() in ("true", "latest", "yes"):
        if not complete:
            broken = "; ".join(f"{f.name}: {p}" for f, p in problems.items() if p)
            raise OutputDirError(
                f"--resume_from_checkpoint {resume}: {output_dir} has no complete checkpoint"
                + (f" ({broken})" if broken else "")
                + "; start afresh with --overwrite_output_dir true"
            )
        chosen = complete[-1]
        notes = [
            f"{folder} is incomplete ({problems[folder]}); resuming from {chosen} instead"
            for folder, number in checkpoints
            if problems[folder] is not None and number > int(chosen.name.removeprefix(CHECKPOINT_PREFIX))
        ]
        return str(chosen), notes
    problem = checkpoint_problem(resume)
    if problem is not None:
        raise OutputDirError(
            f"cannot resume from {resume}: {problem}; {last} (or pass --resume_from_checkpoint latest)"
        )
    return str(resume), []


# ----------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------


def vocabulary_fingerprint(tokenizer) -> str:
    """SHA-256 of the tokenizer's token -> id map (added tokens included): equal iff the vocabularies are."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()


def first_vocabulary_difference(a, b) -> str:
    """A short description of where two vocabularies differ, for the error message."""
    va, vb = a.get_vocab(), b.get_vocab()
    if len(va) != len(vb):
        return f"{len(va)} vs {len(vb)} tokens"
    ib = {i: t for t, i in vb.items()}
    for token, i in sorted(va.items(), key=lambda item: item[1]):
        if ib.get(i) != token:
            return (
                f"same size ({len(va)} tokens), but id {i} is {token!r} in one and {ib.get(i)!r} in the other"
            )
    return f"same size ({len(va)} tokens), same ids, different special tokens"


# ----------------------------------------------------------------------------------------------------
# Stalled peers
# ----------------------------------------------------------------------------------------------------


class StallWatchdog(TrainerCallback):
    """Ends a multi-process run whose training makes no progress for ``timeout`` seconds (the run's
    ddp_timeout): a stopped or wedged peer leaves the others blocked in a collective, and gloo's own
    timeout does not reliably end them. Beats at every step, micro-step, eval batch, log and save while
    training runs; on expiry it prints which rank waited how long and exits the process (status 1), so
    the launcher tears the rest of the run down."""

    POLL_SECONDS = 1.0

    def __init__(self, timeout: float, rank: int, exit=os._exit) -> None:
        import threading
        import time

        self.timeout, self.rank, self._exit = float(timeout), rank, exit
        self._clock = time.monotonic
        self._last = self._clock()
        self._armed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fairdistill-stall-watchdog", daemon=True)

    def beat(self, *_args, **_kwargs) -> None:
        self._last = self._clock()

    def on_train_begin(self, *args, **kwargs) -> None:
        self.beat()
        self._armed.set()
        if not self._thread.is_alive():
            self._thread.start()

    def on_train_end(self, *args, **kwargs) -> None:
        self._armed.clear()

    on_step_begin = on_step_end = on_substep_end = on_prediction_step = on_evaluate = on_log = on_save = beat

    def _watch(self) -> None:
        import sys

        while not self._stop.wait(self.POLL_SECONDS):
            waited = self._clock() - self._last
            if self._armed.is_set() and waited > self.timeout:
                print(
                    f"error: rank {self.rank}: no training progress for {waited:.0f} s (ddp_timeout="
                    f"{self.timeout:.0f}): a peer process is stopped, wedged or gone. Ending the run; resume "
                    "it from the last checkpoint (--resume_from_checkpoint latest)",
                    file=sys.stderr,
                    flush=True,
                )
                self._exit(1)
                return
