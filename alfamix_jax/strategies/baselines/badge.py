"""BADGE (Ash et al., ICLR 2020): k-means++ seeding on gradient embeddings.

The gradient embedding of row i is the gradient of the cross-entropy loss at
the model's own prediction yhat_i with respect to the last layer's weight:
g_i = a_i (x) z_i, with a_i = p_i - onehot(yhat_i) [C] and z_i the embedding
[D] (p = softmax(view.logits)). With `include_bias=True` the bias gradient a_i
is appended: g_i = [a_i (x) z_i, a_i], which is a_i (x) [z_i, 1].

k-means++ seeding over the unlabelled rows: the first centre is the row whose
gradient embedding has the largest norm; each of the next B - 1 centres is
drawn with probability proportional to its squared distance to the nearest
centre so far (D^2 sampling: jax.random.categorical's Gumbel-max draw with
the key folded in with the step, written out so that CoreSet's lazy greedy
`lazy_k_center` can run it). The B steps are one `lax.fori_loop`; a row's
D^2 is brought up to date (O(C + D) per new centre) only when its stale
score reaches the top, so a step costs an O(N) noise draw and a few argmaxes
rather than two passes over z [N, D] (linear in N, not N * B memory traffic).

Never [N, C*D] nor N x N: the distance factorises. With u = a_i - a_c,
v = z_i - z_c,
    a_i z_i^T - a_c z_c^T = u z_i^T + a_c v^T, so
    ||g_i - g_c||^2 = |u|^2 |z_i|^2 + |a_c|^2 |v|^2 + 2 (u . a_c)(z_i . v),
which is the expansion |a_i|^2|z_i|^2 + |a_c|^2|z_c|^2 - 2 (a_i.a_c)(z_i.z_c)
rewritten in differences. |u|^2 and |v|^2 are summed from the differences
(stable: 0 for a copy of the centre, no cancellation of the size of |g|^2);
z_i . v = |z_i|^2 - z_i . z_c is one matrix-vector product (BLAS; summing
z * v as a second fused reduction ran 5x slower on XLA:CPU), and its rounding
error is multiplied by u . a_c, so it vanishes with |u| and stays far below
the other terms unless |u| < eps |a_c|. The result is clipped at 0. With the
bias, |z_i|^2 becomes |z_i|^2 + 1 and z_i . z_c becomes z_i . z_c + 1 (the
appended 1s cancel in v).

Differences from the original repository (query_strategies/badge_sampling.py,
`init_centers`, with models/training.py `get_grad_embedding`):
- Same first centre (np.argmax of the gradient-embedding norm: the lowest
  index on ties) and the same D^2 distribution (it squares sklearn's
  Euclidean pairwise distances). It materialises the [N_unlabelled, C*D]
  embedding on the host (float64, then float32) and draws with
  scipy.stats.rv_discrete from NumPy's global RNG; we draw from the key.
- Its embedding is z * (onehot - p), the negative of ours; distances and
  norms are the same. It has no bias gradient (hence `include_bias=False` by
  default), nor has the BADGE authors' code (JordanAsh/badge, whose
  get_grad_embedding this copies), although the paper speaks of the
  gradient with respect to the last layer's parameters.
- It sizes the embedding with nLab = len(np.unique(Y)) over the *unlabelled
  true labels*, so a class absent from the unlabelled pool drops the last
  class blocks (and the label leaks into the embedding's width); we always
  use the C classes of the head.
- A chosen centre keeps a tiny positive D^2 there (sklearn distances between a
  row and its copy are not exactly 0), so it can be drawn again, returning
  duplicates; we mask chosen and labelled rows out, so the B picks are unique.
- When every remaining distance is 0 (fewer distinct gradient embeddings than
  B) it stops in pdb.set_trace(); we draw uniformly among the unpicked
  unlabelled rows.
- It runs the centres through np.linalg.eig of their Gram matrix and
  discards the result; we skip that.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from alfamix_jax.strategies.baselines.coreset import lazy_k_center
from alfamix_jax.strategies.interface import PoolView, Query, Strategy


def gradient_factors(logits, embeddings, *, include_bias: bool = False):
    """The two factors of the gradient embeddings and their squared norms.
    logits [N, C], embeddings [N, D] -> a [N, C], z [N, D], |a|^2 [N], |z|^2 [N]
    (|z|^2 + 1 with the bias), so that ||g_i||^2 = |a_i|^2 |z_i|^2."""
    logits = logits.astype(jnp.float32)
    z = embeddings.astype(jnp.float32)
    p = jax.nn.softmax(logits, axis=-1)
    yhat = jnp.argmax(logits, axis=-1)
    a = p - jax.nn.one_hot(yhat, logits.shape[-1], dtype=p.dtype)
    sq_a = jnp.sum(a * a, axis=-1)
    sq_z = jnp.sum(z * z, axis=-1) + (1.0 if include_bias else 0.0)
    return a, z, sq_a, sq_z


def sq_dists_to_row(a, z, sq_z, c, *, include_bias: bool = False):
    """Squared distance between every row's gradient embedding and row c's.
    a [N, C], z [N, D], sq_z [N] (as from gradient_factors, same include_bias), c [] -> [N]."""
    return _sq_dists_to_centre(a, z, sq_z, a[c], z[c], include_bias=include_bias)


def _sq_dists_to_centre(a, z, sq_z, a_c, z_c, *, include_bias: bool):
    """Squared distances of every row to one centre. a [N, C], z [N, D], sq_z [N], a_c [C], z_c [D] -> [N]."""
    u = a - a_c  # [N, C]
    sq_v = jnp.sum(jnp.square(z - z_c), axis=-1)  # [N], by differences (fused, no [N, D] temporary)
    # z_i . v_i = |z_i|^2 - z_i . z_c (a matrix-vector product; the appended 1s of the bias cancel).
    z_dot_v = sq_z - (z @ z_c + (1.0 if include_bias else 0.0))  # [N]
    d = jnp.sum(u * u, axis=-1) * sq_z + jnp.sum(a_c * a_c) * sq_v + 2.0 * (u @ a_c) * z_dot_v
    return jnp.maximum(d, 0.0)


def _dists_to_centres(row, cents, *, include_bias: bool):
    """Squared distances of one row's gradient embedding to W centres' (the formula of
    sq_dists_to_row with the roles kept: row i, centres c).
    row: (a [C], z [D], |z|^2 []), cents: (a [W, C], z [W, D], |z|^2 [W]) -> [W]."""
    a_i, z_i, sq_z_i = row
    a_c, z_c, _ = cents
    u = a_i - a_c  # [W, C]
    sq_v = jnp.sum(jnp.square(z_i - z_c), axis=-1)  # [W]
    z_dot_v = sq_z_i - (z_c @ z_i + (1.0 if include_bias else 0.0))  # [W]
    d = (jnp.sum(u * u, axis=-1) * sq_z_i + jnp.sum(a_c * a_c, axis=-1) * sq_v
         + 2.0 * jnp.sum(u * a_c, axis=-1) * z_dot_v)
    return jnp.maximum(d, 0.0)


def badge_select(key, logits, embeddings, labels, budget: int, *, include_bias: bool = False):
    """k-means++ seeding on the unlabelled rows' gradient embeddings.
    logits [N, C], embeddings [N, D], labels [N] (-1 unlabelled) -> [B] int32 in pick order.

    Step t draws argmax(log D^2 + Gumbel(fold_in(key, t))), which is exactly
    jax.random.categorical(fold_in(key, t), log D^2) (the same noise, so the same
    picks as updating D^2 for every row per step), run through CoreSet's lazy greedy:
    log D^2 only falls as centres are added, so a stale value bounds the score from
    above and only the rows that reach the top are brought up to date. A step then
    costs an O(N) noise draw and a few argmaxes instead of two passes over z [N, D]."""
    a, z, sq_a, sq_z = gradient_factors(logits, embeddings, include_bias=include_bias)
    open_ = labels < 0  # [N] still pickable
    first = jnp.argmax(jnp.where(open_, sq_a * sq_z, -jnp.inf)).astype(jnp.int32)
    open_ = open_.at[first].set(False)
    d0 = sq_dists_to_row(a, z, sq_z, first, include_bias=include_bias)  # [N]
    log_d = jnp.log(jnp.where(open_, d0, 0.0))  # [N], -inf where closed or at distance 0

    def row_dists(row, cents):  # log D^2 to W centres: [W]
        return jnp.log(_dists_to_centres(row, cents, include_bias=include_bias))

    def block_dists(rows, cents):  # [R, W]: per centre, the row-vectorised formula
        def one(c):
            return jnp.log(_sq_dists_to_centre(*rows, c[0], c[1], include_bias=include_bias))
        return jax.lax.map(one, cents).T

    def priority(t):  # what jax.random.categorical adds at step t >= 1 (step 0 is `first`, no draw)
        return jax.random.gumbel(jax.random.fold_in(key, t), (a.shape[0],), jnp.float32)

    picks, _ = lazy_k_center(log_d, (a, z, sq_z), row_dists, block_dists, budget, priority=priority,
                             fallback=open_, first=first)
    return picks


def make_badge(*, budget: int, include_bias: bool = False, **_) -> Strategy:
    """BADGE: k-means++ seeding on last-layer gradient embeddings (see the module docstring).
    include_bias: append the bias gradient to the embedding (the original does not)."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")

    @jax.jit
    def query(key, view: PoolView) -> Query:
        return Query(badge_select(key, view.logits, view.embeddings, view.labels, budget,
                                  include_bias=include_bias), {})

    return Strategy("badge", query)


STRATEGIES = {"badge": make_badge}
