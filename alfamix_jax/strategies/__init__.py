"""One interface for every query strategy: `query(key, view) -> Query`.

A strategy is built once per (name, budget) by a factory from `STRATEGIES`
and is a pure function of a PRNG key and a `PoolView` (the model's outputs on
the whole pool plus who is labelled). Shapes are fixed by the pool size, so a
strategy compiles once per budget, not once per round. The baselines of the
paper join this registry (issue 4) without touching the runner.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from alfamix_jax.selection.mixing import LearnedAlphaConfig
from alfamix_jax.selection.selector import make_alfamix_selector


class PoolView(NamedTuple):
    """What a strategy may look at. Rows are the whole pool, labelled or not."""

    embeddings: jax.Array  # [N, D] the model's embedding of every pool row
    logits: jax.Array  # [N, C] the model's logits (eval mode)
    labels: jax.Array  # [N] int32 class of labelled rows, -1 for unlabelled
    head_params: Any  # the classifier head's parameters (a LinearHead for our models)
    # Filled only for strategies whose `needs` name them (they cost extra passes over the pool):
    mc_logits: jax.Array | None = None  # [T, N, C] logits of T stochastic (MC-dropout) passes


class Query(NamedTuple):
    selected: jax.Array  # [B] int32 pool indices, unlabelled, unique
    diagnostics: dict  # name -> scalar array (empty for the simple baselines)


@dataclasses.dataclass(frozen=True)
class AlfaMixSettings:
    """ALFA-Mix settings shared by the `alfamix*` presets (see make_alfamix_selector)."""

    alpha_cap_step: float = 0.2
    compat: str = "default"  # "default" fixes the original's defects; "reference" reproduces them
    block_size: int = 4096
    max_candidates: int = 65536
    kmeans_max_iters: int = 100
    learned_learning_rate: float = 0.1
    learned_iters: int = 5
    learned_l2_coef: float = 0.01
    diversity: str = "kmeans"  # ablation: "kmeans" | "random" | "top-alpha" among candidates
    anchors: str = "class-means"  # ablation: "class-means" | "labelled" (every labelled row)
    max_anchors: int = 2048


@dataclasses.dataclass(frozen=True)
class BaselineSettings:
    """Settings of the baselines (defaults: the original repository or the method's paper;
    each module's docstring says which)."""

    block_size: int = 4096  # rows per block where a baseline tiles the pool
    bald_passes: int = 5  # MC-dropout passes (the original's n_drop); needs model.dropout > 0
    dropquery_passes: int = 3
    dropquery_dropout: float = 0.75
    gcnal_subset_size: int = 10000  # unlabelled rows the GCN sees (the original's SUBSET)
    gcnal_train_steps: int = 200
    deepfool_max_iter: int = 50
    badge_include_bias: bool = False
    compat: str = "default"  # "reference" reproduces the original's CDAL / DeepFool quirks

    def for_strategy(self, name: str) -> dict:
        """The factory keywords of strategy `name`."""
        per_name = {
            "bald": dict(passes=self.bald_passes),
            "dropquery": dict(passes=self.dropquery_passes, dropout_rate=self.dropquery_dropout),
            "gcnal": dict(subset_size=self.gcnal_subset_size, train_steps=self.gcnal_train_steps),
            "gcnal_uncertain": dict(subset_size=self.gcnal_subset_size, train_steps=self.gcnal_train_steps),
            "adversarial_deepfool": dict(max_iter=self.deepfool_max_iter, compat=self.compat),
            "cdal": dict(compat=self.compat),
            "badge": dict(include_bias=self.badge_include_bias),
        }
        return dict(block_size=self.block_size, **per_name.get(name, {}))


@dataclasses.dataclass(frozen=True)
class Strategy:
    name: str
    query: Callable[[jax.Array, PoolView], Query]
    # Optional PoolView fields this strategy reads, e.g. {"mc_logits"}; the runner computes only these.
    needs: frozenset = frozenset()
    mc_passes: int = 0  # with "mc_logits": how many stochastic passes


def _top_unlabelled(score, labels, budget: int):
    """The `budget` unlabelled rows with the highest score; ties go to the lower index."""
    score = jnp.where(labels >= 0, -jnp.inf, score)
    return jax.lax.top_k(score, budget)[1].astype(jnp.int32)


def make_random(*, budget: int, **_) -> Strategy:
    """Uniformly random unlabelled rows (a key-driven score, so no replacement)."""

    @jax.jit
    def query(key, view: PoolView) -> Query:
        score = jax.random.uniform(key, view.labels.shape)
        return Query(_top_unlabelled(score, view.labels, budget), {})

    return Strategy("random", query)


def predictive_entropy(logits):  # [N, C] -> [N]
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def make_score_strategy(name: str, score_fn: Callable[[jax.Array], jax.Array], budget: int) -> Strategy:
    """A deterministic strategy: the `budget` unlabelled rows with the highest
    `score_fn(logits [N, C]) -> [N]`."""

    @jax.jit
    def query(key, view: PoolView) -> Query:
        del key
        return Query(_top_unlabelled(score_fn(view.logits), view.labels, budget), {})

    return Strategy(name, query)


def make_entropy(*, budget: int, **_) -> Strategy:
    """Rows whose predictive distribution has the highest Shannon entropy
    (the original's EntropySampling: top-B of -sum p log p)."""
    return make_score_strategy("entropy", predictive_entropy, budget)


def _make_alfamix(alpha: str, **ablation):
    def factory(*, budget: int, num_classes: int, alfamix: AlfaMixSettings = AlfaMixSettings(), **_) -> Strategy:
        alfamix = dataclasses.replace(alfamix, **ablation)
        learned = LearnedAlphaConfig(learning_rate=alfamix.learned_learning_rate, iters=alfamix.learned_iters,
                                     l2_coef=alfamix.learned_l2_coef)
        select = make_alfamix_selector(
            budget=budget, num_classes=num_classes, alpha=alpha, compat=alfamix.compat,
            alpha_cap_step=alfamix.alpha_cap_step, learned=learned, block_size=alfamix.block_size,
            max_candidates=max(alfamix.max_candidates, budget), kmeans_max_iters=alfamix.kmeans_max_iters,
            diversity=alfamix.diversity, anchors=alfamix.anchors, max_anchors=alfamix.max_anchors,
        )

        def query(key, view: PoolView) -> Query:
            result = select(key, view.embeddings, view.labels, view.head_params)
            diagnostics = {k: result.diagnostics[k] for k in ("num_candidates", "num_filled", "caps_tried")}
            return Query(result.selected, diagnostics)

        return Strategy(f"alfamix[{alpha}]", query)

    return factory


# name -> factory(*, budget, num_classes, alfamix) -> Strategy
STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "random": make_random,
    "entropy": make_entropy,
    "alfamix": _make_alfamix("closed-form"),
    "alfamix_learned": _make_alfamix("learned"),
    "alfamix_random": _make_alfamix("random"),
    # The paper's ablations (closed form): diversification and anchors.
    "alfamix_random_pick": _make_alfamix("closed-form", diversity="random"),
    "alfamix_top_alpha": _make_alfamix("closed-form", diversity="top-alpha"),
    "alfamix_labelled_anchors": _make_alfamix("closed-form", anchors="labelled"),
}


def make_strategy(name: str, *, budget: int, num_classes: int, alfamix: AlfaMixSettings = AlfaMixSettings(),
                  baselines: BaselineSettings = BaselineSettings()):
    """Build the strategy called `name` (a key of STRATEGIES) for this budget."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy {name!r} is unknown; choose from {sorted(STRATEGIES)}")
    settings = {} if name.startswith("alfamix") else baselines.for_strategy(name)
    return STRATEGIES[name](budget=budget, num_classes=num_classes, alfamix=alfamix, **settings)


def _register_baselines() -> None:
    """The paper's baselines live in `alfamix_jax.strategies.baselines`, one module per family."""
    import importlib

    for module in ("uncertainty", "coreset", "badge", "gcnal", "dropquery", "cdal", "deepfool"):
        STRATEGIES.update(importlib.import_module(f"alfamix_jax.strategies.baselines.{module}").STRATEGIES)


_register_baselines()
