"""The suite compiles with cheaper code generation than a user gets: conftest.py adds
ALFAMIX_JAX_TEST_CODEGEN_FLAGS to XLA_FLAGS (LLVM unoptimised, XLA:CPU's elemental emitters),
because the suite is compile-bound. Code generation may change the last bits of a float result
(whether a multiply and an add become one fused instruction, the order of a vectorised sum),
so a property "these two programs compute the same bits" proved under one code generation is
not proved under another. Such tests carry the `shipping_codegen` mark, and this test runs
them again in a fresh pytest process with XLA's default code generation."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def test_the_bit_for_bit_tests_pass_with_the_default_code_generation():
    added = os.environ.get("ALFAMIX_JAX_TEST_CODEGEN_FLAGS", "").split()
    if not added:
        pytest.skip("XLA_FLAGS chose the code generation before the suite did: the suite ran them with it")
    assert all(flag in os.environ["XLA_FLAGS"].split() for flag in added)
    default_flags = " ".join(f for f in os.environ["XLA_FLAGS"].split() if f not in added)
    # An empty ALFAMIX_JAX_TEST_CODEGEN_FLAGS tells that process's conftest.py to add nothing.
    env = dict(os.environ, XLA_FLAGS=default_flags, ALFAMIX_JAX_TEST_CODEGEN_FLAGS="", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "shipping_codegen",
                          str(TESTS)], capture_output=True, text=True, timeout=1200, env=env, cwd=TESTS.parent)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    summary = run.stdout.splitlines()[-1]
    assert " passed" in summary and " deselected" in summary
