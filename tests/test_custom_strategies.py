"""Your own strategy and selector parts, end to end: a config file registers a strategy and
names a diversity function from a helper module beside it; it runs, its config.json records
the function by name, a rerun loads it again and resumes; `check_strategy` passes it.
Config files load as modules of their own (unique per path, folder first on sys.path);
check_config refuses what config.json could not record; --set errors name the override."""
import dataclasses
import json
import sys

import pytest

from alfamix_jax.experiment.config import DataConfig, ExperimentConfig, apply_overrides, from_dict, load_config
from alfamix_jax.experiment.runner import check_config, run_experiment
from alfamix_jax.selection.settings import LearnedAlphaSettings, SelectorSettings
from alfamix_jax.strategies import STRATEGIES, BaselineSettings, check_strategy

QUIET = dict(progress=False, log=lambda *_: None)


def small_config(**changes) -> ExperimentConfig:
    """A config check_config accepts (nothing here loads its data)."""
    return dataclasses.replace(ExperimentConfig(data=DataConfig(name="digits"), seeds=(1,)), **changes)

HELPERS = '''"""Beside the config: a strategy factory and a diversity part."""
import jax
import jax.numpy as jnp

from alfamix_jax.strategies import Query, top_unlabelled


def make_least_sure(*, budget, **_):
    """The unlabelled rows whose largest logit is smallest."""

    @jax.jit
    def query(key, view):
        return Query(top_unlabelled(-view.logits.max(axis=-1), view.labels, budget), {})

    return query


def first_candidates(key, embeddings, candidates, budget):
    """Diversity part: the first `budget` candidates in row order (-1 past the last)."""
    return jnp.nonzero(candidates, size=budget, fill_value=-1)[0].astype(jnp.int32)
'''

CONFIG = '''"""A config beside its helper module."""
import jax

from HELPERS_MODULE import first_candidates, make_least_sure

from alfamix_jax.experiment.config import DataConfig, ExperimentConfig, LoopConfig, ModelConfig
from alfamix_jax.experiment.training import TrainConfig
from alfamix_jax.selection.settings import SelectorSettings
from alfamix_jax.strategies import Query, Strategy, register_strategy, top_unlabelled

register_strategy("least_sure", make_least_sure)


def make_last_rows(*, budget, **_):  # defined in the config file itself
    def query(key, view):
        return Query(top_unlabelled(jax.numpy.arange(view.labels.shape[0]), view.labels, budget), {})

    return Strategy("last_rows", jax.jit(query))


register_strategy("last_rows", make_last_rows)


def get_config():
    return ExperimentConfig(
        name="custom",
        data=DataConfig(name="digits", max_train=200, max_test=100),
        model=ModelConfig(name="mlp", embed_dim=16),
        train=TrainConfig(learning_rate=3e-3, batch_size=32, max_epochs=5),
        loop=LoopConfig(initial_size=20, budget=10, rounds=1),
        alfamix=SelectorSettings(diversity=first_candidates),
        strategies=("least_sure", "alfamix"),
        seeds=(1,),
    )
'''


@pytest.fixture
def sandbox(tmp_path):
    """A folder for config files and helper modules; afterwards the registry, sys.path and
    sys.modules are as they were (helper module names are unique per test anyway)."""
    strategies, path, modules = dict(STRATEGIES), list(sys.path), set(sys.modules)
    yield tmp_path
    STRATEGIES.clear()
    STRATEGIES.update(strategies)
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def _write(folder, helpers: str):
    """helpers.py and my_config.py in `folder`; returns the config's path."""
    folder.mkdir(exist_ok=True)
    (folder / f"{helpers}.py").write_text(HELPERS)
    path = folder / "my_config.py"
    path.write_text(CONFIG.replace("HELPERS_MODULE", helpers))
    return str(path)


def test_a_config_file_registers_a_strategy_beside_its_helpers_and_runs(sandbox):
    path = _write(sandbox / "exp", "helpers_run")
    config = load_config(path)
    assert sys.path[0] == str((sandbox / "exp").resolve())
    assert {"least_sure", "last_rows"} <= set(STRATEGIES)
    helpers = sys.modules["helpers_run"]
    assert config.alfamix.diversity is helpers.first_candidates
    check_strategy("least_sure")
    check_strategy("last_rows")
    check_strategy(helpers.make_least_sure, budget=7, num_classes=3)

    records = run_experiment(config, str(sandbox / "work"), **QUIET)
    assert [r["labelled"] for r in records] == [20, 30] * 2
    assert [r["strategy"] for r in records] == ["least_sure"] * 2 + ["alfamix"] * 2
    saved = json.loads((sandbox / "work" / "config.json").read_text())
    assert saved["alfamix"]["diversity"] == "helpers_run:first_candidates"
    assert saved["strategies"] == ["least_sure", "alfamix"]
    # Loaded again (the CLI resuming): the same registrations are fine, the workdir matches.
    again = load_config(path)
    assert again.to_dict() == config.to_dict()
    resumed = run_experiment(again, str(sandbox / "work"), **QUIET)
    assert [r["test_accuracy"] for r in resumed] == [r["test_accuracy"] for r in records]


