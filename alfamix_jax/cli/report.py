"""`alfamix-jax report`: tables, the pairwise t-test matrix and plots from workdirs."""


def add_parser(sub) -> None:
    report = sub.add_parser("report", help="tables, the pairwise t-test matrix and plots from run directories")
    report.add_argument("dirs", nargs="+", metavar="DIR", help="workdirs holding results.csv")
    report.add_argument("--out", default=None, help="where the PNG plots and report.md go (default: FIRST_DIR/report)")
    report.add_argument("--ddof", type=int, choices=(0, 1), default=1,
                        help="std of the paired differences: 1 textbook (default), 0 the original's np.std")
    report.add_argument("--allow-mixed", action="store_true",
                        help="merge DIRs even when their config.json differ beyond strategies and seeds (or one "
                        "has none); the report lists the differences")


def command(args) -> int:
    from alfamix_jax.experiment.report import render_report

    print(render_report(args.dirs, out_dir=args.out, ddof=args.ddof, allow_mixed=args.allow_mixed))
    return 0
