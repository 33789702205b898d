"""One line that says what machine a result came from: the report states it beside every table."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def describe() -> dict[str, object]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def one_line(machine: dict[str, object]) -> str:
    memory = machine.get("memory_gib")
    memory_text = f", {memory:.0f} GiB RAM" if isinstance(memory, float) else ""
    return (f"{machine.get('cores')} cores ({machine.get('cpu')}){memory_text}, Linux {machine.get('kernel')}, "
            f"Python {machine.get('python')}")
