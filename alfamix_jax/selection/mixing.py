"""Interpolation `alpha` between pool embeddings and an anchor, and the mix.

Each `*_flips` function but the linear twins below handles one block of rows
against one anchor at one cap and returns `(flipped [b], rho [b])`, where `rho = ||mix - u|| / ||a - u||`
is how far towards the anchor the mix moved (the bounded "alpha norm" we
report in diagnostics; the original logs raw element-wise alpha norms, which
are unbounded in the closed form). `stages.Plan.flips_fn` vmaps these over
anchors inside a block.

On the linear head, random and learned alpha have `*_linear_flips` twins (chosen by
`stages.make_plan`) that take every anchor of a block at once: the same draws and Adam steps
(`_adam_step`, shared), the gradient in closed form, the mix's logits as the row's own plus
(alpha * (a - u)) W^T, and the (anchor, row) pairs taken in chunks, every step of a chunk
before the next chunk; pairs that `flip_bound.least_flip_caps` shows cannot flip at the cap
are skipped.
"""
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from alfamix_jax.selection.heads import HeadApply, LinearHead, linear_head_apply
from alfamix_jax.selection.settings import LearnedAlphaSettings
from alfamix_jax.selection.threefry import fold_in, fold_in_each, normal_rows


class Block(NamedTuple):
    """The rows of one pool block and what the search knows about them."""

    u: jax.Array  # [b, D] embeddings
    direction: jax.Array  # [b, D] unit loss gradient (zeros where none)
    pseudo: jax.Array  # [b] pseudo-labels
    rows: jax.Array  # [b] global row indices (seed per-row randomness)
    torch_nan: jax.Array | None = None  # [b] bool: rows where the original's alpha is NaN (Q1)


def _flipped(head_apply: HeadApply, head_params: Any, mix: jax.Array, pseudo: jax.Array) -> jax.Array:
    return jnp.argmax(head_apply(head_params, mix), axis=-1) != pseudo


def _z_norm(z: jax.Array) -> jax.Array:
    """||a - u|| per row, at least 1e-30 (the denominator of rho). z: [b, D] -> [b]."""
    return jnp.maximum(jnp.linalg.norm(z, axis=-1), 1e-30)


def _rho(mix: jax.Array, u: jax.Array, anchor: jax.Array) -> jax.Array:
    return jnp.linalg.norm(mix - u, axis=-1) / _z_norm(anchor - u)


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
    return fold_in_each(key, rows)


def random_alpha(keys: jax.Array, u: jax.Array, direction: jax.Array, anchor: jax.Array, cap: jax.Array) -> jax.Array:
    """The built-in "random" alpha rule: alpha ~ N(cap/2, cap/2) per element, clamped
    to [1e-8, cap] (the original's `generate_alpha`). -> [b, D]."""
    del direction, anchor
    noise = normal_rows(keys, u.shape[-1])
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


# Adam's constants: optax.adam's and torch.optim.Adam's defaults, as the original uses them.
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8

# Adam's moments (m, v) [b, D] each, or () in reference mode, where every step starts afresh.
Moments = tuple[jax.Array, ...]


def _adam_step(alpha: jax.Array, grad: jax.Array, moments: Moments, i: jax.Array, cap: jax.Array,
               config: LearnedAlphaSettings, *, reset_state: bool) -> tuple[jax.Array, Moments]:
    """Step `i` (from 0) of Adam on alpha [b, D] with gradient grad [b, D], then the clamp
    to [1e-8, cap]. -> (alpha, moments). Written out, not with optax: elementwise ops only,
    which XLA fuses with the gradient, and the bias corrections folded into two scalars
    (torch.optim.Adam's arithmetic, as the original's), with no optimiser state tree or step
    count to carry. The original divides the rate by 10 once i >= iters * 2 / 3.
    reset_state (reference mode, Q5: the original builds a new Adam every step): at count 1
    m / (1 - b1) = g and v / (1 - b2) = g^2, so the step is -lr g / (|g| + eps), no moments."""
    lr = jnp.where(i < config.iters * 2 / 3, config.learning_rate, config.learning_rate / 10)
    if reset_state:
        return jnp.clip(alpha - lr * (grad / (jnp.abs(grad) + ADAM_EPS)), 1e-8, cap), ()
    m, v = moments
    m = ADAM_B1 * m + (1.0 - ADAM_B1) * grad
    v = ADAM_B2 * v + (1.0 - ADAM_B2) * (grad * grad)
    count = (i + 1).astype(alpha.dtype)
    step_size = lr / (1.0 - ADAM_B1**count)  # [] scalars
    root_correction = jax.lax.rsqrt(1.0 - ADAM_B2**count)
    alpha = alpha - step_size * (m / (jnp.sqrt(v) * root_correction + ADAM_EPS))
    return jnp.clip(alpha, 1e-8, cap), (m, v)


