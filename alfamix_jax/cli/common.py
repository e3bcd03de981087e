"""What every subcommand shares: option parsers and the persistent compilation cache."""
import argparse
import os

PROG = "alfamix-jax"


def positive_int(name, minimum=1):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {value}")
        return value

    return parse


def enable_compile_cache():
    """Reruns of a one-shot CLI call are dominated by compilation: keep
    compiled programs on disk (override with ALFAMIX_JAX_CACHE_DIR)."""
    import jax

    cache = os.environ.get("ALFAMIX_JAX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "alfamix-jax", "xla"
    )
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
