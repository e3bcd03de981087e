"""alfamix-jax: ALFA-Mix active-learning selection (Parvaneh et al., CVPR 2022) in JAX."""
from alfamix_jax.selection.anchors import compute_anchors
from alfamix_jax.selection.caps import exact_caps, make_caps, reference_caps
from alfamix_jax.selection.heads import LinearHead, linear_head_apply, pseudo_labels
from alfamix_jax.selection.kmeans import KMeansResult, kmeans, kmeans_plus_plus
from alfamix_jax.selection.mixing import LearnedAlphaConfig
from alfamix_jax.selection.selector import Selection, make_alfamix_selector
from alfamix_jax.selection.validation import validate_pool

__version__ = "0.1.0"

__all__ = [
    "KMeansResult",
    "LearnedAlphaConfig",
    "LinearHead",
    "Selection",
    "compute_anchors",
    "exact_caps",
    "kmeans",
    "kmeans_plus_plus",
    "linear_head_apply",
    "make_alfamix_selector",
    "make_caps",
    "pseudo_labels",
    "reference_caps",
    "validate_pool",
]
