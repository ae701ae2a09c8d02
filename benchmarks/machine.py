"""Where a benchmark ran: date, cores, memory, CPU model and library versions.

Figures mean little without the machine, so every BENCHMARKS.md starts with these facts.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

PACKAGES = ("pandas", "duckdb", "requests", "numpy", "dlt")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    """Total physical memory in GiB, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def version(package: str) -> str:
    """Installed version, or ``not installed`` (dlt is an optional benchmark extra)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def header(command: str, now: datetime | None = None) -> list[tuple[str, str]]:
    """The BENCHMARKS.md header facts, in display order."""
    now = now or datetime.now(UTC)
    mem = memory_gib()
    cores = os.cpu_count() or 0
    facts = [
        ("Date", now.strftime("%Y-%m-%d %H:%M UTC")),
        (
            "Machine",
            f"{cores} cores, {mem:.1f} GiB RAM, {cpu_model()}" if mem else f"{cores} cores",
        ),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", sys.version.split()[0]),
    ]
    facts += [(name, version(name)) for name in PACKAGES]
    facts += [("guru_analytics", version("guru-analytics")), ("Command", f"`{command}`")]
    return facts
