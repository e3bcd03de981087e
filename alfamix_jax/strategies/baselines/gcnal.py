"""GCNAL: sequential GCN active learning (Caramalau, Bhattarai & Kim, CVPR 2021),
as the original ALFA-Mix repository runs it (query_strategies/gcn_sampling.py).

What the paper and its code do about the pool size (read in
razvancaramalau/Sequential-GCN-for-Active-Learning: config.py sets SUBSET =
10000; main.py shuffles the unlabelled list each cycle and keeps its first
SUBSET rows; selection_methods.py `query_samples` builds the graph over
`subset + labeled_set` and trains the GCN on it, binary labels 0 for the
subset and 1 for every labelled row, and picks among the subset only). The
ALFA-Mix repository's gcn_sampling.py does the same (subset_size = 10000,
np.random.choice of the unlabelled rows without replacement, graph over
subset + all labelled rows). So the rest of the pool never enters the graph;
we do the same, and the graph's size is bounded by subset + labelled rows,
not by the pool. (One difference between the two codes, not about the pool:
for CoreGCN, Caramalau et al.'s query_samples runs kCenterGreedy on the
backbone features of the graph's rows, overwriting the GCN's `feat`; the
ALFA-Mix repository runs furthest_first on the GCN's [h, z]. We follow the
ALFA-Mix repository.)

One query:
1. Nodes. A random subset of `subset_size` unlabelled rows (drawn with the key;
   when fewer rows are unlabelled, all of them) plus *every* labelled row,
   gathered into a graph of static size (`graph_nodes`; `node_capacities`:
   subset + 1024 * 4^k rows, the smallest that holds the labelled rows, picked
   by lax.switch because their count is traced). The node features are the
   embeddings, L2-normalised per row.
2. Graph. A = X X^T - I over the nodes; each column j divided by its sum
   d_j = sum_i A_ij; plus I:  adj = (X X^T - I) diag(1/d) + I  (the original's
   `aff_to_adj`).
3. GCN (the original's `GCN.forward`): h = relu(adj X W1 + b1) (hidden 128),
   dropout 0.3 on h while training, z = adj h w2 + b2 (one output), score =
   sigmoid(z). Trained full-batch for `train_steps` (200) Adam steps, lr 1e-3,
   L2 weight decay 5e-4 added to the gradient (torch `Adam(weight_decay=...)`,
   i.e. optax add_decayed_weights before adam), to tell labelled (target 1) from
   unlabelled (target 0) with the weighted BCE of `BCEAdjLoss`:
   -mean_{labelled} log s - lambda_loss * mean_{unlabelled} log(1 - s), lambda 1.2.
4. Pick, in eval mode (no dropout), among the subset only:
   - "core" (CoreGCN, the original's default `method`): greedy k-center
     (`furthest_first`) on the GCN features [h, z] (the third output of the
     original's forward, `cat((feat, x), 1)`), the labelled nodes being the
     initial centres;
   - "uncertain" (UncertainGCN): the `budget` subset rows whose score is
     closest to `s_margin` (0.1).

Registered names: "gcnal" (CoreGCN) and "gcnal_uncertain" (UncertainGCN).
Settings and defaults (all from the original's `GCNSampling.__init__` and the
200-step loop in its `query`; Caramalau et al.'s main.py uses the same):
method "core", subset_size 10000, hidden_units 128, dropout_rate 0.3,
learning_rate 1e-3, weight_decay 5e-4, lambda_loss 1.2, s_margin 0.1,
train_steps 200, block_size 4096 (k-center tiles).

Memory and work. The adjacency is never materialised, neither N x N nor
M x M (M = the graph's capacity, subset + room for the labelled rows). It is
a rank-D term plus a diagonal, so
    adj H = X (X^T (H / d)) - H / d + H        (rows of padding masked out),
which costs O(M*D*F) for H [M, F] and needs O(M*(D + F)) memory. adj X [M, D]
is computed once per query (O(M*D^2)), so a training step is one dense layer
(adj X) W1 plus a one-column propagation: O(M*D*hidden) work. Only the
subset's and the labelled rows' embeddings are gathered; the rest of the
pool costs nothing but the O(N) subset draw. With the paper's subset of
10000 and a few hundred labelled rows, a 60k pool trains on 11k rows (5x
less work than over the whole pool, which the previous version did with a
node mask). The k-center start runs in [subset, block_size] tiles over the
labelled rows only; each greedy step is CoreSet's lazy step.

Differences from the original, and why:
- The factorised adjacency above instead of the dense matrix (the same
  numbers up to float rounding; dense would be (10000 + L)^2 floats). The
  products run at Precision.HIGHEST so a GPU does not drop to TF32 (torch
  does not use TF32 for matmuls by default).
- Layer 1 computes (adj X) W1 rather than adj (X W1): equal in exact
  arithmetic, and adj X is then a constant of the query.
- A zero column sum d_j (the node's similarities to the other nodes sum to
  exactly 0, e.g. it is orthogonal to all of them) makes the original divide
  by zero and produce NaN; we give such a column weight 0 (the node keeps its
  own +I term). Post-ReLU embeddings have non-negative similarities, so d_j > 0
  unless the node is orthogonal to every other.
- The BCE uses log_sigmoid(z) and log_sigmoid(-z) rather than log(sigmoid(z)),
  which is the same value without the original's log(0) = -inf when a score
  saturates in float32. With no labelled (or no subset) nodes the original's
  mean over an empty set is NaN; ours is 0 for that term.
- The original also builds a middle layer `gc2` that its forward never uses
  (no gradient, so torch's Adam leaves it alone); we leave it out. The
  initialisation is the original's: U(-1/sqrt(out), 1/sqrt(out)) for the
  weights and biases of each layer (out = fan-out, as its `reset_parameters`).
- Randomness: the subset, the initial weights and the dropout masks come from
  the key (the original: np.random and torch's global generator).
- k-center: the original's `furthest_first` takes Euclidean distances in
  float64 (sklearn) and can pick a row again once every remaining distance is
  0 (argmax of an all-zero vector); we compare squared float32 distances on
  features centred on the subset mean (the same order up to near-ties) and never
  re-pick a chosen row. With no labelled node every start distance is +inf and
  the first pick is the first subset row, as in the original.
- UncertainGCN: the original takes `argsort(-|s - margin|)[-n:]` (the n rows
  closest to the margin; numpy's unstable sort breaks ties arbitrarily); ours
  is top_k of -|s - margin|, ties to the earlier subset position.
- The original's subset order is np.random.choice's; ours is the key's order
  of the unlabelled rows, so identical inputs give identical picks per key.
  The dropout masks are drawn per graph position ([M, hidden] from the step's
  key; threefry's counter mode makes the first rows the same whatever M is),
  so the capacity a query runs at does not change its result beyond float
  rounding of sums over the padding.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from alfamix_jax.selection.threefry import uniform_draws
from alfamix_jax.strategies.baselines.coreset import furthest_first  # the shared greedy k-center
from alfamix_jax.strategies.interface import PoolView, Query, Strategy

_METHODS = ("core", "uncertain")
LABELLED_BLOCK = 1024  # the smallest room for labelled rows in the graph (see node_capacities)
_dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def normalise_rows(x):
    """Row-wise L2 normalisation as torch.nn.functional.normalize (eps 1e-12). [N, D] -> [N, D]."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, 1e-12)


