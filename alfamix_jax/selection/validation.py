"""Checks of user input at the boundary, before anything is traced.

Each error names the argument, what was seen and what is expected, so the
message alone tells the user the fix. Nothing here runs inside jit.
"""
import numpy as np


def _is_integer_array(a: np.ndarray) -> bool:
    return a.dtype.kind in "iu"


def validate_pool(embeddings, labels, head_weight, head_bias, *, budget: int, scan_embeddings: bool = True) -> None:
    """Validate one selection problem given as NumPy arrays.

    embeddings [N, D] float, labels [N] int (-1 = unlabelled, else in [0, C)),
    head_weight [C, D] float, head_bias [C] float; budget in [1, #unlabelled].
    scan_embeddings=False skips the NaN/inf scan of the embeddings (a memory-
    mapped pool larger than memory: the streamed search reports bad rows).
    Raises ValueError naming the offending argument.
    """
    arrays = dict(embeddings=embeddings, labels=labels, head_weight=head_weight, head_bias=head_bias)
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{name} must be a NumPy array, got {type(a).__name__}")
        if a.dtype == object:
            raise ValueError(f"{name} has dtype object; store a numeric array")
    expected_rank = dict(embeddings=2, labels=1, head_weight=2, head_bias=1)
    for name, rank in expected_rank.items():
        if arrays[name].ndim != rank:
            raise ValueError(f"{name} must have rank {rank}, got shape {arrays[name].shape}")
    if embeddings.dtype.kind != "f":
        raise ValueError(f"embeddings must be a float array, got dtype {embeddings.dtype}")
    if scan_embeddings and not np.all(np.isfinite(embeddings)):
        bad = int(np.size(embeddings) - np.count_nonzero(np.isfinite(embeddings)))
        raise ValueError(f"embeddings contains {bad} NaN/inf value(s); remove or impute them")
    n, dim = embeddings.shape
    if n == 0 or dim == 0:
        raise ValueError(f"embeddings must be non-empty, got shape {embeddings.shape}")
    validate_head(head_weight, head_bias, dim=dim)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match embeddings, got {labels.shape}")
    validate_labels(labels, num_classes=head_weight.shape[0], budget=budget)


def validate_head(head_weight, head_bias, *, dim: int) -> None:
    """head_weight [C, D] and head_bias [C], float and finite, C >= 2, D = dim
    (logits = z @ head_weight.T + head_bias). Raises ValueError naming the array."""
    for name, a in (("head_weight", head_weight), ("head_bias", head_bias)):
        if a.dtype.kind != "f":
            raise ValueError(f"{name} must be a float array, got dtype {a.dtype}")
        if not np.all(np.isfinite(a)):
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            raise ValueError(f"{name} contains {bad} NaN/inf value(s); remove or impute them")
    num_classes = head_weight.shape[0]
    if num_classes < 2:
        raise ValueError(f"head_weight must have at least 2 classes (rows), got shape {head_weight.shape}")
    if head_weight.shape[1] != dim:
        raise ValueError(
            f"head_weight has shape {head_weight.shape} but embeddings have D={dim}; "
            f"expected [C, {dim}] (logits = embeddings @ head_weight.T + head_bias)"
        )
    if head_bias.shape != (num_classes,):
        raise ValueError(f"head_bias must have shape ({num_classes},) to match head_weight, got {head_bias.shape}")


def validate_labels(labels, *, num_classes: int, budget: int) -> None:
    """labels [N] int: -1 (unlabelled) or a class in [0, num_classes), at
    least one labelled row, and `budget` in [1, #unlabelled]."""
    if not _is_integer_array(labels):
        raise ValueError(f"labels must be an integer array (-1 = unlabelled), got dtype {labels.dtype}")
    bad = (labels < -1) | (labels >= num_classes)
    if np.any(bad):
        raise ValueError(
            f"labels must be -1 (unlabelled) or in [0, {num_classes}); "
            f"{int(bad.sum())} value(s) outside, e.g. {labels[bad][0]!r}"
        )
    num_labelled = int(np.sum(labels >= 0))
    if num_labelled == 0:
        raise ValueError("labels has no labelled row (all -1); ALFA-Mix needs labelled rows for its anchors")
    unlabelled = labels.shape[0] - num_labelled
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ValueError(f"budget must be an integer, got {budget!r}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if budget > unlabelled:
        raise ValueError(f"budget ({budget}) is larger than the number of unlabelled rows ({unlabelled})")
