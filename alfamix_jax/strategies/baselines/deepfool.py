"""Adversarial DeepFool (DFAL; Ducoffe & Precup 2018): label the unlabelled rows
that the smallest adversarial perturbation pushes across the decision boundary.

Per unlabelled row, DeepFool (Moosavi-Dezfooli et al. 2016, Algorithm 2)
linearises the classifier around the current point, steps to the nearest
linearised boundary of the originally predicted class p, and repeats until
the prediction changes or `max_iter` iterations; the score is the norm of the
accumulated perturbation and the `budget` smallest are picked.

Where we differ from the original ALFA-Mix repository
(query_strategies/adversarial_deepfool.py) and why:

- Embedding space, not input space. The original back-propagates to the
  input image through the whole network, one row at a time on the CPU. A
  strategy here sees the pool's embeddings and the linear head only
  (`PoolView`), so DeepFool runs on `z -> z @ W.T + b`. For a linear
  classifier DeepFool is exact: the gradient of f_k - f_p is w_k - w_p
  everywhere, so the first step lands on the nearest facet of p's decision
  region, at distance min_k |f_k - f_p| / ||w_k - w_p||; the overshoot then
  carries it across and the loop ends after one iteration. The score is the
  margin of the embedding under the head, not of the image under the network.
- The loop is kept with the original's semantics (directions from the
  original label p; stop when argmax != p or after `max_iter` = 50, the
  original's `--max_iter` default) and vectorised: a loop over row blocks
  of a `vmap`-ed `lax.while_loop`, so a block iterates until its slowest row
  is done (the others keep their state). ||w_k - w_p||^2 is a [C, C] table computed once, so nothing of
  shape [N, C, D] is formed; memory is O(block * (D + C)).
- compat="default" follows DeepFool as published: the class l minimising
  |f_l - f_p| / ||w_l - w_p||, a step of (that distance + 1e-4) along the unit
  direction (LTS4's reference code), and overshoot 0.02 on the total. The
  original ALFA-Mix code never updates `value_l`, so it always steps towards
  the *last* class index != p rather than the nearest boundary, has no
  overshoot and no 1e-4, and scores by the squared norm. compat="reference"
  reproduces those (same ranking as the norm; the nearest-boundary choice is
  what changes picks when C > 2). Without overshoot a linear step lands on
  the boundary itself and may take further tiny steps until float rounding
  flips the argmax or `max_iter` runs out; that is what the original does.
- A row whose head has no direction (all w_k = w_p) cannot be flipped: score
  +max, picked last (the original would crash on `ri = None`).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alfamix_jax.strategies.baselines.dropquery import map_row_blocks
from alfamix_jax.strategies.interface import PoolView, Query, Strategy
from alfamix_jax.strategies.simple import top_unlabelled

COMPAT_MODES = ("default", "reference")
HIGHEST = jax.lax.Precision.HIGHEST  # float32 products, not TF32 on a GPU
STEP_EPSILON = 1e-4  # DeepFool's reference code adds this to every step so it does not stall on the boundary


class DeepFoolResult(NamedTuple):
    score: jax.Array  # [N] ||r|| (default) or ||r||^2 (reference); finfo.max where no direction exists
    iterations: jax.Array  # [N] int32 DeepFool iterations run
    flipped: jax.Array  # [N] bool: the prediction changed within max_iter


def deepfool_scores(embeddings, head_params, *, max_iter: int = 50, overshoot: float = 0.02,
                    compat: str = "default", block_size: int = 4096) -> DeepFoolResult:
    """DeepFool on the linear head for every row. embeddings: [N, D];
    head_params: LinearHead(weight [C, D], bias [C]). Rows are independent."""
    w, b = head_params.weight, head_params.bias  # [C, D], [C]
    num_classes = w.shape[0]
    # ||w_j - w_k||^2 row by row: exact (no Gram-matrix cancellation), O(C * D) memory.
    pair_sq = jax.lax.map(lambda wk: jnp.sum((w - wk) ** 2, axis=-1), w)  # [C, C]
    reference = compat == "reference"
    scale = 1.0 if reference else 1.0 + overshoot  # the perturbation applied is scale * r_tot
    big = jnp.finfo(embeddings.dtype).max

    def one_row(z):  # [D]
        logits0 = jnp.matmul(w, z, precision=HIGHEST) + b  # [C]
        p = jnp.argmax(logits0)
        diff_sq = pair_sq[p]  # ||w_k - w_p||^2, [C]
        usable = (jnp.arange(num_classes) != p) & (diff_sq > 0)
        diff_norm = jnp.sqrt(jnp.where(usable, diff_sq, 1.0))

        def direction(logits):
            """(class to step towards, step length along the unit direction, any usable)."""
            dist = jnp.where(usable, jnp.abs(logits - logits[p]) / diff_norm, jnp.inf)  # [C]
            if reference:  # the original's loop keeps the last class with a finite value (value_l never updated)
                last = num_classes - 1 - jnp.argmax(jnp.isfinite(dist)[::-1])
                return last, dist[last], jnp.any(jnp.isfinite(dist))
            nearest = jnp.argmin(dist)
            return nearest, dist[nearest] + STEP_EPSILON, jnp.any(jnp.isfinite(dist))

        def cond(state):
            i, _, logits, can_move = state
            return (jnp.argmax(logits) == p) & (i < max_iter) & can_move

        def body(state):
            i, r_tot, logits, _ = state
            k, length, can_move = direction(logits)
            step = jnp.where(can_move, length / diff_norm[k], 0.0) * (w[k] - w[p])  # [D]
            r_tot = r_tot + step
            return i + 1, r_tot, jnp.matmul(w, z + scale * r_tot, precision=HIGHEST) + b, can_move

        init = (jnp.int32(0), jnp.zeros_like(z), logits0, jnp.any(usable))
        iters, r_tot, logits, can_move = jax.lax.while_loop(cond, body, init)
        r = scale * r_tot
        score = jnp.sum(r * r) if reference else jnp.sqrt(jnp.sum(r * r))
        return jnp.where(can_move, score, big), iters, jnp.argmax(logits) != p

    n = embeddings.shape[0]
    size = min(block_size, n)

    def block(start):
        return jax.vmap(one_row)(jax.lax.dynamic_slice_in_dim(embeddings, start, size))

    return DeepFoolResult(*map_row_blocks(block, n, block_size))


def make_adversarial_deepfool(*, budget: int, num_classes: int, max_iter: int = 50, overshoot: float = 0.02,
                              compat: str = "default", block_size: int = 4096, **_) -> Strategy:
    """The `budget` unlabelled rows with the smallest DeepFool perturbation
    in embedding space (see the module docstring)."""

    _check_int("budget", budget)
    _check_int("num_classes", num_classes)
    _check_int("max_iter", max_iter)
    _check_int("block_size", block_size)
    if compat not in COMPAT_MODES:
        raise ValueError(f"compat must be one of {COMPAT_MODES}, got {compat!r}")
    if not (isinstance(overshoot, (int, float)) and np.isfinite(overshoot) and overshoot >= 0):
        raise ValueError(f"overshoot must be a finite number >= 0, got {overshoot!r}")

    @jax.jit
    def query(key, view: PoolView) -> Query:
        del key  # deterministic
        found = deepfool_scores(view.embeddings, view.head_params, max_iter=max_iter, overshoot=overshoot,
                                compat=compat, block_size=block_size)
        selected = top_unlabelled(-found.score, view.labels, budget)
        eligible = view.labels < 0
        diagnostics = dict(
            mean_selected_score=jnp.mean(found.score[selected]),
            unflipped=jnp.sum(eligible & ~found.flipped, dtype=jnp.int32),
            max_iterations=jnp.max(jnp.where(eligible, found.iterations, 0)),
        )
        return Query(selected, diagnostics)

    return Strategy("adversarial_deepfool", query)


def _check_int(name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


STRATEGIES = {"adversarial_deepfool": make_adversarial_deepfool}
