"""The machine a benchmark ran on, for the line under its table: the CPU's model (x86_64
alone names no machine), the cores this process may use, Python, JAX
and its backend, and the load average, since this machine is shared and the load often
explains a slow run more than the code does."""
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe() -> str:
    """One line: the CPU, the cores, Python, JAX and its backend, the load average now."""
    import jax  # here, not at import: the benchmarks' parent processes need no JAX

    load = os.getloadavg()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # Linux: the affinity
    return (f"{cpu_model()}, {cores} cores usable, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, JAX {jax.__version__} on "
            f"{jax.default_backend()}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
