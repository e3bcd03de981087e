"""alfamix-jax: ALFA-Mix active-learning selection (Parvaneh et al., CVPR 2022) in JAX.

The selection core lives in `alfamix_jax.selection`; the strategy interface and the
paper's baselines in `alfamix_jax.strategies`; the experiment shell (loop, training,
data, configs, report) in `alfamix_jax.experiment`.
"""
from alfamix_jax.selection.anchors import compute_anchors
from alfamix_jax.selection.caps import exact_caps, make_caps, reference_caps
from alfamix_jax.selection.heads import LinearHead, linear_head_apply, pseudo_labels
from alfamix_jax.selection.kmeans import KMeansResult, kmeans, kmeans_plus_plus
from alfamix_jax.selection.mesh import ShardedPool, pool_mesh, put_rows, shard_pool
from alfamix_jax.selection.selector import Diagnostics, Selection, Selector, make_alfamix_selector
from alfamix_jax.selection.settings import LearnedAlphaSettings, SelectorSettings
from alfamix_jax.strategies import PoolView, Query, Strategy, check_strategy, register_strategy

__version__ = "0.1.0"

__all__ = [
    "Diagnostics",
    "KMeansResult",
    "LearnedAlphaSettings",
    "LinearHead",
    "PoolView",
    "Query",
    "Selection",
    "Selector",
    "SelectorSettings",
    "ShardedPool",
    "Strategy",
    "check_strategy",
    "compute_anchors",
    "exact_caps",
    "kmeans",
    "kmeans_plus_plus",
    "linear_head_apply",
    "make_alfamix_selector",
    "make_caps",
    "pool_mesh",
    "pseudo_labels",
    "put_rows",
    "reference_caps",
    "register_strategy",
    "shard_pool",
]
