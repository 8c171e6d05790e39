"""This process's memory in GB, read from /proc/self/status (Linux): what the bench and
`accuracy --scale` report as RSS."""

from __future__ import annotations

import resource
from pathlib import Path


def status_gb(key: str) -> float:
    """The /proc/self/status field `key` (VmRSS: resident now, VmHWM: its peak) in GB; nan
    where the file or the field is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def rss_gb() -> float:
    """The resident set now (VmRSS)."""
    return status_gb("VmRSS")


def peak_rss_gb() -> float:
    """This process's high-water mark (VmHWM); ru_maxrss where /proc has none."""
    peak = status_gb("VmHWM")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
