"""Every registered strategy through the one interface (`check_strategy`: exactly the budget,
int32, unique, unlabelled only, reproducible from the key, no recompilation when only the
labelled set changes); `check_strategy` and `check_query` catch broken strategies; the
registry's contract (`register_strategy`, the factory keywords, `BaselineSettings`)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alfamix_jax.selection.settings import SelectorSettings, SettingError
from alfamix_jax.strategies import (
    STRATEGIES,
    BaselineSettings,
    PoolView,
    Query,
    Strategy,
    check_query,
    check_strategy,
    make_strategy,
    register_strategy,
    top_unlabelled,
)

BUDGET, CLASSES = 12, 4


@pytest.fixture
def registry():
    """STRATEGIES as it was before the test, restored after it."""
    saved = dict(STRATEGIES)
    yield STRATEGIES
    STRATEGIES.clear()
    STRATEGIES.update(saved)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_invariants(name):
    # ALFA-Mix's second stage (k-means / all candidates) compiles the first round it is needed.
    check_strategy(name, budget=BUDGET, num_classes=CLASSES, max_new_compiles=1 if name.startswith("alfamix") else 0)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_factory_takes_the_registry_keywords_and_ignores_the_rest(name):
    strategy = STRATEGIES[name](budget=3, num_classes=CLASSES, alfamix=SelectorSettings(), mesh=None,
                                block_size=64, a_keyword_from_the_future=1)
    assert isinstance(strategy, Strategy)


# --------------------------------------------------------------------------- broken strategies are caught


def _factory(select):
    """A factory whose jitted query returns select(key, view) as the rows."""

    def factory(*, budget, **_):
        return jax.jit(lambda key, view: Query(select(key, view, budget), {}))

    return factory


def _unlabelled(view, budget):
    return top_unlabelled(jnp.zeros(view.labels.shape), view.labels, budget)


BROKEN = {
    "short batch": (_factory(lambda key, view, b: _unlabelled(view, b)[: b - 2]),
                    r"returned 10 rows in round 1; expected budget=12"),
    "repeated row": (_factory(lambda key, view, b: _unlabelled(view, b).at[1].set(_unlabelled(view, b)[0])),
                     r"returned row \d+ 2 times"),
    "labelled row": (_factory(lambda key, view, b: _unlabelled(view, b).at[0].set(jnp.argmax(view.labels))),
                     r"already labelled"),
    "float indices": (_factory(lambda key, view, b: _unlabelled(view, b).astype(jnp.float32)), r"float32 indices"),
    "outside the pool": (_factory(lambda key, view, b: _unlabelled(view, b).at[0].set(300)),
                         r"row 300 in round 1; expected rows of the pool, in \[0, 300\)"),
    "int64 rows": (lambda *, budget, **_: (lambda key, view: Query(np.asarray(_unlabelled(view, budget), np.int64),
                                                                   {})), r"int64 rows; expected int32"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_check_strategy_catches(case):
    factory, message = BROKEN[case]
    with pytest.raises(AssertionError, match=message):
        check_strategy(factory)


def test_check_strategy_catches_nondeterminism():
    rng = np.random.default_rng(0)  # not the key: two calls, two batches

    def factory(*, budget, **_):
        def query(key, view):
            free = np.flatnonzero(np.asarray(view.labels) < 0)
            return Query(jnp.asarray(rng.choice(free, budget, replace=False), jnp.int32), {})

        return Strategy("numpy_random", query)

    with pytest.raises(AssertionError, match="same key gave different rows"):
        check_strategy(factory)


def test_check_strategy_catches_recompiling_every_round():
    def factory(*, budget, **_):
        def query(key, view):  # the labelled count changes a shape: a new program every round
            labelled = np.flatnonzero(np.asarray(view.labels) >= 0)
            score = jax.jit(lambda rows: jnp.zeros(view.labels.shape).at[rows].add(1.0))(jnp.asarray(labelled))
            return Query(top_unlabelled(-score, view.labels, budget), {})

        return query

    with pytest.raises(AssertionError, match=r"compiled \d+ new program\(s\); expected at most max_new_compiles=0"):
        check_strategy(factory)


def test_check_strategy_catches_undeclared_mc_logits():
    def factory(*, budget, **_):
        return jax.jit(lambda key, view: Query(top_unlabelled(view.mc_logits.std(0).sum(-1), view.labels, budget),
                                               {}))

    with pytest.raises(AssertionError, match=r"fails without view.mc_logits .* needs=\{'mc_logits'\}"):
        check_strategy(factory)
    declared = lambda **kw: Strategy("mc", factory(**kw), needs={"mc_logits"}, mc_passes=12)  # noqa: E731
    assert check_strategy(declared).needs == frozenset({"mc_logits"})


def test_check_strategy_accepts_a_bare_query_factory_and_returns_the_strategy():
    strategy = check_strategy(_factory(lambda key, view, b: _unlabelled(view, b)), budget=5, num_classes=3)
    assert strategy.name == "factory" and strategy.needs == frozenset()


# --------------------------------------------------------------------------- check_query


def test_check_query_names_the_strategy_the_round_and_the_fault():
    labels = np.full(200, -1, np.int32)
    labels[:5] = 1
    good = Query(jnp.arange(100, 195, dtype=jnp.int32), {})
    with pytest.raises(ValueError, match=r"^strategy 'mine' returned 95 rows in round 3; expected budget=100$"):
        check_query("mine", good, budget=100, labels=labels, round_index=3)
    rows = check_query("mine", good, budget=95, labels=labels)
    assert rows.tolist() == list(range(100, 195))
    with pytest.raises(ValueError, match=r"strategy 'mine' returned a tuple; expected a Query"):
        check_query("mine", (good.selected, {}), budget=95, labels=labels)
    with pytest.raises(ValueError, match=r"diagnostics of type NoneType; expected a dict"):
        check_query("mine", Query(good.selected, None), budget=95, labels=labels)
    with pytest.raises(ValueError, match=r"selected of shape \(5, 19\); expected shape \(budget=95,\)"):
        check_query("mine", Query(good.selected.reshape(5, 19), {}), budget=95, labels=labels)
    with pytest.raises(ValueError, match=r"^strategy 'mine' returned row 3, which is already labelled; expected"):
        check_query("mine", Query(jnp.asarray([3, 7], jnp.int32), {}), budget=2, labels=labels)
    with pytest.raises(ValueError, match=r"row -1; expected rows of the pool, in \[0, 200\)"):
        check_query("mine", Query(jnp.asarray([7, -1], jnp.int32), {}), budget=2, labels=labels)


# --------------------------------------------------------------------------- the registry


def test_register_strategy_adds_a_name_that_make_strategy_builds(registry):
    seen = {}

    def make_first(*, budget, num_classes, alfamix, mesh, block_size, **_):
        seen.update(budget=budget, num_classes=num_classes, alfamix=alfamix, mesh=mesh, block_size=block_size)
        return jax.jit(lambda key, view: Query(top_unlabelled(jnp.zeros(view.labels.shape), view.labels, budget), {}))

    register_strategy("first-unlabelled_2", make_first)
    settings = SelectorSettings(block_size=64)
    strategy = make_strategy("first-unlabelled_2", budget=4, num_classes=3, alfamix=settings,
                             baselines=BaselineSettings(block_size=128))
    assert strategy.name == "first-unlabelled_2" and strategy.needs == frozenset()
    assert seen == dict(budget=4, num_classes=3, alfamix=settings, mesh=None, block_size=128)
    labels = jnp.asarray([0, -1, -1, 1, -1, -1, -1])
    view = PoolView(jnp.zeros((7, 2)), jnp.zeros((7, 3)), labels, None)
    assert np.asarray(strategy.query(jax.random.key(0), view).selected).tolist() == [1, 2, 4, 5]


def test_register_strategy_refuses_bad_names_factories_and_duplicates(registry):
    def make_a(**_):
        return make_strategy("random", budget=1, num_classes=2)

    def make_b(**_):
        return make_strategy("random", budget=1, num_classes=2)

    for name in ("", "my strategy", "a/b", 3, None):
        with pytest.raises(ValueError, match="name got .*; expected a non-empty string of letters, digits"):
            register_strategy(name, make_a)
    with pytest.raises(ValueError, match=r"register_strategy\('x'\): factory is a int; expected a function"):
        register_strategy("x", 3)
    with pytest.raises(ValueError, match="strategy 'random' is already registered .* replace=True"):
        register_strategy("random", make_a)
    register_strategy("mine", make_a)
    register_strategy("mine", make_a)  # the same factory again (a config file loaded twice): fine
    with pytest.raises(ValueError, match="strategy 'mine' is already registered"):
        register_strategy("mine", make_b)
    register_strategy("mine", make_b, replace=True)
    assert STRATEGIES["mine"] is make_b


def test_a_factory_returning_something_else_is_refused(registry):
    register_strategy("broken", lambda **_: 42)
    with pytest.raises(ValueError, match="strategy 'broken': its factory returned a int; expected a Strategy"):
        make_strategy("broken", budget=2, num_classes=2)


def test_strategy_checks_its_fields():
    query = lambda key, view: None  # noqa: E731
    with pytest.raises(ValueError, match="needs mc_logits with mc_passes=0"):
        Strategy("s", query, needs={"mc_logits"})
    with pytest.raises(ValueError, match=r"needs \['logits'\] are not optional PoolView fields"):
        Strategy("s", query, needs={"logits"})
    with pytest.raises(ValueError, match="query is a str"):
        Strategy("s", "query")
    assert Strategy("s", query, needs={"mc_logits"}, mc_passes=2).needs == frozenset({"mc_logits"})


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown.*register_strategy"):
        make_strategy("oracle", budget=1, num_classes=2)


def test_baseline_settings_reach_the_factories():
    settings = BaselineSettings(bald_passes=7)
    assert make_strategy("bald", budget=3, num_classes=CLASSES, baselines=settings).mc_passes == 7
    assert settings.for_strategy("dropquery")["passes"] == 3
    assert settings.for_strategy("gcnal")["subset_size"] == settings.gcnal_subset_size
    assert settings.for_strategy("random") == {"block_size": 4096}


@pytest.mark.parametrize("field,value,message", [
    ("block_size", 0, "block_size: got 0; expected an integer >= 1"),
    ("bald_passes", 2.0, "bald_passes: got 2.0; expected an integer >= 1"),
    ("gcnal_train_steps", True, "gcnal_train_steps: got True; expected an integer >= 1"),
    ("dropquery_dropout", 1.0, r"dropquery_dropout: got 1.0; expected a dropout rate in \[0, 1\)"),
    ("compat", "original", "compat: got 'original'; expected one of default, reference"),
    ("badge_include_bias", 1, "badge_include_bias: got 1; expected True or False"),
])
def test_baseline_settings_are_checked(field, value, message):
    with pytest.raises(SettingError, match=message) as raised:
        BaselineSettings(**{field: value})
    assert raised.value.field == field
