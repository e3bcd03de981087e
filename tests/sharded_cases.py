"""The pool and settings shared by the sharded tests and the two-process
worker, so both run exactly the same selection. Not a test module."""
import jax
from support import make_pool

from alfamix_jax import make_alfamix_selector, shard_pool

# More candidates than max_candidates: the subsample, k-means and the fill all run.
CASE = dict(seed=0, n=2003, dim=16, num_classes=5, labelled=80, sep=0.3, budget=40, block_size=128,
            max_candidates=256)


def case_pool(case=CASE):
    return make_pool(case["seed"], n=case["n"], dim=case["dim"], num_classes=case["num_classes"],
                     labelled=case["labelled"], sep=case["sep"])


def run_case(mesh, case=CASE, **settings):
    x, labels, _, head = case_pool(case)
    select = make_alfamix_selector(mesh=mesh, budget=case["budget"], num_classes=case["num_classes"],
                                   block_size=case["block_size"], max_candidates=case["max_candidates"], **settings)
    return select(jax.random.key(7), shard_pool(mesh, x), labels, head)