def _adam_init(alpha: jax.Array, *, reset_state: bool) -> Moments:
    """Zero moments for alpha [b, D] (none in reference mode)."""
    return () if reset_state else (jnp.zeros_like(alpha), jnp.zeros_like(alpha))


_LearnCarry = tuple[jax.Array, Moments, jax.Array, jax.Array]  # alpha [b, D], Adam moments, flipped [b], rho [b]


def learned_flips(head_apply: HeadApply, head_params: Any, block: Block, anchor: jax.Array, cap: jax.Array,
                  key: jax.Array, config: LearnedAlphaSettings, *, reset_state: bool) -> tuple[jax.Array, jax.Array]:
    """Learned alpha: from a random start, `iters` Adam steps on
    `-clf_coef * CE(f(mix), p) + l2_coef * ||alpha||` per row, clamped to
    [1e-8, cap] after each step; flips are checked before each step, as in
    the original. Adam's state persists across steps unless `reset_state`
    (reference mode: the original builds a new Adam every step, so each step
    sees a fresh state at step count 0)."""
    u, pseudo = block.u, block.pseudo

    def loss_fn(alpha: jax.Array) -> tuple[jax.Array, jax.Array]:
        mix = (1.0 - alpha) * u + alpha * anchor
        logits = head_apply(head_params, mix)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, pseudo)
        per_row = -config.clf_coef * ce + config.l2_coef * jnp.linalg.norm(alpha, axis=-1)
        return per_row.sum(), logits

    def step(carry: _LearnCarry, i: jax.Array) -> tuple[_LearnCarry, None]:
        alpha, moments, flipped, rho = carry
        (_, logits), grad = jax.value_and_grad(loss_fn, has_aux=True)(alpha)
        now = jnp.argmax(logits, axis=-1) != pseudo
        mix = (1.0 - alpha) * u + alpha * anchor
        rho = jnp.where(now, jnp.minimum(rho, _rho(mix, u, anchor)), rho)
        alpha, moments = _adam_step(alpha, grad, moments, i, cap, config, reset_state=reset_state)
        return (alpha, moments, flipped | now, rho), None

    alpha0 = random_alpha(row_keys(key, block.rows), u, block.direction, anchor, cap)
    init = (alpha0, _adam_init(alpha0, reset_state=reset_state), jnp.zeros(u.shape[0], bool),
            jnp.full(u.shape[0], jnp.inf, u.dtype))
    (_, _, flipped, rho), _ = jax.lax.scan(step, init, jnp.arange(config.iters))
    return flipped, rho