def inverse_degrees(x, nodes):
    """1 / d_j for the graph's columns, d_j = sum_{i in nodes} x_i.x_j - 1 (the
    column sums of X X^T - I over the nodes); 0 off the nodes and where d_j == 0.
    x: [N, D] (normalised rows), nodes: [N] bool -> [N]."""
    total = jnp.sum(jnp.where(nodes[:, None], x, 0.0), axis=0)  # [D]
    d = _dot(x, total) - 1.0  # [N]
    ok = nodes & (d != 0.0)
    return jnp.where(ok, 1.0 / jnp.where(ok, d, 1.0), 0.0)


def propagate(x, nodes, inv_deg, h):
    """adj @ h without forming adj = (X X^T - I) diag(1/d) + I over the nodes.
    x: [N, D], nodes: [N] bool, inv_deg: [N] (inverse_degrees), h: [N, F]
    -> [N, F], zero on the rows that are not nodes. O(N*D*F) work, O(N*(D+F)) memory."""
    scaled = inv_deg[:, None] * h  # [N, F], zero off the nodes
    out = _dot(x, _dot(x.T, scaled)) - scaled + h  # [N, F]
    return jnp.where(nodes[:, None], out, 0.0)


def init_gcn(key, dim: int, hidden: int):
    """The original's GraphConvolution init: weight and bias ~ U(-1/sqrt(out), 1/sqrt(out))."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    s1, s2 = 1.0 / hidden**0.5, 1.0
    return {
        "w1": jax.random.uniform(k1, (dim, hidden), jnp.float32, -s1, s1),
        "b1": jax.random.uniform(k2, (hidden,), jnp.float32, -s1, s1),
        "w2": jax.random.uniform(k3, (hidden, 1), jnp.float32, -s2, s2),
        "b2": jax.random.uniform(k4, (1,), jnp.float32, -s2, s2),
    }


def gcn_forward(params, x, adj_x, nodes, inv_deg, keep_mask=None, keep_prob: float = 1.0):
    """The two-layer GCN. adj_x = adj @ x [N, D]; keep_mask [N, H] bool (training) or None (eval).
    -> (z [N] pre-sigmoid score, feat [N, H] hidden activations after dropout)."""
    feat = jax.nn.relu(_dot(adj_x, params["w1"]) + params["b1"])  # [N, H]
    if keep_mask is not None:
        feat = jnp.where(keep_mask, feat / keep_prob, 0.0)
    z = propagate(x, nodes, inv_deg, _dot(feat, params["w2"]))[:, 0] + params["b2"][0]  # [N]
    return z, feat


def bce_adj_loss(z, labelled, unlabelled, lambda_loss: float):
    """The original's BCEAdjLoss on pre-sigmoid scores z [N] with node masks [N] bool."""

    def masked_mean(v, m):
        return jnp.sum(jnp.where(m, v, 0.0)) / jnp.maximum(jnp.sum(m), 1)

    return -masked_mean(jax.nn.log_sigmoid(z), labelled) - lambda_loss * masked_mean(
        jax.nn.log_sigmoid(-z), unlabelled)


