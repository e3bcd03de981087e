"""XLA:CPU's code generation settings, program by program, in one process: each program is
lowered once and compiled three ways, then run with the three executables alternating.

    .venv/bin/python experiments/benchmark_codegen.py [--repeats 3] [--out experiments/results/codegen/benchmark.md]

Settings (compiler options of one compile, not process flags):
- default: XLA's, what the library runs with;
- elemental: xla_cpu_use_fusion_emitters=False (XLA:CPU's elemental emitters, not its MLIR
  fusion emitters);
- tests: that and xla_backend_optimization_level=0 (LLVM unoptimised), what tests/conftest.py
  sets for the suite, which is compile-bound.
Per program: compile seconds, the median of --repeats steady calls, and whether the outputs are
the default's bits. Programs: the selector's search and finish on the 20k x 512 benchmark pool
(closed form, B=500) and its learned search (B=1000, cap step 0.03125); learned alpha at the
Fashion-MNIST protocol's size (60k x 256, B=100, cap step 0.2, the same generator); k-means on
the 1M case's 65,536 x 128 buffer (k=1000); CoreSet, BADGE, CDAL and BALD at 60k x 256 (B=100);
the MLP's fit (3 epochs, 1,000 labelled of 20k rows of 784).
"""
import argparse
import functools
import hashlib
import os
import statistics
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "experiments"))
from machine import describe  # noqa: E402

SETTINGS = {
    "default": {},
    "elemental": {"xla_cpu_use_fusion_emitters": False},
    "tests": {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0},
}


def _digest(tree):
    import jax

    return hashlib.sha256(b"".join(np.asarray(leaf).tobytes() for leaf in jax.tree.leaves(tree))).hexdigest()


def measure(name, jitted, args, static, kwargs, repeats):
    """A table row: compile s and steady ms per setting, and 'same bits' per setting. `static`:
    the keywords only the lowering takes, `kwargs` those of every call."""
    import jax

    compiled, compile_s = {}, {}
    for setting, options in SETTINGS.items():
        jax.clear_caches()  # a compile, not the executable an earlier call of the same program left
        lowered = jitted.lower(*args, **static, **kwargs)
        start = time.perf_counter()
        compiled[setting] = lowered.compile(compiler_options=options)
        compile_s[setting] = time.perf_counter() - start
    outputs = {s: jax.block_until_ready(c(*args, **kwargs)) for s, c in compiled.items()}  # warm-up
    times = {s: [] for s in SETTINGS}
    for _ in range(repeats):
        for setting, executable in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(executable(*args, **kwargs))
            times[setting].append(time.perf_counter() - start)
    reference = _digest(outputs["default"])
    row = [name]
    row += [f"{compile_s[s]:.2f}" for s in SETTINGS]
    row += [f"{1e3 * statistics.median(times[s]):.1f}" for s in SETTINGS]
    row += ["yes" if _digest(outputs[s]) == reference else "no" for s in list(SETTINGS)[1:]]
    print(" | ".join(row), flush=True)
    return row


def selector_programs(name, selector, key, emb, labels, head, finish):
    """(name, jitted, args, static keywords, keywords) of the selector's search and, with
    `finish`, its finish stage."""
    import jax

    from alfamix_jax.selection import stages

    search_args = (key, emb, labels, head, emb, labels)
    programs = [(f"{name}: search", selector._search, search_args, {}, {})]
    if finish:
        found, summary = selector._search(*search_args)
        count = int(jax.device_get(summary)[0])
        n = emb.shape[0]
        sizing = stages.kmeans_sizing(selector.plan, count, pool_size=n)
        programs.append((f"{name}: finish ({count} candidates)", selector._finish["diversify"],
                         (key, emb, labels, found), dict(pool_size=n, kmeans_sizing=sizing), dict(buffer=None)))
    return programs


def pool(n, labelled, dim):
    """The benchmark pool generator's n x dim pool on the device: embeddings, labels, head."""
    from benchmark_selection import POOL_SEED, POOL_SEP, make_pool, pool_on_device

    return pool_on_device(make_pool(POOL_SEED, n, labelled, dim, 10, POOL_SEP))


def programs():
    import jax
    import jax.numpy as jnp
    from benchmark_kmeans import CASES, make_buffer
    from benchmark_selection import POOL_LABELLED
    from benchmark_strategies import build_view
    from flax import nnx

    from alfamix_jax import make_alfamix_selector
    from alfamix_jax.experiment.models import make_model
    from alfamix_jax.experiment.training import TrainConfig, make_trainer, min_correct_to_stop
    from alfamix_jax.selection import kmeans
    from alfamix_jax.strategies import make_strategy

    key = jax.random.key(0)
    emb, labels, head = pool(20000, POOL_LABELLED, 512)
    closed = make_alfamix_selector(budget=500, num_classes=10, alpha_cap_step=0.2)
    yield from selector_programs("20k x 512, closed form", closed, key, emb, labels, head, True)
    learned = make_alfamix_selector(budget=1000, num_classes=10, alpha_cap_step=0.03125, alpha="learned")
    yield from selector_programs("20k x 512, learned", learned, key, emb, labels, head, False)
    emb, labels, head = pool(60000, 100, 256)
    fmnist = make_alfamix_selector(budget=100, num_classes=10, alpha_cap_step=0.2, alpha="learned")
    yield from selector_programs("60k x 256, learned", fmnist, key, emb, labels, head, True)

    case = CASES["1M-buffer"]
    sizing = kmeans.sizing(case["n_valid"], case["k"], case["m"])
    fn = jax.jit(functools.partial(kmeans.kmeans, k=case["k"], **sizing._asdict()))
    yield "k-means, 65,536 x 128, k=1000", fn, (jax.random.key(1), jnp.asarray(make_buffer(case)),
                                                jnp.int32(case["n_valid"])), {}, {}
    view = build_view(60000, 256, 10, 300, 5)
    for name in ("coreset", "badge", "cdal", "bald"):
        yield f"{name}, 60k x 256", jax.jit(make_strategy(name, budget=100, num_classes=10).query), (key, view), {}, {}

    rng = np.random.default_rng(0)
    n = 20000
    x, y = rng.normal(size=(n, 784)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32)
    mask = np.zeros(n, bool)
    mask[:1000] = True
    trainer = make_trainer(make_model("mlp", input_shape=(784,), num_classes=10, rngs=nnx.Rngs(0)),
                           TrainConfig(batch_size=64, max_epochs=3), pool_size=n, max_labelled=1000)
    args = trainer._put((trainer.init_state(), jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask), key))
    stop = trainer._put(jnp.asarray(min_correct_to_stop(trainer.cfg.stop_accuracy, 1000), jnp.int32))
    yield "MLP fit, 3 epochs", trainer._fit, (*args, stop), {}, {}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the table there (markdown)")
    args = parser.parse_args()
    names = list(SETTINGS)
    header = ["program"] + [f"compile s ({s})" for s in names] + [f"steady ms ({s})" for s in names]
    header += [f"same bits ({s})" for s in names[1:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    print(" | ".join(header), flush=True)
    start, load = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()[0]
    for name, jitted, call_args, static, kwargs in programs():
        lines.append("| " + " | ".join(measure(name, jitted, call_args, static, kwargs, args.repeats)) + " |")
    lines += ["", f"{start} to {time.strftime('%H:%M UTC', time.gmtime())}, load average {load:.2f} at the "
              f"start; {describe()}; medians of {args.repeats} calls."]
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
