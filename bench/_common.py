"""What every benchmark script shares: the record of the machine and library versions a figure was
measured with, which BENCHMARKS.md quotes next to each table (a ratio means little without it)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15-minute load averages: how busy the machine was while a figure was taken."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def format_load(load: Iterable[float] | None) -> str:
    return "unknown" if load is None else " / ".join(f"{x:.2f}" for x in load)


def machine(
    packages: Iterable[str] = ("torch", "transformers"), *, torch_threads: bool = True
) -> dict[str, Any]:
    """CPUs, CPU model, Python, the versions of ``packages`` (None when not installed), torch's thread
    count (with ``torch_threads``; imports torch), the load average and the UTC date and time."""
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_name(),
        "python": platform.python_version(),
    }
    for package in packages:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    if torch_threads:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    info["load_average"] = load_average()
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return info
