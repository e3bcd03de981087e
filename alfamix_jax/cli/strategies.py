"""`alfamix-jax strategies`: every registered strategy, one line each."""
import textwrap


def add_parser(sub) -> None:
    sub.add_parser("strategies", help="list every registered strategy, one line each")


def summary(factory) -> str:
    """The first sentence of a factory's docstring (the registry's one-line description)."""
    doc = " ".join((getattr(factory, "__doc__", None) or "").split("\n\n")[0].split())
    sentence = doc.split(". ")[0].rstrip(".").replace(" (see the module docstring)", "")
    return textwrap.shorten(sentence, 100, placeholder="...") or "(no description)"


def command(args) -> int:
    from alfamix_jax.strategies import STRATEGIES

    width = max(map(len, STRATEGIES))
    for name in sorted(STRATEGIES):
        print(f"{name:<{width}}  {summary(STRATEGIES[name])}")
    return 0
