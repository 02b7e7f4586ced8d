"""The exception for a user's mistake: a bad config field, path, file, data or command line.

The command line reports a ConfigError in one line (`cpt-jax: error: ...`, exit 2). Every
other exception is a bug, or a fault of the machine, and keeps its traceback: library code
raises ConfigError only where it has checked the input and can name the field or file and
what is expected.
"""


class ConfigError(ValueError):
  """Bad input, named: raised where the input is checked, with what was expected."""
