"""The README's main job until the experiment runner exists: a small active
learning loop on scikit-learn's handwritten digits (1797 8x8 images that ship
inside scikit-learn, so nothing is downloaded), ALFA-Mix against random
selection, over a few seeds.

Model: a one-hidden-layer MLP (64 -> 64 ReLU = the embedding, then a linear
head), trained from the same initial weights every round with optax Adam on
the labelled rows (a mask over the fixed-size pool, so nothing recompiles as
the labelled set grows).
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alfamix_jax.heads import LinearHead, linear_head_apply
from alfamix_jax.select import make_alfamix_selector

HIDDEN = 64
TRAIN_STEPS = 300


def load_digits_split(seed: int = 0):
    """Digits scaled to [0, 1], split 80/20 by a seeded permutation."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = (x[order] / 16.0).astype(np.float32), y[order].astype(np.int32)
    cut = int(0.8 * len(y))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def init_mlp(key, dim_in: int, num_classes: int):
    k1, k2 = jax.random.split(key)
    return dict(
        w1=jax.random.normal(k1, (dim_in, HIDDEN)) * jnp.sqrt(2.0 / dim_in),
        b1=jnp.zeros(HIDDEN),
        head=LinearHead(jax.random.normal(k2, (num_classes, HIDDEN)) * jnp.sqrt(1.0 / HIDDEN), jnp.zeros(num_classes)),
    )


def embed(params, x):  # [N, 64] -> [N, HIDDEN]
    return jax.nn.relu(x @ params["w1"] + params["b1"])


def logits_fn(params, x):
    return linear_head_apply(params["head"], embed(params, x))


@jax.jit
def train(params, x, y, labelled):
    """Full-batch Adam on the labelled rows only. x: [N, 64]; labelled: [N] bool."""
    tx = optax.adam(1e-2)

    def loss(p):
        ce = optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, x), y)
        return jnp.sum(jnp.where(labelled, ce, 0.0)) / jnp.maximum(labelled.sum(), 1)

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=TRAIN_STEPS)
    return params


@jax.jit
def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(logits_fn(params, x), axis=-1) == y)


def random_select(key, labelled, budget: int):
    score = jnp.where(labelled, -jnp.inf, jax.random.uniform(key, labelled.shape))
    return jax.lax.top_k(score, budget)[1]


def run_strategy(strategy: str, seed: int, data, *, rounds: int, budget: int, initial: int):
    (x, y), (x_test, y_test) = data
    x, y, x_test, y_test = map(jnp.asarray, (x, y, x_test, y_test))
    root = jax.random.key(seed)
    init_key, start_key = jax.random.split(root)
    init = init_mlp(init_key, x.shape[1], 10)
    labelled = jnp.zeros(len(y), bool).at[jax.random.permutation(start_key, len(y))[:initial]].set(True)
    select = make_alfamix_selector(budget=budget, num_classes=10)
    rows = []
    for r in range(rounds):
        params = train(init, x, y, labelled)
        acc = float(accuracy(params, x_test, y_test))
        select_key = jax.random.fold_in(root, r)
        diag = {}
        if strategy == "alfamix":
            labels = jnp.where(labelled, y, -1)
            result = select(select_key, embed(params, x), labels, params["head"])
            chosen, diag = result.selected, result.diagnostics
        else:
            chosen = random_select(select_key, labelled, budget)
        rows.append(dict(round=r, labelled=int(labelled.sum()), acc=acc,
                         candidates=int(diag.get("num_candidates", -1)), filled=int(diag.get("num_filled", -1))))
        labelled = labelled.at[chosen].set(True)
    return rows


def run_demo(*, rounds: int = 6, budget: int = 20, initial: int = 20, seeds=(1, 10, 100)):
    start = time.perf_counter()
    data = load_digits_split()
    print(f"digits (scikit-learn, embedded): pool {len(data[0][1])}, test {len(data[1][1])}; "
          f"{initial} initial labels, +{budget} per round, {rounds} rounds, seeds {list(seeds)}")
    results = {s: [run_strategy(s, seed, data, rounds=rounds, budget=budget, initial=initial) for seed in seeds]
               for s in ("alfamix", "random")}
    print("\n| round | labelled | ALFA-Mix acc (mean +- std) | random acc (mean +- std) "
          "| ALFA-Mix candidates / filled |")
    print("|---|---|---|---|---|")
    for r in range(rounds):
        a = np.array([run[r]["acc"] for run in results["alfamix"]])
        b = np.array([run[r]["acc"] for run in results["random"]])
        c = np.mean([run[r]["candidates"] for run in results["alfamix"]])
        f = np.mean([run[r]["filled"] for run in results["alfamix"]])
        n = results["alfamix"][0][r]["labelled"]
        print(f"| {r} | {n} | {a.mean():.3f} +- {a.std():.3f} | {b.mean():.3f} +- {b.std():.3f} | {c:.0f} / {f:.0f} |")
    final = {s: np.mean([run[-1]["acc"] for run in rs]) for s, rs in results.items()}
    print(f"\nlast round: ALFA-Mix {final['alfamix']:.3f} vs random {final['random']:.3f}; "
          f"{time.perf_counter() - start:.1f} s")
    return results
