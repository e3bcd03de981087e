"""Set up before JAX initialises its backends (pytest loads conftest first):

- Every test process gets 8 CPU devices, so the mesh tests can run meshes of
  1, 2, 4 and 8 devices side by side. Tests that build no mesh use device 0 as
  before.
- Cheaper code generation (below).
- One persistent XLA compilation cache for the whole session, in a temporary
  folder removed at the end: compilation dominates most tests, many build the
  same program afresh (a new selector, a new trainer), and every CLI
  subprocess would otherwise compile everything again. `make test` runs two
  pytest-xdist workers; they inherit it from the controller, so they share it.
  It changes no result and no compile count (`count_compiles` counts cache hits
  too: the event wraps the lookup). Subprocesses inherit it through the
  environment, the CLI's own cache (ALFAMIX_JAX_CACHE_DIR) points at it too,
  so no test writes to ~/.cache. A cache the caller set already is kept.
"""
import atexit
import os
import shutil
import tempfile

import pytest

_FLAG = "--xla_force_host_platform_device_count"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}=8".strip()

# Cheaper code generation, since the suite is compile-bound: LLVM unoptimised, and XLA:CPU's
# elemental emitters instead of its MLIR fusion emitters. Programs compile 2-4x faster and run
# slower (experiments/benchmark_codegen.py). The last bits of a float result may change, so the
# tests of bit-for-bit properties across two programs (mark shipping_codegen) run again with
# XLA's defaults (test_codegen.py). Flags the caller put in XLA_FLAGS win.
_CODEGEN = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
if "ALFAMIX_JAX_TEST_CODEGEN_FLAGS" not in os.environ:
    _chosen = os.environ["XLA_FLAGS"].split()
    _added = [f for f in _CODEGEN if f.split("=")[0] not in {c.split("=")[0] for c in _chosen}]
    os.environ["XLA_FLAGS"] = " ".join(_chosen + _added)
    os.environ["ALFAMIX_JAX_TEST_CODEGEN_FLAGS"] = " ".join(_added)

if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _cache = tempfile.mkdtemp(prefix="alfamix-jax-test-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    _owner = os.getpid()

    @atexit.register
    def _remove_cache():
        if os.getpid() == _owner:  # only the process that made it (workers and subprocesses inherit the variable)
            shutil.rmtree(_cache, ignore_errors=True)

os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("ALFAMIX_JAX_CACHE_DIR", os.environ["JAX_COMPILATION_CACHE_DIR"])


@pytest.fixture(scope="session")
def killable_whole(tmp_path_factory):
    """One uninterrupted CLI run of support.CLI_CONFIG, the reference of every test that kills, stops or
    races the same run (test_runner.py, test_workdir.py): folder with killable.py and the workdir w/."""
    from support import CLI_CONFIG, cli_run

    path = tmp_path_factory.mktemp("whole")
    (path / "killable.py").write_text(CLI_CONFIG)
    proc = cli_run("--config", path / "killable.py", "--workdir", path / "w", "--no-progress")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return path
