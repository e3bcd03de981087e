"""The layout shows the architecture, and stays that way: the selection core imports only
JAX, NumPy, optax, the standard library and itself (no Flax, TFDS, orbax, matplotlib, nor
the experiment shell or the strategies); no function in the package is over 100 lines."""
import ast
import pathlib
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "alfamix_jax"
CORE_MAY_IMPORT = {"jax", "numpy", "optax"}


def imported_modules(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def test_the_selection_core_imports_only_jax_numpy_optax_and_itself():
    for path in sorted((PACKAGE / "selection").glob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            allowed = (top in CORE_MAY_IMPORT or top in sys.stdlib_module_names
                       or name == "alfamix_jax.selection" or name.startswith("alfamix_jax.selection."))
            assert allowed, f"{path.relative_to(PACKAGE)} imports {name}"


def test_no_function_in_the_package_is_over_100_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 100:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
