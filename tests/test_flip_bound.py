"""flip_bound.least_flip_caps: the caps below which the linear paths skip an (anchor, row)
pair. Against a float64 oracle of the exact bound (the best alpha in [0, cap]^D flips the row
at exactly min_c margin_c / sum_d relu(z_d (W_cd - W_pd))), never above it and not far
below; and in float32 as the linear paths compute, no alpha just under the cap flips a
pair, the best one included, on rows built a hair from a tie between two classes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import make_pool

from alfamix_jax import compute_anchors, linear_head_apply, pseudo_labels
from alfamix_jax.selection import flip_bound, mixing

NUM_CLASSES = 6


def _pool(seed, dim, sep):
    x, labels, _, head = make_pool(seed, n=400, dim=dim, num_classes=NUM_CLASSES, sep=sep)
    return jnp.asarray(x), head, compute_anchors(jnp.asarray(x), jnp.asarray(labels), NUM_CLASSES)


def _near_ties(x, head, margins):
    """Rows of x moved along W_a - W_b (a, b their two highest classes) to where l_a - l_b is
    `margins` [n] apart: ties broken by a hair. -> [n, D] float32."""
    x64, w, b = (np.asarray(a, np.float64) for a in (x, head.weight, head.bias))
    logits = x64 @ w.T + b
    top = np.argsort(-logits, axis=1)[:, :2]
    rows = np.arange(len(x64))
    direction = w[top[:, 0]] - w[top[:, 1]]  # [n, D]
    gap = logits[rows, top[:, 0]] - logits[rows, top[:, 1]]
    moved = x64 + ((margins - gap) / np.sum(direction**2, axis=1))[:, None] * direction
    return jnp.asarray(moved, jnp.float32)


def _exact_caps(x, head, anchors, pseudo):
    """float64: min over c != p of (l_p - l_c) / sum_d relu(z_d (W_cd - W_pd)). -> [K, n]."""
    x64, w, b, a = (np.asarray(v, np.float64) for v in (x, head.weight, head.bias, anchors))
    p = np.asarray(pseudo)
    logits = x64 @ w.T + b
    margin = logits[np.arange(len(p)), p][:, None] - logits  # [n, C]
    z = a[:, None, :] - x64[None]  # [K, n, D]
    delta = w[None, :, :] - w[p][:, None, :]  # [n, C, D]
    gain = np.einsum("kncd->knc", np.maximum(z[:, :, None, :] * delta[None], 0.0))  # [K, n, C]
    with np.errstate(divide="ignore", invalid="ignore"):
        caps = np.where(margin > 0, margin / gain, -np.inf)
    caps[:, np.arange(len(p)), p] = np.inf
    return caps.min(axis=-1)


@pytest.mark.parametrize("seed,dim,sep", [(0, 7, 0.5), (1, 64, 1.0), (2, 300, 0.3)])
def test_never_above_the_exact_cap_and_not_far_below(seed, dim, sep):
    x, head, anchors = _pool(seed, dim, sep)
    pseudo = pseudo_labels(linear_head_apply, head, x)
    least = np.asarray(jax.jit(flip_bound.least_flip_caps)(head, x, pseudo, anchors), np.float64)
    exact = _exact_caps(x, head, anchors, pseudo)
    assert np.all(least <= exact)
    finite = np.isfinite(exact) & (exact > 0)
    assert finite.mean() > 0.9
    ratio = least[finite] / exact[finite]
    assert np.median(ratio) > 0.7 and np.mean(ratio > 0.4) > 0.95, np.percentile(ratio, [1, 50])


def _worst_alphas(x, head, anchors, pseudo, caps):
    """For each pair and class c != p, the alpha in [1e-8, cap]^D that moves l_c - l_p most:
    cap where z_d (W_cd - W_pd) > 0, else 1e-8. caps [K, n] -> [K, n, C, D] float32."""
    z = anchors[:, None, :] - x[None]  # [K, n, D]
    delta = head.weight[None, :, :] - head.weight[pseudo][:, None, :]  # [n, C, D]
    up = z[:, :, None, :] * delta[None] > 0
    return jnp.where(up, caps[:, :, None, None], jnp.float32(1e-8))


def _checked(x, head, anchors, pseudo, alphas):
    """Whether the mixes of alphas [K, m, n, D] flip, checked as the linear paths check
    (`_LinearMix.check`). -> [K, m, n] bool."""
    def flips(anchor, alphas_m):  # [D], [m, n, D] -> [m, n]
        mix = mixing._LinearMix.of(head, x, anchor, pseudo)
        return jax.vmap(lambda alpha: mix.check(head, alpha, jnp.zeros(x.shape[0], bool),
                                                jnp.full(x.shape[0], jnp.inf))[1])(alphas_m)

    return jax.vmap(flips)(anchors, alphas)


@jax.jit
def _flips_below(x, head, anchors, exact):
    """Whether the worst alphas, or 16 random ones, just under each pair's least cap flip it,
    and whether the worst alphas at twice the exact cap do. exact [K, n]. -> [K, n] x 2, caps."""
    pseudo = pseudo_labels(linear_head_apply, head, x)
    least = flip_bound.least_flip_caps(head, x, pseudo, anchors)
    caps = jnp.where(jnp.isfinite(least) & (least > 0), least * (1 - 2.0**-20), 0.0)  # [K, n]
    worst = jnp.moveaxis(_worst_alphas(x, head, anchors, pseudo, caps), 2, 1)  # [K, C, n, D]
    noise = jax.random.uniform(jax.random.key(0), (anchors.shape[0], 16) + x.shape)
    draws = jnp.maximum(noise * caps[:, None, :, None], 1e-8)  # [K, 16, n, D]
    below = jnp.any(_checked(x, head, anchors, pseudo, jnp.concatenate([worst, draws], axis=1)), axis=1)
    above = jnp.moveaxis(_worst_alphas(x, head, anchors, pseudo, 2 * exact), 2, 1)
    return below, jnp.any(_checked(x, head, anchors, pseudo, above), axis=1), caps


@pytest.mark.parametrize("scale", [1e-2, 1e-1])
def test_no_alpha_under_the_cap_flips_a_pair_a_hair_from_a_tie(scale):
    """Rows moved to within `scale` of a tie between their two best classes, so the caps are
    tiny (median 5e-4 and 6e-3; logits about 7 in size here, and a margin under the bound's
    slack, about 2e-3, is never skipped). At twice the exact cap the worst alpha flips nearly
    every pair, so a cap set too high would be seen."""
    x, head, anchors = _pool(4, 48, 0.5)
    margins = scale * np.abs(np.random.default_rng(0).normal(size=x.shape[0])) + scale / 10
    x = _near_ties(x, head, margins)
    exact = _exact_caps(x, head, anchors, pseudo_labels(linear_head_apply, head, x))
    below, above, caps = _flips_below(x, head, anchors, jnp.asarray(exact, jnp.float32))
    assert np.mean(np.asarray(caps) > 0) > 0.8
    assert not np.any(np.asarray(below))
    assert np.mean(np.asarray(above)) > 0.9
