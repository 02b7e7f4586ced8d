"""Experiment configs: each module's `get_config(variant)` returns a full experiment.

Configs import each other as a package (`from configs import demo`); `cpt-jax` puts this
package's parent on the import path when it loads a config file from here.
"""
