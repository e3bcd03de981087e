"""The README's "Writing a variant" examples, one per part a researcher replaces, and
functions that recompute a built-in (a replacement that computes what the built-in does
must give its batch bit for bit). Not a test module."""
import jax
import jax.numpy as jnp

from alfamix_jax.selection.anchors import compute_anchors


# ---- anchors(embeddings [M, D], labels [M] int32 (-1: not labelled), num_classes) -> [K, D]
def class_medoids(embeddings, labels, num_classes):
    """Per class, the labelled row nearest the class mean (a real point, not an average)."""
    means = compute_anchors(embeddings, labels, num_classes)  # [C, D]
    d = jnp.sum((embeddings[:, None, :] - means[None]) ** 2, axis=-1)  # [M, C]
    d = jnp.where(labels[:, None] == jnp.arange(num_classes), d, jnp.inf)  # only the class's own rows
    nearest = jnp.argmin(d, axis=0)  # [C]
    has_rows = jnp.isfinite(jnp.min(d, axis=0))
    return jnp.where(has_rows[:, None], embeddings[nearest], means)  # a class without rows keeps its mean


def class_means(embeddings, labels, num_classes):
    """What anchors="class-means" computes."""
    return compute_anchors(embeddings, labels, num_classes)


# ---- diversity(key, embeddings [N, D], candidates [N] bool, budget) -> [budget] int32 rows (-1: none)
def farthest_first(key, embeddings, candidates, budget):
    """Greedy k-center over the candidates: start at the candidate nearest their mean, then
    repeatedly take the candidate farthest from those taken."""
    del key
    mean = jnp.sum(jnp.where(candidates[:, None], embeddings, 0.0), axis=0) / jnp.sum(candidates)
    start = jnp.argmin(jnp.where(candidates, jnp.sum((embeddings - mean) ** 2, axis=-1), jnp.inf))

    def step(i, carry):
        picks, nearest = carry  # [B], [N]: squared distance to the nearest pick
        row = jnp.argmax(jnp.where(candidates, nearest, -jnp.inf))
        d = jnp.sum((embeddings - embeddings[row]) ** 2, axis=-1)
        return picks.at[i].set(row), jnp.minimum(nearest, d)

    first = jnp.sum((embeddings - embeddings[start]) ** 2, axis=-1)
    picks = jnp.full((budget,), -1, jnp.int32).at[0].set(start)
    picks, _ = jax.lax.fori_loop(1, budget, step, (picks, first))
    return picks


def uniform_pick(key, embeddings, candidates, budget):
    """What diversity="random" computes: `budget` candidates in a random order."""
    del embeddings
    score = jnp.where(candidates, jax.random.uniform(key, candidates.shape), -jnp.inf)
    return jax.lax.top_k(score, budget)[1].astype(jnp.int32)


# ---- alpha(keys [b], u [b, D], direction [b, D], anchor [D], cap []) -> alpha [b, D]
def beta_alpha(keys, u, direction, anchor, cap):
    """alpha = cap * Beta(2, 5) per element: mostly small mixes, sometimes close to the cap."""
    del direction, anchor
    return cap * jax.vmap(lambda k: jax.random.beta(k, 2.0, 5.0, (u.shape[-1],)))(keys)


def gaussian_alpha(keys, u, direction, anchor, cap):
    """What alpha="random" computes (the original's generate_alpha)."""
    del direction, anchor
    noise = jax.vmap(lambda k: jax.random.normal(k, (u.shape[-1],)))(keys)
    return jnp.clip(cap / 2.0 + (cap / 2.0) * noise, 1e-8, cap)
