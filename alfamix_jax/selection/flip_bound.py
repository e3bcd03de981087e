"""The least cap at which a mix could flip a row's label on a linear head: the linear paths of
random and learned alpha skip the (anchor, row) pairs below it.

On a linear head the mix `u + alpha * z` (z = a - u, alpha in [1e-8, cap] per element: both
rules clamp to it) has logits `l(u) + (alpha * z) W^T`. Class c overtakes the pseudo-label p
only if  sum_d alpha_d z_d (W_cd - W_pd) >= l_p(u) - l_c(u), and over alpha in [0, cap]^D the
left side is at most

    cap * sum_d relu(z_d (W_cd - W_pd)) = cap / 2 * (z . (W_c - W_p) + |z| . |W_c - W_p|)
                                        <= cap / 2 * (z . (W_c - W_p) + |z| . (|W_c| + |W_p|)),

(relu(x) = (x + |x|) / 2), whatever alpha the rule draws or Adam reaches. So the pair cannot
flip at any cap below min over c != p of (l_p - l_c) / gain_c. Of the terms, z . W_c is
a . W_c - u . W_c (one product per anchor and one per row); only |z| . |W|^T is a product over
every pair, one thin matmul, made once per search (the bound is linear in the cap).

The margin is shrunk and the gains widened by 16 times float32's worst-case error of a sum of
D + 2 products (gamma = (D + 2) 2^-24 of the sums of absolute values, for any summation order),
more than the errors of these products and of the logits the linear paths compute, so a
skipped pair is one whose computed check would not flip either: skipping changes no bit of
the search's results (tests/test_flip_bound.py checks both).
"""
import jax
import jax.numpy as jnp

from alfamix_jax.selection.heads import LinearHead, linear_head_apply
from alfamix_jax.selection.reductions import first_index_of


def _own(values: jax.Array, pseudo: jax.Array) -> jax.Array:
    """The pseudo-label's column. values [b, C], pseudo [b] -> [b, 1]."""
    return jnp.take_along_axis(values, pseudo[:, None], axis=-1)


def _own_rows(values: jax.Array, pseudo: jax.Array) -> jax.Array:
    """The pseudo-label's column per anchor. values [b, K, C], pseudo [b] -> [b, K, 1]."""
    index = jnp.broadcast_to(pseudo[:, None, None], values.shape[:-1] + (1,))
    return jnp.take_along_axis(values, index, axis=-1)


def _runners_up(logits: jax.Array, is_own: jax.Array, count: int) -> jax.Array:
    """The `count` classes with the highest logits after the pseudo-label's (ties: the lower
    class first), by masked max and first index: `lax.top_k` sorts on XLA:CPU, 20% of the
    bound's time. logits, is_own [b, C] -> [b, count] int32 (count >= 1: the selector takes
    C >= 2)."""
    taken, runners = is_own, []
    for _ in range(count):
        rest = jnp.where(taken, -jnp.inf, logits)
        runner = first_index_of(rest, jnp.max(rest, axis=-1), axis=-1)  # [b]
        runners.append(runner)
        taken = taken | (jnp.arange(logits.shape[-1]) == runner[:, None])
    return jnp.stack(runners, axis=-1)


# Runner-up classes (by the row's logits) whose gain is taken exactly, |z| . |W_c - W_p|; on the
# Fashion-MNIST protocol's pool at cap 0.2, 46% of the pairs may flip by the bound above, 35%
# with the first runner-up exact, 33% with two, 32% with all (which would cost C products).
EXACT_RUNNERS = 2


def least_flip_caps(head: LinearHead, u: jax.Array, pseudo: jax.Array, anchors: jax.Array) -> jax.Array:
    """Per (anchor, row): a cap below which no alpha in [0, cap]^D flips the row away from its
    pseudo-label (see above); -inf where the margin is within rounding of 0 (or not finite),
    inf where no class can gain. u [b, D], pseudo [b], anchors [K, D] -> [K, b]."""
    dim, num_classes = u.shape[-1], head.weight.shape[0]
    slack = (dim + 2) * 2.0**-20
    abs_weight = jnp.abs(head.weight).T  # [D, C]
    logits = linear_head_apply(head, u)  # [b, C]
    row_size = jnp.dot(jnp.abs(u), abs_weight, precision="highest")  # [b, C] sum |u_d| |W_cd|
    anchor_logits = jnp.dot(anchors, head.weight.T, precision="highest")  # [K, C] without the bias
    anchor_size = jnp.dot(jnp.abs(anchors), abs_weight, precision="highest")  # [K, C]
    size = row_size + jnp.abs(head.bias)
    margin = _own(logits, pseudo) - logits - slack * (size + _own(size, pseudo))  # [b, C]
    # Rows lead ([b, K, ...]): the runner-up products below are then batched over rows with no
    # transpose of |z| (with anchors leading, XLA copied it, a third of the bound's time).
    abs_z = jnp.abs(anchors[None, :, :] - u[:, None, :])  # [b, K, D]
    abs_spread = jnp.dot(abs_z, abs_weight, precision="highest")  # [b, K, C] |z| . |W_c|
    spread = abs_spread + _own_rows(abs_spread, pseudo)  # |z| . (|W_c| + |W_p|)
    is_own = jnp.arange(num_classes) == pseudo[:, None]  # [b, C]
    runners = _runners_up(logits, is_own, min(EXACT_RUNNERS, num_classes - 1))  # [b, E]
    gaps = jnp.abs(head.weight[runners] - head.weight[pseudo][:, None, :])  # [b, E, D] |W_c - W_p|
    exact = jnp.einsum("bkd,bed->bke", abs_z, gaps, precision="highest")  # [b, K, E] <= the spread above
    for e in range(runners.shape[1]):
        is_runner = (jnp.arange(num_classes) == runners[:, e:e + 1])[:, None, :]  # [b, 1, C]
        spread = jnp.where(is_runner, exact[..., e:e + 1], spread)
    along = anchor_logits[None, :, :] - (logits - head.bias)[:, None, :]  # [b, K, C] z . W_c
    scale = abs_spread + anchor_size[None, :, :] + size[:, None, :]  # bounds the rounding of along and of spread
    gain = 0.5 * (along - _own_rows(along, pseudo) + spread) + slack * (scale + _own_rows(scale, pseudo))
    caps = jnp.where(margin[:, None, :] > 0, margin[:, None, :] / gain, -jnp.inf)  # margin / 0 = inf: none gains
    return jnp.min(jnp.where(is_own[:, None, :], jnp.inf, caps), axis=-1).T
