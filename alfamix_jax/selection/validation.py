"""Checks of a selector's arguments, at its entry, before anything is traced.

Each error names the argument, what was seen and what is expected, so the message alone
tells the user the fix. The checks read host metadata (shapes, dtypes), host arrays, or a
head's abstract evaluation. Values on a device are not read here: the search program
reports, with the candidate count that the selector reads anyway (its one host read), the
lowest row whose logits are not finite and the labels' extremes and labelled count, and
`raise_nonfinite_row` / `check_label_values` judge them. So a memory-mapped pool is read
once, and device labels cost no extra pass or transfer. Under an outer `jit` (traced arguments) only the metadata is
checked. Nothing here runs inside the jitted core.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from alfamix_jax.selection.heads import HeadApply, LinearHead
from alfamix_jax.selection.layout import NO_ROW
from alfamix_jax.selection.settings import check_integer


def _is_traced(x: object) -> bool:
    return isinstance(x, jax.core.Tracer)


def _describe(x: object) -> str:
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    return f"{type(x).__name__}" if shape is None or dtype is None else f"{dtype} array of shape {tuple(shape)}"


def check_count(name: str, value: object, minimum: int) -> int:
    """A Python / NumPy integer >= minimum (not a bool): the settings' rule, for an argument."""
    checked = check_integer(name, value, minimum=minimum)
    assert checked is not None
    return checked


def check_embeddings(embeddings: np.ndarray | jax.Array) -> tuple[int, int]:
    """A float array [N, D] with N, D >= 1 (NumPy, memmap or JAX). -> (N, D)."""
    dtype = getattr(embeddings, "dtype", None)
    if dtype is None or getattr(embeddings, "shape", None) is None:
        raise ValueError(f"embeddings: got a {type(embeddings).__name__}; expected an array [N, D] of floats "
                         "(NumPy or JAX)")
    if len(embeddings.shape) != 2 or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"embeddings: got a {_describe(embeddings)}; expected a float array [N, D]")
    n, dim = embeddings.shape
    if n < 1 or dim < 1:
        raise ValueError(f"embeddings: got shape {tuple(embeddings.shape)}; expected at least one row and column")
    return int(n), int(dim)


def check_labels(labels: np.ndarray | jax.Array, *, n: int, num_classes: int, budget: int) -> bool:
    """Integer labels [n]; their values (`check_label_values`) at once when they are on the
    host. -> True when the values are still to check: device labels are summarised by the
    search program (`stages.label_stats`) and checked at its one host read, so they cost
    no extra pass or transfer; traced labels (inside an outer jit) are not checked."""
    dtype = getattr(labels, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"labels: got a {_describe(labels)}; expected an integer array [N] "
                         "(-1 = unlabelled, else the class)")
    if tuple(labels.shape) != (n,):
        raise ValueError(f"labels: got shape {tuple(labels.shape)}; expected ({n},), one per embeddings row")
    if isinstance(labels, np.ndarray):
        check_label_values(int(labels.min()), int(labels.max()), int(np.count_nonzero(labels >= 0)), n=n,
                           num_classes=num_classes, budget=budget)
        return False
    return not _is_traced(labels)


def check_label_values(low: int, high: int, labelled: int, *, n: int, num_classes: int, budget: int) -> None:
    """Labels in [-1, num_classes) (low, high: their extremes), at least one labelled row,
    and 1 <= budget <= the unlabelled rows."""
    if low < -1 or high >= num_classes:
        bad = low if low < -1 else high
        raise ValueError(f"labels: got the value {bad}; expected -1 (unlabelled) or a class in [0, {num_classes})")
    if labelled == 0:
        raise ValueError("labels: no labelled row (all -1); ALFA-Mix needs labelled rows for its anchors")
    unlabelled = n - labelled
    if budget > unlabelled:
        raise ValueError(f"budget ({budget}) is larger than the number of unlabelled rows ({unlabelled}); "
                         f"expected 1 <= budget <= {unlabelled}")


def check_linear_head(head: Any, *, dim: int, num_classes: int) -> None:
    """LinearHead(weight [C, D], bias [C]), float and finite, C = num_classes, D = dim."""
    if not isinstance(head, LinearHead):
        raise ValueError(f"head_params: got a {type(head).__name__}; expected LinearHead(weight [C, D], bias [C]) "
                         "for the linear head, or pass head_apply= to the factory for any other head")
    for name, array, shape in (("head_weight", head.weight, (num_classes, dim)), ("head_bias", head.bias,
                                                                                  (num_classes,))):
        dtype = getattr(array, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or tuple(array.shape) != shape:
            raise ValueError(f"{name}: got a {_describe(array)}; expected a float array of shape {shape} "
                             f"(logits = embeddings @ head_weight.T + head_bias, num_classes={num_classes}, D={dim})")
        if not _is_traced(array) and not bool(np.all(np.isfinite(np.asarray(array)))):
            raise ValueError(f"{name}: holds NaN/inf; expected finite values")


def check_head(head_apply: HeadApply | None, head_params: Any, *, dim: int, num_classes: int,
               dtype: DTypeLike) -> None:
    """The head maps [n, D] rows to [n, num_classes] float logits (checked abstractly,
    with `jax.eval_shape`, for a head_apply of any kind)."""
    if head_apply is None:
        check_linear_head(head_params, dim=dim, num_classes=num_classes)
        return
    z = jax.ShapeDtypeStruct((2, dim), dtype)
    try:
        logits = jax.eval_shape(head_apply, head_params, z)
    except Exception as e:  # noqa: BLE001 - any failure of the user's head is reported as its input error
        raise ValueError(f"head_apply(head_params, z [n, D={dim}]) failed on the selector's input: "
                         f"{type(e).__name__}: {e}") from None
    if getattr(logits, "shape", None) != (2, num_classes) or not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"head_apply(head_params, z [n, D={dim}]) returned {_describe(logits)} for n=2; expected "
                         f"float logits [n, num_classes={num_classes}]")


def raise_nonfinite_row(first_bad: int) -> None:
    """The search's report of the lowest row whose logits are not finite, as an error."""
    if first_bad != NO_ROW:
        raise ValueError(f"embeddings: row {first_bad} (and maybe others) holds NaN/inf, or values so large the "
                         "logits overflow; remove or impute such rows")
