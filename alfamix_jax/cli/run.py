"""`alfamix-jax run`: run (or resume) an active-learning experiment from a config."""
import contextlib
import os
import signal
import sys
import time

from alfamix_jax.cli.common import enable_compile_cache


def add_parser(sub) -> None:
    run = sub.add_parser("run", help="run (or resume) an active-learning experiment from a config")
    run.add_argument("--config", required=True,
                     help="a shipped config name (demo, compare_digits, fashion_mnist_mlp, mnist_mlp, "
                     "cifar10_resnet18) or a .py file defining get_config(); a .py file is executed (trust it "
                     "as you would any code)")
    run.add_argument("--workdir", help="results.csv, picks.csv, checkpoints and plots go here; rerun to resume "
                     "(required unless --print-config)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set train.learning_rate=0.01 --set seeds=1,2")
    run.add_argument("--strategy", dest="only_strategies", action="append", metavar="NAME",
                     help="run only this strategy of the config (repeatable)")
    run.add_argument("--seed", dest="only_seeds", action="append", type=int, metavar="SEED",
                     help="run only this seed of the config (repeatable)")
    run.add_argument("--print-config", action="store_true",
                     help="print the resolved config (config.json's format) and exit; runs nothing")
    run.add_argument("--no-wait", action="store_true",
                     help="exit (code 2) instead of waiting when another process is running a run this one needs")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (or per-round lines)")
    run.add_argument("--no-report", action="store_true", help="do not print the report at the end")
    run.add_argument("--no-compile-cache", action="store_true",
                     help="do not use the persistent XLA compilation cache")


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises runner.Terminated (a KeyboardInterrupt), so a stopped run ends as Ctrl-C
    does: checkpoints and locks released in order, one line, exit code 143."""
    from alfamix_jax.experiment.runner import Terminated

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def command(args) -> int:
    from alfamix_jax.experiment.config import apply_overrides, load_config
    from alfamix_jax.experiment.runner import RunInterrupted, check_config, run_experiment

    config = apply_overrides(load_config(args.config), args.overrides)
    # Before the compile cache and JAX start: bad configs fail in well under a second. A printed
    # config reads no data, so it is printed on a machine without the data's files too.
    check_config(config, files=not args.print_config)
    if args.print_config:
        print(config.to_json())
        return 0
    if not args.workdir:
        raise ValueError("--workdir is required (where results and checkpoints go), unless --print-config")
    if not args.no_compile_cache:
        enable_compile_cache()
    start = time.perf_counter()
    try:
        with sigterm_as_interrupt():
            run_experiment(config, args.workdir, strategies=args.only_strategies, seeds=args.only_seeds,
                           progress=not args.no_progress, wait=not args.no_wait)
    except RunInterrupted as e:
        print(f"alfamix-jax run: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{config.name}: done in {time.perf_counter() - start:.1f} s; results in "
          f"{os.path.join(args.workdir, 'results.csv')}")
    if not args.no_report:
        from alfamix_jax.experiment.report import render_report

        print(render_report([args.workdir]))
    return 0
