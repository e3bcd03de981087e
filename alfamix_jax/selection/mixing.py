"""Interpolation `alpha` between pool embeddings and an anchor, and the mix.

Each `*_flips` function handles one block of rows against one anchor at one
cap and returns `(flipped [b], rho [b])`, where `rho = ||mix - u|| / ||a - u||`
is how far towards the anchor the mix moved (the bounded "alpha norm" we
report in diagnostics; the original logs raw element-wise alpha norms, which
are unbounded in the closed form). The candidate search vmaps these over
anchors inside a block.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from alfamix_jax.selection.heads import HeadApply


class Block(NamedTuple):
    """The rows of one pool block and what the search knows about them."""

    u: jax.Array  # [b, D] embeddings
    direction: jax.Array  # [b, D] unit loss gradient (zeros where none)
    pseudo: jax.Array  # [b] pseudo-labels
    rows: jax.Array  # [b] global row indices (seed per-row randomness)
    torch_nan: jax.Array | None = None  # [b] bool: rows where the original's alpha is NaN (Q1)


def _flipped(head_apply: HeadApply, head_params, mix, pseudo):
    return jnp.argmax(head_apply(head_params, mix), axis=-1) != pseudo


def _rho(mix, u, anchor):
    z = anchor - u
    moved = jnp.linalg.norm(mix - u, axis=-1)
    return moved / jnp.maximum(jnp.linalg.norm(z, axis=-1), 1e-30)


def closed_form_flips(head_apply, head_params, block: Block, anchor, eps, *, literal: bool):
    """Closed-form alpha (paper eq. 5) with eps = cap / sqrt(D).

    literal=True is the original's arithmetic, `alpha = eps ||z|| g / (z + 1e-8)`
    and `mix = (1 - alpha) u + alpha a`, kept for reference parity.
    literal=False is the same mix without the 1e-8 guard,
    `mix = u + eps ||a - u|| g`: a step along the gradient whose length the
    anchor sets; it is well defined where a coordinate of a - u is 0.
    """
    u, g = block.u, block.direction
    z = anchor - u  # [b, D]
    length = eps * jnp.linalg.norm(z, axis=-1, keepdims=True)  # [b, 1]
    if literal:
        alpha = length * g / (z + 1e-8)
        mix = (1.0 - alpha) * u + alpha * anchor
    else:
        mix = u + length * g
    flipped, rho = _flipped(head_apply, head_params, mix, block.pseudo), _rho(mix, u, anchor)
    if literal and block.torch_nan is not None:
        # Q1 as the original computes it: NaN logits argmax to class 0.
        flipped = jnp.where(block.torch_nan, block.pseudo != 0, flipped)
        rho = jnp.where(block.torch_nan, jnp.inf, rho)
    return flipped, rho


def random_alpha(key, rows, dim: int, cap):
    """alpha ~ N(cap/2, cap/2) per element, clamped to [1e-8, cap] (the
    original's `generate_alpha`). One key per global row, so a row's draw
    does not depend on the block it falls in. -> [b, D]."""
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)
    noise = jax.vmap(lambda k: jax.random.normal(k, (dim,)))(keys)
    return jnp.clip(cap / 2.0 + (cap / 2.0) * noise, 1e-8, cap)


def random_flips(head_apply, head_params, block: Block, anchor, cap, key):
    alpha = random_alpha(key, block.rows, block.u.shape[-1], cap)
    mix = (1.0 - alpha) * block.u + alpha * anchor
    return _flipped(head_apply, head_params, mix, block.pseudo), _rho(mix, block.u, anchor)


class LearnedAlphaConfig(NamedTuple):
    learning_rate: float = 0.1
    iters: int = 5
    clf_coef: float = 1.0
    l2_coef: float = 0.01
    reset_state_each_step: bool = False  # the original's behaviour (defect Q5)


def learned_flips(head_apply, head_params, block: Block, anchor, cap, key, config: LearnedAlphaConfig):
    """Learned alpha: from a random start, `iters` Adam steps on
    `-clf_coef * CE(f(mix), p) + l2_coef * ||alpha||` per row, clamped to
    [1e-8, cap] after each step; flips are checked before each step, as in
    the original. The optax state persists across steps unless
    `reset_state_each_step` (reference mode: the original builds a new Adam
    every step, so each step sees a fresh state at step count 0)."""
    u, pseudo = block.u, block.pseudo

    def loss_fn(alpha):
        mix = (1.0 - alpha) * u + alpha * anchor
        logits = head_apply(head_params, mix)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, pseudo)
        per_row = -config.clf_coef * ce + config.l2_coef * jnp.linalg.norm(alpha, axis=-1)
        return per_row.sum(), logits

    def step(carry, i):
        alpha, opt_state, flipped, rho = carry
        (_, logits), grad = jax.value_and_grad(loss_fn, has_aux=True)(alpha)
        now = jnp.argmax(logits, axis=-1) != pseudo
        mix = (1.0 - alpha) * u + alpha * anchor
        rho = jnp.where(now, jnp.minimum(rho, _rho(mix, u, anchor)), rho)
        # The original divides the rate by 10 once i >= iters * 2 / 3; the rate
        # follows the step index either way, a reset only drops the moments.
        lr = jnp.where(i < config.iters * 2 / 3, config.learning_rate, config.learning_rate / 10)
        tx = optax.adam(lr)
        if config.reset_state_each_step:
            opt_state = tx.init(alpha)
        updates, opt_state = tx.update(grad, opt_state, alpha)
        alpha = jnp.clip(optax.apply_updates(alpha, updates), 1e-8, cap)
        return (alpha, opt_state, flipped | now, rho), None

    alpha0 = random_alpha(key, block.rows, u.shape[-1], cap)
    opt_state = optax.adam(config.learning_rate).init(alpha0)
    init = (alpha0, opt_state, jnp.zeros(u.shape[0], bool), jnp.full(u.shape[0], jnp.inf, u.dtype))
    (_, _, flipped, rho), _ = jax.lax.scan(step, init, jnp.arange(config.iters))
    return flipped, rho
