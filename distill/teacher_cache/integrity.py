"""What makes a teacher cache trustworthy: the bytes it stores and the teacher it was written from.

* **Stored bytes.** The manifest records the size and SHA-256 of every file of the cache (the Arrow
  shards, ``dataset_info.json``, ``state.json``); :func:`verify_cache_files` re-reads them when a cache is
  opened and refuses a missing, truncated, grown or changed file by name. Arrow has no checksum of its
  own: a flipped byte in a float column loads without complaint and trains on garbage. Hashing streams
  each file in 8 MiB pieces, so memory stays flat; it costs one sequential read plus SHA-256 of the
  cache per open (``bench/bench_teacher_cache.py`` reports the seconds per GB).
* **The teacher.** A path or Hub id says where weights were, not which: new weights saved at the same
  path would be accepted by name. :func:`teacher_weights` records the size and SHA-256 of the teacher's
  weight files (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``, or the ``.gguf`` file itself), and
  :func:`check_teacher_weights` compares the run's teacher files by content, wherever they now live. To
  keep that cheap for multi-GB teachers, each record also keeps the file's stat (real path, size, mtime,
  ctime, inode): a file whose stat is unchanged since the cache was written is not hashed again (writing
  to a file, or replacing it, changes its ctime, which no user tool can set back).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .format import _REWRITE, MANIFEST_NAME, TeacherCacheError

CHUNK_BYTES = 8 << 20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, read in pieces of :data:`CHUNK_BYTES`."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------
# The cache's own files
# ----------------------------------------------------------------------------------------------------


def _cache_files(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def cache_file_checksums(cache_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"}}`` of every file of a written cache but its manifest."""
    cache_dir = Path(cache_dir)
    return {
        path.relative_to(cache_dir).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for path in _cache_files(cache_dir)
    }


def verify_cache_files(manifest: Mapping[str, Any], cache_dir: str | Path) -> None:
    """Refuse a cache whose files are not, byte for byte, the ones its manifest records."""
    cache_dir = Path(cache_dir)
    recorded = manifest.get("files")
    if not isinstance(recorded, Mapping) or not recorded:
        raise TeacherCacheError(
            f"teacher cache {cache_dir}: its manifest records no file checksums, so its contents cannot be "
            f"checked; {_REWRITE}"
        )
    for name, entry in recorded.items():
        if Path(name).is_absolute() or ".." in Path(name).parts:  # a manifest is a file anyone can edit
            raise TeacherCacheError(
                f"teacher cache {cache_dir}: its manifest lists {name!r}, outside the cache; {_REWRITE}"
            )
        path = cache_dir / name
        if not path.is_file():
            raise TeacherCacheError(f"teacher cache file {path} is missing; {_REWRITE}")
        size = path.stat().st_size
        if size != entry["bytes"]:
            how = "truncated (an interrupted write or copy?)" if size < entry["bytes"] else "longer"
            raise TeacherCacheError(
                f"teacher cache file {path} is {how}: {size} bytes, its manifest records {entry['bytes']}; "
                f"{_REWRITE}"
            )
        if sha256_file(path) != entry["sha256"]:
            raise TeacherCacheError(
                f"teacher cache file {path} is corrupted: its SHA-256 differs from the one recorded when it "
                f"was written (bytes changed on disk); {_REWRITE}"
            )
    extra = [p.relative_to(cache_dir).as_posix() for p in _cache_files(cache_dir)]
    extra = [name for name in extra if name not in recorded]
    if extra:
        raise TeacherCacheError(
            f"teacher cache {cache_dir} holds files its manifest does not list ({', '.join(extra[:5])}): "
            f"another write mixed into this folder; {_REWRITE}"
        )


def load_verified_cache(cache_dir: str | Path, manifest: Mapping[str, Any]) -> Any:
    """The cache's rows as a ``datasets.Dataset``, once :func:`verify_cache_files` passed; an Arrow file
    that still cannot be read is a :class:`TeacherCacheError`, not a raw pyarrow error."""
    verify_cache_files(manifest, cache_dir)
    import pyarrow as pa
    from datasets import load_from_disk

    try:
        return load_from_disk(str(cache_dir))
    except (pa.ArrowException, OSError, ValueError, KeyError) as err:
        raise TeacherCacheError(
            f"teacher cache {cache_dir} cannot be read ({type(err).__name__}: {err}); {_REWRITE}"
        ) from err


# ----------------------------------------------------------------------------------------------------
# The teacher's weights
# ----------------------------------------------------------------------------------------------------


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix in WEIGHT_SUFFIXES else []
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def _stat_key(path: Path) -> list:
    stat = path.stat()  # follows links: the Hub cache's snapshot files link to blobs
    return [os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def teacher_weights(
    path: str | Path | None, recorded: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """``{"files": {name: {"bytes", "sha256", "stat"}}}`` of the teacher's weight files in ``path`` (a
    model folder or a ``.gguf`` file); None when ``path`` holds no weight file we can read. A file whose
    stat equals its entry in ``recorded`` keeps the recorded hash instead of being read again."""
    if path is None or not Path(path).exists():
        return None
    files = {}
    old = (recorded or {}).get("files", {})
    for file in _weight_files(Path(path)):
        stat = _stat_key(file)
        entry = old.get(file.name)
        sha = entry["sha256"] if entry and entry.get("stat") == stat else sha256_file(file)
        files[file.name] = {"bytes": stat[1], "sha256": sha, "stat": stat}
    return {"files": files} if files else None


def local_teacher_path(name: str | None) -> Path | None:
    """The local folder or file of a teacher named as a recipe names it (``teacher_name_or_path``), or
    None when it is not on this machine (a Hub id not downloaded): then only its name can be checked."""
    if not name:
        return None
    from ..models import resolve_model_path

    try:
        path = Path(resolve_model_path(name))
    except (OSError, ModuleNotFoundError):
        return None
    if path.exists():
        return path
    try:  # a Hub id already in the local cache
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 -- not downloaded, not a valid id, no hub library: nothing to check
        return None


def check_teacher_weights(manifest: Mapping[str, Any], where: str | Path, teacher_path: str | Path) -> bool:
    """Refuse a cache written from other weights than those at ``teacher_path``; False when either side
    has no weight record (the caller then compares names), True when the weights were compared and match."""
    recorded = manifest.get("teacher_weights")
    current = teacher_weights(teacher_path, recorded)
    if not recorded or current is None:
        return False
    old, new = recorded["files"], current["files"]
    if sorted(old) != sorted(new):
        raise TeacherCacheError(
            f"teacher cache {where} was written from the weight files {sorted(old)}, the run's teacher "
            f"{teacher_path} has {sorted(new)}: another teacher; {_REWRITE}"
        )
    for name in sorted(old):
        if old[name]["sha256"] != new[name]["sha256"]:
            shown = Path(teacher_path) if Path(teacher_path).is_file() else Path(teacher_path) / name
            raise TeacherCacheError(
                f"teacher cache {where} was written from other teacher weights: {shown} "
                f"has SHA-256 {new[name]['sha256'][:12]}…, the cache's teacher had "
                f"{old[name]['sha256'][:12]}… (new weights at the same path?); {_REWRITE}"
            )
    return True
