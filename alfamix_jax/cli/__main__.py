"""`python -m alfamix_jax.cli`."""
import sys

from alfamix_jax.cli import main

sys.exit(main())
