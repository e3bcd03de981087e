"""The baselines the paper compares ALFA-Mix with, behind the strategy interface
of `alfamix_jax.strategies` (each module exports a `STRATEGIES` dict of factories).

`alfamix_jax.strategies` registers every module here when it is imported; import it
first so that importing a baseline module directly does not meet a half-built registry.
"""
import alfamix_jax.strategies  # noqa: F401
