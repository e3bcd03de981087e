"""The strategy interface: `query(key, view: PoolView) -> Query`, wrapped in a `Strategy`,
and `check_query`, which the runner applies to every answer before it labels anything.

A strategy is a pure function of a PRNG key and a `PoolView` (the model's outputs on the
whole pool plus who is labelled). Shapes are fixed by the pool size, so a strategy compiles
once per budget, not once per round.
"""
from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

# PoolView fields a strategy must ask for in `Strategy.needs` (they cost extra passes over the pool).
OPTIONAL_VIEW_FIELDS = frozenset({"mc_logits"})


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
class Strategy:
    """A built strategy: `query(key, view) -> Query` and what its view must hold."""

    name: str
    query: Callable[[jax.Array, PoolView], Query]
    # Optional PoolView fields this strategy reads, e.g. {"mc_logits"}; the runner computes only these.
    needs: frozenset = frozenset()
    mc_passes: int = 0  # with "mc_logits": how many stochastic passes
    # Lines for the run's log, e.g. why this strategy runs on one device although a mesh is on.
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Strategy.name: got {self.name!r}; expected a non-empty string")
        if not callable(self.query):
            raise ValueError(f"Strategy {self.name!r}: query is a {type(self.query).__name__}; expected a function "
                             "query(key, view) -> Query")
        needs = frozenset(self.needs)
        if needs - OPTIONAL_VIEW_FIELDS:
            raise ValueError(f"Strategy {self.name!r}: needs {sorted(needs - OPTIONAL_VIEW_FIELDS)} are not optional "
                             f"PoolView fields; expected a subset of {sorted(OPTIONAL_VIEW_FIELDS)}")
        passes = self.mc_passes
        if isinstance(passes, bool) or not isinstance(passes, numbers.Integral) or passes < 0:
            raise ValueError(f"Strategy {self.name!r}: mc_passes got {passes!r}; expected an integer >= 0")
        if "mc_logits" in needs and passes < 1:
            raise ValueError(f"Strategy {self.name!r}: needs mc_logits with mc_passes={passes}; expected "
                             "mc_passes >= 1 (the number of MC-dropout passes to run)")
        object.__setattr__(self, "needs", needs)
        object.__setattr__(self, "notes", tuple(self.notes))


def check_query(strategy_name: str, query: Query, *, budget: int, labels, round_index: int | None = None
                ) -> np.ndarray:
    """The rows of `query` as a host int array, after checking them against the pool's
    `labels` [N] (-1 unlabelled): exactly `budget` unique integer rows in [0, N), none
    labelled. Otherwise ValueError naming the strategy, the round and what is wrong, e.g.
    "strategy 'mine' returned 95 rows in round 3; expected budget=100"."""
    in_round = "" if round_index is None else f" in round {round_index}"

    def fault(what: str, expected: str, why: str = "") -> ValueError:
        return ValueError(f"strategy {strategy_name!r} returned {what}{in_round}{why}; {expected}")

    if not isinstance(query, Query):
        raise fault(f"a {type(query).__name__}", "expected a Query(selected, diagnostics)")
    if not isinstance(query.diagnostics, Mapping):
        raise fault(f"diagnostics of type {type(query.diagnostics).__name__}",
                    "expected a dict (name -> scalar), {} if none")
    labels = np.asarray(labels)  # [N]
    selected = np.asarray(query.selected)  # [B]
    if selected.ndim != 1:
        raise fault(f"selected of shape {selected.shape}", f"expected shape (budget={budget},)")
    if selected.shape[0] != budget:
        raise fault(f"{selected.shape[0]} rows", f"expected budget={budget}")
    if not np.issubdtype(selected.dtype, np.integer):
        raise fault(f"{selected.dtype} indices", "expected an integer dtype (int32 pool rows)")
    n = labels.shape[0]
    outside = selected[(selected < 0) | (selected >= n)]
    if outside.size:
        raise fault(f"row {int(outside[0])}", f"expected rows of the pool, in [0, {n})")
    rows, counts = np.unique(selected, return_counts=True)
    if (counts > 1).any():
        raise fault(f"row {int(rows[counts > 1][0])} {int(counts[counts > 1][0])} times", "expected unique rows")
    labelled = selected[labels[selected] >= 0]
    if labelled.size:
        raise fault(f"row {int(labelled[0])}", "expected unlabelled rows (labels == -1)", ", which is already labelled")
    return selected
