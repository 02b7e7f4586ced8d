"""`python -m cpt_jax ...` runs the `cpt-jax` command line."""

from cpt_jax.main import run

run()
