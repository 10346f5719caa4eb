"""Peak resident memory of the benchmark's own process."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_gb() -> float:
    """This process's peak resident memory (GiB). On Linux the high-water mark of its own
    memory (VmHWM): ``ru_maxrss`` of a spawned child starts at its parent's peak, so a decide
    spawned after the parent simulated and trained a shop reported the training's 10.6 GB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
