"""Intrinsic bias benchmarks by likelihood: CrowS-Pairs and WinoBias (no sampling, deterministic).

Both compare the total log-likelihood a causal LM gives the two sentences of a minimal pair:

    LL(s) = sum_{t=1..n} log p(x_t | x_0 .. x_{t-1}),   x_0 = BOS (EOS where the tokenizer has none),

where ``x_1 .. x_n`` are the tokens of the whole sentence (no special tokens of its own). This is how
lm-evaluation-harness scores its ``crows_pairs_english*`` tasks for causal LMs: an empty context, which the
harness replaces by its prefix token (BOS, else EOS), and the sentence as the continuation.

* **CrowS-Pairs** (Nangia et al., EMNLP 2020; CC BY-SA 4.0, evaluation only): ``stereotype_share`` is the
  share of pairs whose ``sent_more`` (the more stereotyping sentence, whichever direction the pair is)
  has the higher LL -- the harness's ``pct_stereotype``. 0.5 = no preference.
* **WinoBias** (Zhao et al., NAACL 2018; MIT): line ``k`` of ``pro_stereotyped_type{1,2}.txt.{dev,test}``
  and line ``k`` of the matching ``anti_stereotyped`` file are the same sentence with the pronoun's gender
  swapped; the brackets that mark the entity and the pronoun, and the leading line number, are removed.
  ``type{1,2}_pro_share`` is the share of pairs whose pro-stereotyped sentence has the higher LL.

Intervals: the pairs are the units; each is scored once (no sampling), so a share is a binomial
proportion over pairs and its 95% interval is Wilson's score interval. (WinoBias reuses occupations
across pairs, so the interval describes the uncertainty about *this* set of pairs' population of
sentences, not about occupations never seen.) An exact tie (identical LL, e.g. pairs that tokenize
alike) counts as not preferring ``sent_more`` / the pro sentence, as in the harness (``>``).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .intervals import wilson_interval

__all__ = [
    "CROWS_PAIRS_HUB_ID",
    "WINOBIAS_HUB_ID",
    "crows_pairs_score",
    "read_crows_pairs",
    "read_winobias",
    "sentence_log_likelihoods",
    "wilson_interval",
    "winobias_score",
]

CROWS_PAIRS_HUB_ID = "nyu-mll/crows_pairs"
WINOBIAS_HUB_ID = "uclanlp/wino_bias"
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LINE_RE = re.compile(r"^\s*\d+\s+(.*\S)\s*$")


# ----------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------


def _prefix_token_id(tokenizer: Any) -> int:
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token; set one to score whole sentences")


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def sentence_log_likelihoods(
    model: Any, tokenizer: Any, sentences: Sequence[str], *, batch_size: int = 32
) -> list[float]:
    """Total log-likelihood (natural log, float64) of every sentence after the prefix token (see the module
    docstring). Batches of similar length, right-padded (a causal LM never attends to later positions, so
    padding cannot change the real ones); the model runs in eval mode and its training flag is restored."""
    if isinstance(sentences, str):
        raise TypeError("sentences must be a sequence of strings, not one string; wrap it: [sentence]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    prefix = _prefix_token_id(tokenizer)
    encoded = tokenizer(list(sentences), add_special_tokens=False)["input_ids"]
    rows = [[prefix, *ids] for ids in encoded]
    for index, row in enumerate(rows):
        if len(row) < 2:
            raise ValueError(f"sentence {index} is empty: {sentences[index]!r}")
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    device = _model_device(model)
    out = [0.0] * len(rows)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                width = max(len(rows[i]) for i in batch)
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for r, i in enumerate(batch):
                    ids[r, : len(rows[i])] = torch.tensor(rows[i])
                    mask[r, : len(rows[i])] = 1
                ids, mask = ids.to(device), mask.to(device)
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                # log p = logit - logsumexp: no second (batch, length, vocab) tensor
                token_lp = logits.gather(-1, ids[:, 1:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
                totals = (token_lp.double() * mask[:, 1:]).sum(dim=1).tolist()
                for r, i in enumerate(batch):
                    out[i] = totals[r]
    finally:
        model.train(was_training)
    return out


def _share(wins: list[bool]) -> dict[str, Any]:
    n = len(wins)
    k = sum(wins)
    return {"share": k / n if n else float("nan"), "n": n, "ci": wilson_interval(k, n)}


# ----------------------------------------------------------------------------------------------------
# CrowS-Pairs
# ----------------------------------------------------------------------------------------------------


def _is_hub_id(source: str | Path) -> bool:
    return not isinstance(source, Path) and not Path(source).exists() and bool(_HUB_ID_RE.match(str(source)))


def read_crows_pairs(source: str | Path = CROWS_PAIRS_HUB_ID) -> list[dict[str, str]]:
    """All pairs as ``{"sent_more", "sent_less", "stereo_antistereo", "bias_type"}`` from the local
    ``crows_pairs_anonymized.csv`` (or a folder holding it) or the Hub dataset ``nyu-mll/crows_pairs``."""
    if _is_hub_id(source):
        import datasets  # lazy: only the Hub path needs it

        table = datasets.load_dataset(str(source), split="test")
        names = {c: getattr(table.features[c], "names", None) for c in ("bias_type", "stereo_antistereo")}
        return [
            {
                "sent_more": row["sent_more"],
                "sent_less": row["sent_less"],
                **{c: names[c][row[c]] if names[c] else str(row[c]) for c in names},
            }
            for row in table
        ]
    path = Path(source)
    if path.is_dir():
        path = path / "crows_pairs_anonymized.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"CrowS-Pairs file {path} not found; pass crows_pairs_anonymized.csv (from nyu-mll/crows-pairs) "
            f"or its folder, or the Hub id {CROWS_PAIRS_HUB_ID!r}"
        )
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"sent_more", "sent_less", "stereo_antistereo", "bias_type"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{path} is not CrowS-Pairs: expected the columns {sorted(need)}")
    return [{k: row[k] for k in sorted(need)} for row in rows]


def crows_pairs_score(
    model: Any,
    tokenizer: Any,
    csv_path: str | Path,
    *,
    bias_type: str | None = "gender",
    batch_size: int = 32,
    max_pairs: int | None = None,
) -> dict[str, Any]:
    """CrowS-Pairs for a causal LM (see the module docstring).

    Args:
        csv_path: ``crows_pairs_anonymized.csv``, its folder, or the Hub id ``nyu-mll/crows_pairs``.
        bias_type: one type (``"gender"``: 262 pairs), or None / ``"all"`` for all 1,508 pairs (then
            ``per_bias_type`` gives each type's share too).

    Returns ``{"stereotype_share", "ci" (Wilson 95%), "n_pairs", "bias_type", "mean_ll_difference"
    (mean LL(sent_more) - LL(sent_less), nats), "per_bias_type"}``.
    """
    pairs = read_crows_pairs(csv_path)
    wanted = None if bias_type in (None, "all") else bias_type
    if wanted is not None:
        available = sorted({p["bias_type"] for p in pairs})
        if wanted not in available:
            raise ValueError(f"unknown CrowS-Pairs bias_type {wanted!r}; available: {available} or 'all'")
        pairs = [p for p in pairs if p["bias_type"] == wanted]
    pairs = pairs[:max_pairs]  # the first pairs of the file (a quick look during training); None: all
    ll = sentence_log_likelihoods(
        model, tokenizer, [s for p in pairs for s in (p["sent_more"], p["sent_less"])], batch_size=batch_size
    )
    diffs = [ll[2 * i] - ll[2 * i + 1] for i in range(len(pairs))]
    wins = [d > 0 for d in diffs]
    overall = _share(wins)
    per_type: dict[str, dict[str, Any]] = {}
    for kind in sorted({p["bias_type"] for p in pairs}):
        per_type[kind] = _share([w for w, p in zip(wins, pairs, strict=True) if p["bias_type"] == kind])
    return {
        "stereotype_share": overall["share"],
        "ci": overall["ci"],
        "n_pairs": overall["n"],
        "bias_type": wanted or "all",
        "mean_ll_difference": math.fsum(diffs) / len(diffs),
        "per_bias_type": per_type,
    }


# ----------------------------------------------------------------------------------------------------
# WinoBias
# ----------------------------------------------------------------------------------------------------


def _clean_winobias_line(line: str, where: str) -> str:
    match = _LINE_RE.match(line)
    if not match:
        raise ValueError(f"{where}: expected '<number> <sentence>', got {line[:80]!r}")
    return re.sub(r"\s+", " ", match.group(1).replace("[", "").replace("]", "")).strip()


def read_winobias(
    folder: str | Path = WINOBIAS_HUB_ID, *, split: str = "test"
) -> dict[str, list[tuple[str, str]]]:
    """``{"type1": [(pro, anti), ...], "type2": [...]}``: aligned line pairs, brackets and line numbers
    removed. ``folder`` holds ``{pro,anti}_stereotyped_type{1,2}.txt.{dev,test}`` (uclanlp/corefBias,
    ``WinoBias/wino/data``), or is the Hub id ``uclanlp/wino_bias`` (configs ``type1_pro`` ...; its
    ``tokens`` are joined with spaces, so punctuation is spaced there)."""
    if split not in ("dev", "test"):
        raise ValueError(f"WinoBias split must be 'dev' or 'test', got {split!r}")
    out: dict[str, list[tuple[str, str]]] = {}
    if _is_hub_id(folder):
        import datasets

        hub_split = "validation" if split == "dev" else "test"
        for kind in ("type1", "type2"):
            sides = [
                [
                    " ".join(row["tokens"])
                    for row in datasets.load_dataset(str(folder), f"{kind}_{side}", split=hub_split)
                ]
                for side in ("pro", "anti")
            ]
            out[kind] = list(zip(*sides, strict=True))
        return out
    root = Path(folder)
    for kind in ("type1", "type2"):
        sides = []
        for side in ("pro", "anti"):
            path = root / f"{side}_stereotyped_{kind}.txt.{split}"
            if not path.is_file():
                raise FileNotFoundError(
                    f"WinoBias file {path} not found; pass the folder holding "
                    "{pro,anti}_stereotyped_type{1,2}.txt.{dev,test} "
                    "(uclanlp/corefBias, WinoBias/wino/data)"
                )
            lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            sides.append(lines)
        pro, anti = sides
        if len(pro) != len(anti):
            raise ValueError(
                f"{root}: {kind} {split} has {len(pro)} pro and {len(anti)} anti lines; they must align"
            )
        pairs = []
        for k, (p, a) in enumerate(zip(pro, anti, strict=True)):
            where = f"{root}/{{pro,anti}}_stereotyped_{kind}.txt.{split}, line {k + 1}"
            if p.split(maxsplit=1)[0] != a.split(maxsplit=1)[0]:
                raise ValueError(f"{where}: the line numbers differ ({p[:20]!r} vs {a[:20]!r})")
            pairs.append((_clean_winobias_line(p, where), _clean_winobias_line(a, where)))
        out[kind] = pairs
    return out


def winobias_score(
    model: Any,
    tokenizer: Any,
    folder: str | Path,
    *,
    split: str = "test",
    batch_size: int = 32,
    max_pairs: int | None = None,
) -> dict[str, Any]:
    """WinoBias by likelihood (see the module docstring).

    Returns ``{"type1_pro_share", "type1_ci", "type1_n_pairs", "type2_pro_share", "type2_ci",
    "type2_n_pairs", "pro_share" (both types pooled), "ci", "n_pairs" (both types), "split"}``.
    """
    pairs = {kind: p[:max_pairs] for kind, p in read_winobias(folder, split=split).items()}  # None: all
    sentences = [s for kind in ("type1", "type2") for pair in pairs[kind] for s in pair]
    ll = iter(sentence_log_likelihoods(model, tokenizer, sentences, batch_size=batch_size))
    out: dict[str, Any] = {"split": split}
    all_wins: list[bool] = []
    for kind in ("type1", "type2"):
        wins = [next(ll) > next(ll) for _ in pairs[kind]]
        share = _share(wins)
        out[f"{kind}_pro_share"], out[f"{kind}_ci"], out[f"{kind}_n_pairs"] = (
            share["share"],
            share["ci"],
            share["n"],
        )
        all_wins += wins
    pooled = _share(all_wins)
    out |= {"pro_share": pooled["share"], "ci": pooled["ci"], "n_pairs": pooled["n"]}
    return out
