"""`alfamix-jax run`: run (or resume) an active-learning experiment from a config."""
import os
import time

from alfamix_jax.cli.common import enable_compile_cache


def add_parser(sub) -> None:
    run = sub.add_parser("run", help="run (or resume) an active-learning experiment from a config")
    run.add_argument("--config", required=True,
                     help="a shipped config name (demo, compare_digits, fashion_mnist_mlp, mnist_mlp, "
                     "cifar10_resnet18) or a .py file defining get_config()")
    run.add_argument("--workdir", required=True, help="results.csv, checkpoints and plots go here; rerun to resume")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set train.learning_rate=0.01 --set seeds=1,2")
    run.add_argument("--strategy", dest="only_strategies", action="append", metavar="NAME",
                     help="run only this strategy of the config (repeatable)")
    run.add_argument("--seed", dest="only_seeds", action="append", type=int, metavar="SEED",
                     help="run only this seed of the config (repeatable)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-report", action="store_true", help="do not print the report at the end")
    run.add_argument("--no-compile-cache", action="store_true",
                     help="do not use the persistent XLA compilation cache")


def command(args) -> int:
    from alfamix_jax.experiment.config import apply_overrides, load_config
    from alfamix_jax.experiment.runner import check_config, run_experiment

    config = apply_overrides(load_config(args.config), args.overrides)
    check_config(config)  # before the compile cache and JAX start: bad configs fail in well under a second
    if not args.no_compile_cache:
        enable_compile_cache()
    start = time.perf_counter()
    run_experiment(config, args.workdir, strategies=args.only_strategies, seeds=args.only_seeds,
                   progress=not args.no_progress)
    print(f"{config.name}: done in {time.perf_counter() - start:.1f} s; results in "
          f"{os.path.join(args.workdir, 'results.csv')}")
    if not args.no_report:
        from alfamix_jax.experiment.report import render_report

        print(render_report([args.workdir]))
    return 0