def test_config_files_load_as_modules_unique_per_path(sandbox):
    for folder, name in (("a", "alpha"), ("b", "beta")):
        (sandbox / folder).mkdir()
        (sandbox / folder / "config.py").write_text(
            "from alfamix_jax.experiment.config import ExperimentConfig\n\n\n"
            f"def get_config():\n    return ExperimentConfig(name={name!r})\n")
    a = load_config(str(sandbox / "a" / "config.py"))
    b = load_config(str(sandbox / "b" / "config.py"))
    assert (a.name, b.name) == ("alpha", "beta")
    assert sys.path[0] == str((sandbox / "b").resolve()) and str((sandbox / "a").resolve()) in sys.path
    files = {m.__file__ for n, m in sys.modules.items() if n.startswith("alfamix_config_config_")}
    assert files == {str((sandbox / d / "config.py").resolve()) for d in ("a", "b")}
    a_again = load_config(str(sandbox / "a" / "config.py"))
    assert a_again.name == "alpha" and sys.path[0] == str((sandbox / "a").resolve())
    assert sys.path.count(str((sandbox / "a").resolve())) == 1


def test_a_config_file_error_names_the_file(sandbox):
    path = sandbox / "bad.py"
    path.write_text("from alfamix_jax.experiment.config import ExperimentConfig\n"
                    "from alfamix_jax.strategies import BaselineSettings\n\n\n"
                    "def get_config():\n    return ExperimentConfig(baselines=BaselineSettings(bald_passes=0))\n")
    with pytest.raises(ValueError, match=r"--config .*bad.py: get_config\(\): bald_passes: got 0; expected an integer"):
        load_config(str(path))


def test_function_parts_round_trip_through_json(sandbox):
    _write(sandbox / "rt", "helpers_rt")
    sys.path.insert(0, str(sandbox / "rt"))
    import helpers_rt

    config = ExperimentConfig(alfamix=SelectorSettings(diversity=helpers_rt.first_candidates, anchors="labelled",
                                                       learned=LearnedAlphaSettings(iters=7)),
                              baselines=BaselineSettings(bald_passes=3))
    data = json.loads(config.to_json())
    assert data["alfamix"]["diversity"] == "helpers_rt:first_candidates"
    assert data["alfamix"]["learned"]["iters"] == 7
    back = from_dict(data)
    assert back.alfamix.part("diversity") is helpers_rt.first_candidates
    assert back.alfamix.learned == LearnedAlphaSettings(iters=7) and back.baselines.bald_passes == 3
    assert back.to_dict() == config.to_dict()
    plain = ExperimentConfig(alfamix=SelectorSettings(alpha="learned", kmeans_block_size=64))
    assert from_dict(json.loads(plain.to_json())) == plain


def _nested_part():
    def inner(key, embeddings, candidates, budget):
        return candidates[:budget]

    return inner


@pytest.mark.parametrize("part,message", [
    (lambda key, x, c, b: c[:b], "is a lambda or a nested function"),
    (_nested_part(), "is a lambda or a nested function"),
    (dataclasses.replace, None),  # a module-level function that imports back: fine
])
def test_check_config_refuses_parts_config_json_cannot_record(part, message):
    config = small_config(alfamix=SelectorSettings(diversity=part))
    if message is None:
        check_config(config)
        return
    with pytest.raises(ValueError, match=rf"^alfamix.diversity: .*{message}.*module-level function"):
        check_config(config)


def test_check_config_refuses_a_part_that_imports_another_object(sandbox):
    _write(sandbox / "moved", "helpers_moved")
    sys.path.insert(0, str(sandbox / "moved"))
    import helpers_moved

    config = small_config(alfamix=SelectorSettings(diversity=helpers_moved.first_candidates))
    check_config(config)
    helpers_moved.first_candidates = helpers_moved.make_least_sure
    with pytest.raises(ValueError, match="alfamix.diversity: 'helpers_moved:first_candidates' imports another object"):
        check_config(config)


def test_check_config_checks_the_settings_sections():
    baselines = BaselineSettings()
    object.__setattr__(baselines, "bald_passes", 0)  # around the dataclass's own check
    with pytest.raises(ValueError, match="^baselines.bald_passes: got 0; expected an integer >= 1"):
        check_config(small_config(baselines=baselines))
    with pytest.raises(ValueError, match="^alfamix: got a dict; expected a SelectorSettings"):
        check_config(small_config(alfamix={"block_size": 64}))
    with pytest.raises(ValueError, match="'mine' is unknown; .* register it in the config file"):
        check_config(small_config(strategies=("mine",)))


@pytest.mark.parametrize("override,message", [
    ("alfamix.block_size=0", "--set alfamix.block_size=0: block_size: got 0; expected an integer >= 1"),
    ("alfamix.learned.iters=0", "--set alfamix.learned.iters=0: learned.iters: got 0; expected an integer >= 1"),
    ("alfamix.diversity=nowhere:nothing", "--set alfamix.diversity=nowhere:nothing: diversity: cannot import"),
    ("baselines.dropquery_dropout=1.5", "--set baselines.dropquery_dropout=1.5: dropquery_dropout: got 1.5"),
])
def test_set_errors_name_the_override(override, message):
    with pytest.raises(ValueError) as raised:
        apply_overrides(ExperimentConfig(), [override])
    assert str(raised.value).startswith(message)


def test_set_reaches_selector_settings():
    config = apply_overrides(ExperimentConfig(), ["alfamix.diversity=random", "alfamix.learned.iters=3",
                                                  "alfamix.kmeans_block_size=none", "baselines.bald_passes=9"])
    assert config.alfamix.diversity == "random" and config.alfamix.learned.iters == 3
    assert config.alfamix.kmeans_block_size is None and config.baselines.bald_passes == 9