def train_gcn(key, x, labelled, unlabelled, *, hidden_units: int = 128, dropout_rate: float = 0.3,
              learning_rate: float = 1e-3, weight_decay: float = 5e-4, lambda_loss: float = 1.2,
              train_steps: int = 200):
    """Fit the GCN on the graph of x's nodes (labelled | unlabelled) and score every row.
    x: [M, D] normalised rows (the graph's, see graph_nodes); labelled, unlabelled: [M]
    bool, disjoint. -> (z [M] eval-mode pre-sigmoid scores, feat [M, H] eval-mode hidden
    features, final training loss []). Rows that are not nodes carry meaningless values."""
    nodes = labelled | unlabelled
    inv_deg = inverse_degrees(x, nodes)
    adj_x = propagate(x, nodes, inv_deg, x)  # [N, D], constant for the query
    init_key, dropout_key = jax.random.split(key)
    params = init_gcn(init_key, x.shape[1], hidden_units)
    optimiser = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))
    keep_prob = 1.0 - dropout_rate

    def loss_fn(params, step):
        keep = None
        if dropout_rate > 0.0:
            keep = jax.random.bernoulli(jax.random.fold_in(dropout_key, step), keep_prob, (x.shape[0], hidden_units))
        z, _ = gcn_forward(params, x, adj_x, nodes, inv_deg, keep, keep_prob)
        return bce_adj_loss(z, labelled, unlabelled, lambda_loss)

    def step(i, carry):
        params, opt_state, _ = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, i)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    carry = (params, optimiser.init(params), jnp.zeros((), jnp.float32))
    params, _, loss = jax.lax.fori_loop(0, train_steps, step, carry)
    z, feat = gcn_forward(params, x, adj_x, nodes, inv_deg)
    return z, feat, loss


def sample_subset(key, labels, size: int):
    """`size` distinct unlabelled rows in a random order drawn from the key, and
    which are real (False where fewer than `size` rows are unlabelled; those
    slots come last). labels: [N] -> (idx [S] int32, valid [S] bool), S = min(size, N)."""
    size = min(size, labels.shape[0])
    score = jnp.where(labels < 0, uniform_draws(key, labels.shape[0]), -jnp.inf)
    idx = jax.lax.top_k(score, size)[1].astype(jnp.int32)
    return idx, labels[idx] < 0


def node_capacities(n: int, subset: int) -> tuple[int, ...]:
    """The static graph sizes a query compiles for: subset + LABELLED_BLOCK * 4^k rows,
    up to the pool size n. The labelled count is traced, so the query takes the
    smallest capacity that holds the subset and every labelled row (lax.switch):
    at most 4x the labelled part, never the pool, unless the labelled rows need it."""
    caps, k = [], 0
    while not caps or caps[-1] < n:
        caps.append(min(n, subset + LABELLED_BLOCK * 4**k))
        k += 1
    return tuple(caps)


