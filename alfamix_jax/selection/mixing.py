"""Interpolation `alpha` between pool embeddings and an anchor, and the mix.

Each `*_flips` function handles one block of rows against one anchor at one
cap and returns `(flipped [b], rho [b])`, where `rho = ||mix - u|| / ||a - u||`
is how far towards the anchor the mix moved (the bounded "alpha norm" we
report in diagnostics; the original logs raw element-wise alpha norms, which
are unbounded in the closed form). The candidate search vmaps these over
anchors inside a block.
"""
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from alfamix_jax.selection.heads import HeadApply
from alfamix_jax.selection.settings import LearnedAlphaSettings


class Block(NamedTuple):
    """The rows of one pool block and what the search knows about them."""

    u: jax.Array  # [b, D] embeddings
    direction: jax.Array  # [b, D] unit loss gradient (zeros where none)
    pseudo: jax.Array  # [b] pseudo-labels
    rows: jax.Array  # [b] global row indices (seed per-row randomness)
    torch_nan: jax.Array | None = None  # [b] bool: rows where the original's alpha is NaN (Q1)


def _flipped(head_apply: HeadApply, head_params: Any, mix: jax.Array, pseudo: jax.Array) -> jax.Array:
    return jnp.argmax(head_apply(head_params, mix), axis=-1) != pseudo


def _rho(mix: jax.Array, u: jax.Array, anchor: jax.Array) -> jax.Array:
    z = anchor - u
    moved = jnp.linalg.norm(mix - u, axis=-1)
    return moved / jnp.maximum(jnp.linalg.norm(z, axis=-1), 1e-30)


def closed_form_flips(head_apply: HeadApply, head_params: Any, block: Block, anchor: jax.Array, eps: jax.Array, *,
                      literal: bool) -> tuple[jax.Array, jax.Array]:
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


# alpha(keys [b], u [b, D], direction [b, D], anchor [D], cap []) -> alpha [b, D]: one PRNG key
# per row (folded from the row's global index, so the same on any mesh), the rows, their unit
# loss gradient, one anchor and the cap. The mix is (1 - alpha) * u + alpha * anchor.
AlphaRule = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def row_keys(key: jax.Array, rows: jax.Array) -> jax.Array:
    """One key per row: `key` folded with the row's global index. rows: [b] -> [b] keys."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)


def random_alpha(keys: jax.Array, u: jax.Array, direction: jax.Array, anchor: jax.Array, cap: jax.Array) -> jax.Array:
    """The built-in "random" alpha rule: alpha ~ N(cap/2, cap/2) per element, clamped
    to [1e-8, cap] (the original's `generate_alpha`). -> [b, D]."""
    del direction, anchor
    noise = jax.vmap(lambda k: jax.random.normal(k, (u.shape[-1],)))(keys)
    return jnp.clip(cap / 2.0 + (cap / 2.0) * noise, 1e-8, cap)


def rule_flips(rule: AlphaRule, head_apply: HeadApply, head_params: Any, block: Block, anchor: jax.Array,
               cap: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Flips and rho of the mix whose alpha a rule draws (the "random" alpha, or a researcher's)."""
    u = block.u
    alpha = rule(row_keys(key, block.rows), u, block.direction, anchor, cap)
    if getattr(alpha, "shape", None) != u.shape:
        raise ValueError(f"alpha: the alpha function {getattr(rule, '__name__', rule)!r} returned shape "
                         f"{getattr(alpha, 'shape', type(alpha).__name__)}; expected {u.shape} ([rows, D])")
    mix = (1.0 - alpha) * u + alpha * anchor
    return _flipped(head_apply, head_params, mix, block.pseudo), _rho(mix, u, anchor)


_LearnCarry = tuple[jax.Array, Any, jax.Array, jax.Array]  # alpha [b, D], Adam state, flipped [b], rho [b]


def learned_flips(head_apply: HeadApply, head_params: Any, block: Block, anchor: jax.Array, cap: jax.Array,
                  key: jax.Array, config: LearnedAlphaSettings, *, reset_state: bool) -> tuple[jax.Array, jax.Array]:
    """Learned alpha: from a random start, `iters` Adam steps on
    `-clf_coef * CE(f(mix), p) + l2_coef * ||alpha||` per row, clamped to
    [1e-8, cap] after each step; flips are checked before each step, as in
    the original. The optax state persists across steps unless
    `reset_state` (reference mode: the original builds a new Adam
    every step, so each step sees a fresh state at step count 0)."""
    u, pseudo = block.u, block.pseudo

    def loss_fn(alpha: jax.Array) -> tuple[jax.Array, jax.Array]:
        mix = (1.0 - alpha) * u + alpha * anchor
        logits = head_apply(head_params, mix)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, pseudo)
        per_row = -config.clf_coef * ce + config.l2_coef * jnp.linalg.norm(alpha, axis=-1)
        return per_row.sum(), logits

    def step(carry: _LearnCarry, i: jax.Array) -> tuple[_LearnCarry, None]:
        alpha, opt_state, flipped, rho = carry
        (_, logits), grad = jax.value_and_grad(loss_fn, has_aux=True)(alpha)
        now = jnp.argmax(logits, axis=-1) != pseudo
        mix = (1.0 - alpha) * u + alpha * anchor
        rho = jnp.where(now, jnp.minimum(rho, _rho(mix, u, anchor)), rho)
        # The original divides the rate by 10 once i >= iters * 2 / 3; the rate
        # follows the step index either way, a reset only drops the moments.
        lr = jnp.where(i < config.iters * 2 / 3, config.learning_rate, config.learning_rate / 10)
        tx = optax.adam(lr)
        if reset_state:
            opt_state = tx.init(alpha)
        updates, opt_state = tx.update(grad, opt_state, alpha)
        alpha = jnp.clip(optax.apply_updates(alpha, updates), 1e-8, cap)
        return (alpha, opt_state, flipped | now, rho), None

    alpha0 = random_alpha(row_keys(key, block.rows), u, block.direction, anchor, cap)
    opt_state = optax.adam(config.learning_rate).init(alpha0)
    init = (alpha0, opt_state, jnp.zeros(u.shape[0], bool), jnp.full(u.shape[0], jnp.inf, u.dtype))
    (_, _, flipped, rho), _ = jax.lax.scan(step, init, jnp.arange(config.iters))
    return flipped, rho
