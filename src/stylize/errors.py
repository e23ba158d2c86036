"""Errors that are reported to the user as one line, never as a traceback."""


class StylizeError(Exception):
    """A failure the user can act on; the CLI prints the message and exits with code 1."""