def graph_nodes(idx, valid, labels, capacity: int):
    """The graph's rows in a fixed-size list: the real subset rows first (positions
    0 .. S' - 1, in the subset's order), then every labelled row in index order,
    then padding. idx, valid: [S] (sample_subset), labels: [N]
    -> rows [capacity] int32 pool indices, is_unlabelled, is_labelled [capacity] bool
    (both False on padding). Needs capacity >= S' + L (S' real subset rows, L labelled)."""
    n = labels.shape[0]
    (lab_idx,) = jnp.nonzero(labels >= 0, size=n, fill_value=0)  # [N] labelled rows first
    num_sub, num_lab = jnp.sum(valid, dtype=jnp.int32), jnp.sum(labels >= 0, dtype=jnp.int32)
    pos = jnp.arange(capacity, dtype=jnp.int32)
    from_subset = idx[jnp.minimum(pos, idx.shape[0] - 1)]
    from_labelled = lab_idx[jnp.clip(pos - num_sub, 0, n - 1)]
    rows = jnp.where(pos < num_sub, from_subset, from_labelled).astype(jnp.int32)
    return rows, pos < num_sub, (pos >= num_sub) & (pos < num_sub + num_lab)


def make_gcnal(*, budget: int, num_classes: int | None = None, method: str = "core", subset_size: int = 10000,
               hidden_units: int = 128, dropout_rate: float = 0.3, learning_rate: float = 1e-3,
               weight_decay: float = 5e-4, lambda_loss: float = 1.2, s_margin: float = 0.1, train_steps: int = 200,
               block_size: int = 4096, **_) -> Strategy:
    """GCNAL: CoreGCN (method="core", the original's default) or UncertainGCN
    (method="uncertain"); see the module docstring for the algorithm and memory.
    num_classes is unused (the GCN only tells labelled from unlabelled)."""
    del num_classes
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if subset_size < budget:
        raise ValueError(f"subset_size must be >= budget ({budget}), got {subset_size}")
    if hidden_units < 1 or train_steps < 0 or block_size < 1:
        raise ValueError(f"need hidden_units >= 1, train_steps >= 0, block_size >= 1; got {hidden_units}, "
                         f"{train_steps}, {block_size}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")

    def on_graph(capacity, gcn_key, idx, valid, view):
        """The GCN and the pick on a graph of `capacity` rows (see graph_nodes)."""
        rows, unlabelled, labelled = graph_nodes(idx, valid, view.labels, capacity)  # [M] each
        x = normalise_rows(view.embeddings[rows].astype(jnp.float32))  # [M, D]
        z, feat, loss = train_gcn(gcn_key, x, labelled, unlabelled, hidden_units=hidden_units,
                                  dropout_rate=dropout_rate, learning_rate=learning_rate,
                                  weight_decay=weight_decay, lambda_loss=lambda_loss, train_steps=train_steps)
        s = idx.shape[0]  # the subset's rows are positions 0 .. S' - 1 < S of the graph
        if method == "core":
            feats = jnp.concatenate([feat, z[:, None]], axis=1)  # [M, H + 1]
            picks = furthest_first(feats[:s], unlabelled[:s], feats, labelled, budget, block_size=block_size)
        else:
            closeness = -jnp.abs(jax.nn.sigmoid(z[:s]) - s_margin)  # [S]
            picks = jax.lax.top_k(jnp.where(unlabelled[:s], closeness, -jnp.inf), budget)[1]
        return rows[picks], loss

    @jax.jit
    def query(key, view: PoolView) -> Query:
        subset_key, gcn_key = jax.random.split(key)
        idx, valid = sample_subset(subset_key, view.labels, subset_size)  # [S], [S]
        caps = node_capacities(view.labels.shape[0], idx.shape[0])
        need = jnp.sum(valid, dtype=jnp.int32) + jnp.sum(view.labels >= 0, dtype=jnp.int32)
        branch = jnp.searchsorted(jnp.asarray(caps, jnp.int32), need)  # the smallest capacity >= need
        graphs = [functools.partial(on_graph, cap) for cap in caps]
        picks, loss = jax.lax.switch(branch, graphs, gcn_key, idx, valid, view)
        return Query(picks, {"gcn_loss": loss})

    return Strategy("gcnal" if method == "core" else "gcnal_uncertain", query)


def make_gcnal_uncertain(**settings) -> Strategy:
    """UncertainGCN: make_gcnal with method="uncertain"."""
    return make_gcnal(**{**settings, "method": "uncertain"})


STRATEGIES = {"gcnal": make_gcnal, "gcnal_uncertain": make_gcnal_uncertain}
