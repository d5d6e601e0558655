"""Errors that the CLI turns into a one-line message and exit code 2."""


class UsageError(ValueError):
    """Bad input from the user: an impossible option, a missing label, an unknown config."""