def pair_chunk(dim: int) -> int:
    """(Anchor, row) pairs per chunk of the linear paths at D = dim: all of a chunk's steps run
    before the next chunk, so alpha, its Adam moments and z ([chunk, D] each) stay in cache.
    About 2^18 / D pairs (1 MiB per array), between 256 and 1024: on a 2-core EPYC the learned
    search at 20k x 512 (5 caps) took 0.53-0.62 s with 512 pairs against 0.62-0.71 s with 128
    and 0.73 s with 2048, and on the Fashion-MNIST protocol's 60k x 256 pool 0.84-0.90 s with
    1024 against 0.94-1.2 s with 256-512. A pair's results do not depend on the other pairs
    in its chunk (tests/test_learned_fast.py), and every chunk has the same shape on any mesh."""
    return max(256, min(1024, 1 << max(0, (2**18 // max(dim, 1)).bit_length() - 1)))


# fn(u [c, D], anchor [c, D], pseudo [c], keys [c]) -> (flipped [c], rho [c]) for one chunk of
# (anchor, row) pairs: each pair's row, its anchor, pseudo-label and PRNG key.
PairFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _by_pairs(fn: PairFn, block: Block, anchors: jax.Array, keys: jax.Array, may_flip: jax.Array | None,
              chunk: int | None) -> tuple[jax.Array, jax.Array]:
    """`fn` over the (anchor, row) pairs of a block that may flip, packed into chunks of `chunk`
    pairs (`pair_chunk(D)` by default); the other pairs are not computed: (False, inf).
    anchors [K, D], keys [K] (one per anchor; a pair's key is its anchor's folded with the
    row's global index, as `row_keys`), may_flip [K, b] bool or None (every pair) ->
    flipped [K, b], rho [K, b]. The last chunk is shifted back to end at the last packed pair
    (pairs it repeats get the same values); with fewer pairs than a chunk, the unused places
    compute a repeat of a pair and are not written. Every chunk has the same shape, and a
    pair's values do not depend on the others in its chunk or its place there (tested: the
    same bits with chunks of 97 to 1024 pairs, skipping or not), so skipping pairs changes
    none of the others, and a mesh, whose devices pack their own blocks, rounds alike."""
    num_anchors, b = anchors.shape[0], block.u.shape[0]
    total = num_anchors * b
    size = chunk or pair_chunk(block.u.shape[1])
    flat = jnp.ones(total, bool) if may_flip is None else may_flip.reshape(total)
    count = jnp.sum(flat, dtype=jnp.int32)
    # Pair ids (anchor * b + row) that may flip first; max(total, size) places, so a chunk always fits.
    packed = jnp.nonzero(jnp.pad(flat, (0, max(0, size - total))), size=max(total, size), fill_value=0)[0]

    def body(j: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        start = jnp.maximum(jnp.minimum(j * size, count - size), 0)
        ids = jax.lax.dynamic_slice_in_dim(packed, start, size)  # [size]
        anchor_of, row_of = ids // b, ids % b
        pair_keys = fold_in(keys[anchor_of], block.rows[row_of])
        f, r = fn(block.u[row_of], anchors[anchor_of], block.pseudo[row_of], pair_keys)
        target = jnp.where(start + jnp.arange(size) < count, ids, total)  # past the pairs: dropped
        return carry[0].at[target].set(f, mode="drop"), carry[1].at[target].set(r, mode="drop")

    init = (jnp.zeros(total, bool), jnp.full(total, jnp.inf, block.u.dtype))
    flipped, rho = jax.lax.fori_loop(0, (count + size - 1) // size, body, init)
    return flipped.reshape(num_anchors, b), rho.reshape(num_anchors, b)


class _LinearMix(NamedTuple):
    """A chunk of rows against one anchor on the linear head: the mix minus u is alpha * z,
    so its logits are base + (alpha * z) W^T, with the logits of u computed once per chunk,
    not once per step. Their last bits may differ from the general path's logits of
    (1 - alpha) u + alpha a; tests/test_learned_fast.py checks that the flips do not. rho is
    ||alpha * z|| / ||z||, ||z|| once per chunk: within float32 rounding of the general
    path's `_rho`, and the same on any mesh, as every chunk has the same shape. (The general
    path's `_rho` of (1 - alpha) u + alpha a here gave a mesh of 8 a rho_min 1 ulp off one
    device's on a 2-core AMD EPYC with AVX-512.)"""

    z: jax.Array  # [c, D] anchor - u
    base: jax.Array  # [c, C] logits of u
    pseudo: jax.Array  # [c]
    z_norm: jax.Array  # [c] `_z_norm(z)`

    @staticmethod
    def of(head: LinearHead, u: jax.Array, anchor: jax.Array, pseudo: jax.Array) -> "_LinearMix":
        """u [c, D], anchor [D] or [c, D] (one per row), pseudo [c]."""
        z = anchor - u
        return _LinearMix(z, linear_head_apply(head, u), pseudo, _z_norm(z))

    def check(self, head: LinearHead, alpha: jax.Array, flipped: jax.Array,
              rho: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Check alpha [c, D] -> logits [c, C], flipped [c], rho [c] (flipped, rho [c]: so far;
        rho is the smallest fraction of the way to the anchor among the mixes that flipped)."""
        moved = alpha * self.z  # [c, D] mix - u
        logits = self.base + jnp.dot(moved, head.weight.T, precision="highest")
        now = jnp.argmax(logits, axis=-1) != self.pseudo
        rho_now = jnp.linalg.norm(moved, axis=-1) / self.z_norm  # one pass over moved, not three arrays
        return logits, flipped | now, jnp.where(now, jnp.minimum(rho, rho_now), rho)


def random_linear_flips(head: LinearHead, block: Block, anchors: jax.Array, cap: jax.Array, keys: jax.Array, *,
                        may_flip: jax.Array | None = None,
                        chunk: int | None = None) -> tuple[jax.Array, jax.Array]:
    """`rule_flips(random_alpha, ...)` for a linear head and every anchor [K, D] (keys [K]) at
    once, over the pairs that `may_flip` [K, b] (`_by_pairs`): the same draws, the mix as
    `_LinearMix`. -> flipped [K, b], rho [K, b]."""
    def one(u: jax.Array, anchor: jax.Array, pseudo: jax.Array, pair_keys: jax.Array) -> tuple[jax.Array, jax.Array]:
        alpha = random_alpha(pair_keys, u, u, anchor, cap)  # [c, D]
        mix = _LinearMix.of(head, u, anchor, pseudo)
        _, flipped, rho = mix.check(head, alpha, jnp.zeros(u.shape[0], bool), jnp.full(u.shape[0], jnp.inf, u.dtype))
        return flipped, rho

    return _by_pairs(one, block, anchors, keys, may_flip, chunk)


def learned_gradient(head: LinearHead, logits: jax.Array, pseudo: jax.Array, z: jax.Array, alpha: jax.Array,
                     config: LearnedAlphaSettings) -> jax.Array:
    """d/d alpha of `-clf_coef * CE(mix W^T + b, p) + l2_coef * ||alpha||` per row, in closed
    form: dCE/dlogits = softmax - onehot, so d/dmix = -clf_coef (softmax - onehot) W, and
    mix = u + alpha z (z = a - u) gives d/dalpha = d/dmix * z; the L2 term adds
    l2_coef alpha / ||alpha||. logits [c, C], pseudo [c], z [c, D], alpha [c, D] -> [c, D]."""
    delta = jax.nn.softmax(logits, axis=-1) - jax.nn.one_hot(pseudo, logits.shape[-1], dtype=logits.dtype)
    d_mix = jnp.dot(-config.clf_coef * delta, head.weight, precision="highest")  # [c, D]
    norm = jnp.sqrt(jnp.sum(alpha * alpha, axis=-1, keepdims=True))  # > 0: alpha >= 1e-8
    return d_mix * z + config.l2_coef * (alpha / norm)


def learned_linear_flips(head: LinearHead, block: Block, anchors: jax.Array, cap: jax.Array, keys: jax.Array,
                         config: LearnedAlphaSettings, *, reset_state: bool, may_flip: jax.Array | None = None,
                         chunk: int | None = None) -> tuple[jax.Array, jax.Array]:
    """`learned_flips` for a linear head and every anchor [K, D] (keys [K]) at once, over the
    pairs that `may_flip` [K, b] (`_by_pairs`): the same start, Adam steps, clamps and checks,
    with the gradient in closed form (`learned_gradient`) and every step of a chunk of pairs
    run before the next chunk, so alpha and its Adam state stay in cache. The last step's
    update is never checked (in `learned_flips` either), so it is not made.
    -> flipped [K, b], rho [K, b]."""
    def one(u: jax.Array, anchor: jax.Array, pseudo: jax.Array, pair_keys: jax.Array) -> tuple[jax.Array, jax.Array]:
        mix = _LinearMix.of(head, u, anchor, pseudo)

        def step(i: jax.Array, carry: _LearnCarry) -> _LearnCarry:
            alpha, moments, flipped, rho = carry
            logits, flipped, rho = mix.check(head, alpha, flipped, rho)
            grad = learned_gradient(head, logits, pseudo, mix.z, alpha, config)
            alpha, moments = _adam_step(alpha, grad, moments, i, cap, config, reset_state=reset_state)
            return alpha, moments, flipped, rho

        alpha0 = random_alpha(pair_keys, u, u, anchor, cap)  # [c, D]
        init = (alpha0, _adam_init(alpha0, reset_state=reset_state), jnp.zeros(u.shape[0], bool),
                jnp.full(u.shape[0], jnp.inf, u.dtype))
        alpha, _, flipped, rho = jax.lax.fori_loop(0, config.iters - 1, step, init)
        _, flipped, rho = mix.check(head, alpha, flipped, rho)
        return flipped, rho

    return _by_pairs(one, block, anchors, keys, may_flip, chunk)
