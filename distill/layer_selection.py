"""Choosing which teacher blocks a fewer-layer student keeps, by measurement.

Which layers a student keeps matters by orders of magnitude: SmolLM2-135M-Instruct without its layer 1
has perplexity ~400 where it had 26, and 24 evenly spaced layers of its 30 give 315 where 24 with a
contiguous middle block dropped give 78 (issue 12). DistilGPT-2's evenly spaced map is no rule, so:

* ``even`` -- :func:`distill.student.default_layer_map` (DistilGPT-2's ``[0, 2, 4, 7, 9, 11]`` for 12 -> 6);
* ``scan`` -- greedy removal: at each step remove the contiguous run of ``block`` kept layers whose
  removal raises the teacher's next-token loss on the calibration ids the least, until ``num_layers``
  remain. Work is reused: one pass through the kept layers records the hidden state entering every
  block, and each candidate is scored by running only the layers after its removed run (plus the head);
* ``angular`` -- Gromov et al. 2024 ("The Unreasonable Ineffectiveness of the Deeper Layers"; ShortGPT's
  block influence is the same idea): one pass records the hidden states, and the contiguous run of
  ``n = n_teacher - num_layers`` blocks whose input and output point most the same way -- mean over all
  token positions of ``arccos(cos(h_l, h_{l+n})) / pi`` -- is dropped.

Blocks are run generically: the decoder ``ModuleList`` (found by :func:`distill.student.decoder_layers`)
is swapped, for one forward pass, for a list that starts with a block replaying a recorded hidden state.
Every decoder block of transformers 5 takes the hidden states first and returns a tensor, so this works
for GPT-2, Llama (SmolLM2) and Qwen2 alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .student import _num_layers, decoder_layers, default_layer_map

__all__ = [
    "LAYER_SELECTION_METHODS",
    "LayerSelection",
    "calibration_ids_from_blocks",
    "check_selection_target",
    "measure_layer_selection",
    "select_teacher_layers",
]

LAYER_SELECTION_METHODS = ("even", "scan", "angular")


@dataclass
class LayerSelection:
    """What a selection chose and every score it measured (JSON-ready through :meth:`to_dict`).

    ``steps`` holds one entry per removal step: ``{"candidates": [{"removed": [...], "score": x}, ...],
    "removed": [...]}``. For ``scan`` the score is the teacher's mean next-token loss (nats) on the
    calibration ids with the candidate run removed (and all earlier steps' removals); for ``angular`` the
    angular distance in [0, 1]; ``even`` measures nothing.
    """

    method: str
    teacher_layers: int
    kept: list[int]
    removed: list[int]
    block: int | None = None
    teacher_loss: float | None = None  # mean next-token loss of the whole teacher on the calibration ids
    student_loss: float | None = None  # the same for the kept layers, before any training
    calibration_shape: list[int] | None = None  # [rows, tokens per row]
    calibration_tokens: int = 0
    calibration_sha256: str | None = None  # of the int64 token ids, row-major
    seconds: float = 0.0
    steps: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line: what was kept and what it measured, for logs and model cards."""
        line = f"{self.method}: kept {len(self.kept)} of {self.teacher_layers} layers {self.kept}"
        if self.teacher_loss is not None and self.student_loss is not None:
            line += (
                f"; calibration perplexity teacher {math.exp(self.teacher_loss):.1f}, student "
                f"{math.exp(min(self.student_loss, 50.0)):.1f} on {self.calibration_tokens} tokens"
            )
        return line + f"; {self.seconds:.1f} s"


def calibration_ids_from_blocks(blocks, num_tokens: int) -> torch.Tensor:
    """The first whole blocks of packed training text holding at least ``num_tokens`` tokens (fewer if the
    text is shorter), as a LongTensor (rows, block_size). ``blocks``: a dataset or a list of rows with
    ``input_ids``, or a list of id lists."""
    if blocks is None or len(blocks) == 0:
        raise ValueError(
            "a measured layer selection needs calibration text, but the training split has no blocks; "
            "give more training text or use student_layer_selection=even"
        )
    first = blocks[0]["input_ids"] if isinstance(blocks[0], dict) else blocks[0]
    width = len(first)
    rows = []
    for index in range(len(blocks)):
        row = blocks[index]["input_ids"] if isinstance(blocks[index], dict) else blocks[index]
        if len(row) == width:
            rows.append(list(row))
        if len(rows) * width >= num_tokens:
            break
    return torch.tensor(rows, dtype=torch.long)


# ----------------------------------------------------------------------------------------------------
# Running a chosen list of blocks from a recorded hidden state
# ----------------------------------------------------------------------------------------------------


class _Replay(nn.Module):
    """First in the block list, outputs a recorded hidden state: the blocks before it are skipped."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, hidden_states, *args, **kwargs):
        return self.hidden


class _Record(nn.Module):
    """A block that stores the hidden state entering it."""

    def __init__(self, block: nn.Module, store: list, position: int):
        super().__init__()
        self.block, self.store, self.position = block, store, position

    def forward(self, hidden_states, *args, **kwargs):
        self.store[self.position] = hidden_states
        return self.block(hidden_states, *args, **kwargs)


@contextlib.contextmanager
def _blocks_swapped(teacher: PreTrainedModel, modules: list[nn.Module], types: list | None) -> Iterator[None]:
    """The teacher runs ``modules`` instead of its decoder blocks (per-layer config lists follow)."""
    prefix, _ = decoder_layers(teacher)
    parent_name, _, attr = prefix.rpartition(".")
    parent = teacher.get_submodule(parent_name) if parent_name else teacher
    original = getattr(parent, attr)
    text_config = teacher.config.get_text_config(decoder=True)
    original_types = getattr(text_config, "layer_types", None)
    original_count = text_config.num_hidden_layers
    parent._modules[attr] = nn.ModuleList(modules)
    text_config.num_hidden_layers = len(modules)  # Llama runs `layers[: num_hidden_layers]`
    if types is not None and original_types is not None:
        text_config.layer_types = types
    try:
        yield
    finally:
        parent._modules[attr] = original
        text_config.num_hidden_layers = original_count
        if original_types is not None:
            text_config.layer_types = original_types


class _Passthrough(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _Runner:
    """Forward passes of the teacher over the calibration rows, through a chosen list of its blocks."""

    def __init__(self, teacher: PreTrainedModel, calibration_ids: torch.Tensor, rows_per_pass: int):
        self.teacher = teacher
        self.blocks = list(decoder_layers(teacher)[1])
        types = getattr(teacher.config.get_text_config(decoder=True), "layer_types", None)
        self.types = (
            list(types) if isinstance(types, (list, tuple)) and len(types) == len(self.blocks) else None
        )
        ids = calibration_ids.to(next(teacher.parameters()).device)
        self.batches = [ids[i : i + rows_per_pass] for i in range(0, ids.shape[0], rows_per_pass)]

    def run(
        self, layers: Sequence[int], entering: list[torch.Tensor] | None = None, record: bool = False
    ) -> tuple[float, list[list[torch.Tensor]] | None]:
        """The mean next-token loss through the teacher blocks ``layers`` (then final norm and head),
        started from the embeddings, or, given ``entering`` (one tensor per batch), from that recorded
        state in place of the embeddings' output. With ``record``, also per batch the states entering
        each of ``layers`` and the one leaving the last."""
        total, count, recorded = 0.0, 0, []
        for b, input_ids in enumerate(self.batches):
            store: list = [None] * (len(layers) + 1)
            modules: list[nn.Module] = [] if entering is None else [_Replay(entering[b])]
            for position, layer in enumerate(layers):
                block = self.blocks[layer]
                modules.append(_Record(block, store, position) if record else block)
            if record:
                modules.append(_Record(_Passthrough(), store, len(layers)))
            types = None
            if self.types is not None:  # replay and passthrough slots compute nothing: any type will do
                types = [self.types[i] for i in layers] or self.types[:1]
                types = types[:1] * (entering is not None) + types
                types += types[-1:] * (len(modules) - len(types))
            with _blocks_swapped(self.teacher, modules, types):
                logits = self.teacher(input_ids=input_ids, use_cache=False).logits
            total += F.cross_entropy(
                logits[:, :-1].float().flatten(0, 1), input_ids[:, 1:].flatten(), reduction="sum"
            ).item()
            count += input_ids[:, 1:].numel()
            if record:
                recorded.append(store)
        return total / count, (recorded if record else None)


# ----------------------------------------------------------------------------------------------------
# The methods
# ----------------------------------------------------------------------------------------------------


def _scan(
    runner: _Runner, n_teacher: int, num_layers: int, block: int, selection: LayerSelection
) -> list[int]:
    kept = list(range(n_teacher))
    # one pass through all blocks: the whole teacher's loss and the state entering every block;
    # states[b][j] enters kept[j] (states[b][0] is the embeddings' output), states[b][-1] leaves the last
    selection.teacher_loss, states = runner.run(kept, record=True)
    while len(kept) > num_layers:
        size = min(block, len(kept) - num_layers)
        candidates = []
        for start in range(len(kept) - size + 1):
            # the blocks before the removed run compute what they did: resume from the state entering it
            loss, _ = runner.run(kept[start + size :], [s[start] for s in states])
            candidates.append({"removed": kept[start : start + size], "score": loss})
        start = min(range(len(candidates)), key=lambda i: candidates[i]["score"])
        selection.steps.append({"candidates": candidates, "removed": candidates[start]["removed"]})
        rest = kept[start + size :]
        kept = kept[:start] + rest
        selection.student_loss = candidates[start]["score"]
        if len(kept) > num_layers:  # re-record from the removal point on; the states before it still hold
            _, tail = runner.run(rest, [s[start] for s in states], record=True)
            states = [s[:start] + t for s, t in zip(states, tail, strict=True)]
    return kept


def _angular(runner: _Runner, n_teacher: int, num_layers: int, selection: LayerSelection) -> list[int]:
    size = n_teacher - num_layers
    selection.teacher_loss, states = runner.run(list(range(n_teacher)), record=True)
    candidates = []
    for start in range(n_teacher - size + 1):
        total, count = 0.0, 0
        for batch in states:
            before, after = batch[start].float(), batch[start + size].float()
            cosine = F.cosine_similarity(before, after, dim=-1).clamp(-1.0, 1.0)
            total += (torch.arccos(cosine) / math.pi).sum().item()
            count += cosine.numel()
        candidates.append({"removed": list(range(start, start + size)), "score": total / count})
    best = min(candidates, key=lambda c: c["score"])
    selection.steps.append({"candidates": candidates, "removed": best["removed"]})
    kept = [i for i in range(n_teacher) if i not in best["removed"]]
    selection.student_loss, _ = runner.run(kept)
    return kept


def _check_calibration(calibration_ids, method: str) -> torch.Tensor:
    if calibration_ids is None:
        raise ValueError(
            f"method={method!r} measures the teacher on calibration text: pass calibration_ids, a LongTensor "
            "(rows, tokens) of training-text token ids (a few thousand tokens), or use method='even'"
        )
    ids = torch.as_tensor(calibration_ids)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32) or ids.shape[0] < 1 or ids.shape[1] < 2:
        raise ValueError(
            f"calibration_ids must be a LongTensor (rows, tokens) with at least 2 tokens per row, got "
            f"shape {tuple(ids.shape)} {ids.dtype}; pass blocks of tokenised training text"
        )
    return ids.long()


def check_selection_target(teacher: PreTrainedModel, num_layers: int) -> int:
    """The teacher's layer count, once it is clear that a ``num_layers`` student can be chosen from its
    blocks (cheap: call it before anything long runs)."""
    if not isinstance(teacher, PreTrainedModel):
        raise TypeError(f"teacher must be a transformers PreTrainedModel, got {type(teacher).__name__}")
    n_teacher = _num_layers(teacher.config)
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers < n_teacher:
        raise ValueError(
            f"num_layers={num_layers!r}: a student built from teacher layers keeps between 1 and "
            f"{n_teacher - 1} of the teacher's {n_teacher}; for a same-size student use student_init=lora"
        )
    decoder_layers(teacher)  # a teacher whose blocks cannot be found fails here
    return n_teacher


def measure_layer_selection(
    teacher: PreTrainedModel,
    num_layers: int,
    *,
    method: str = "scan",
    calibration_ids: torch.Tensor | None = None,
    block: int = 1,
    rows_per_pass: int = 8,
) -> LayerSelection:
    """:func:`select_teacher_layers` with its record: the kept layers and every measured score.

    Args:
        block: ``scan`` removes this many contiguous kept layers per greedy step (the last step fewer):
            1 is the finest search, larger is cheaper (a step costs about one teacher pass per candidate).
        rows_per_pass: calibration rows per forward pass (bounds memory: the logits of this many rows).
    """
    if method not in LAYER_SELECTION_METHODS:
        raise ValueError(f"method={method!r}: use one of {', '.join(LAYER_SELECTION_METHODS)}")
    n_teacher = check_selection_target(teacher, num_layers)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive integer (layers removed per scan step), got {block!r}")
    started = time.perf_counter()
    selection = LayerSelection(
        method, n_teacher, kept=[], removed=[], block=block if method == "scan" else None
    )
    if method == "even":
        selection.kept = default_layer_map(n_teacher, num_layers)
    else:
        ids = _check_calibration(calibration_ids, method)
        selection.calibration_shape = list(ids.shape)
        selection.calibration_tokens = ids.numel()
        selection.calibration_sha256 = hashlib.sha256(ids.contiguous().numpy().tobytes()).hexdigest()
        runner = _Runner(teacher, ids, rows_per_pass)
        was_training = teacher.training
        teacher.eval()
        try:
            with torch.no_grad():
                if method == "scan":
                    selection.kept = _scan(runner, n_teacher, num_layers, block, selection)
                else:
                    selection.kept = _angular(runner, n_teacher, num_layers, selection)
        finally:
            teacher.train(was_training)
    selection.removed = [i for i in range(n_teacher) if i not in selection.kept]
    selection.seconds = time.perf_counter() - started
    return selection


def select_teacher_layers(
    teacher: PreTrainedModel,
    num_layers: int,
    *,
    method: str = "scan",
    calibration_ids: torch.Tensor | None = None,
) -> list[int]:
    """The sorted indices of the teacher blocks a ``num_layers``-layer student keeps.

    ``method`` is ``"even"`` (evenly spaced, DistilGPT-2's map), ``"scan"`` (greedy removal of the layer
    whose absence raises the teacher's loss on ``calibration_ids`` least) or ``"angular"`` (drop the
    contiguous block that changes the hidden state least); ``calibration_ids`` is a LongTensor (N, T) of
    token ids, required by ``scan`` and ``angular``. :func:`measure_layer_selection` also returns the
    scores.
    """
    return measure_layer_selection(teacher, num_layers, method=method, calibration_ids=calibration_ids).kept
