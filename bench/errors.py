"""The one exception type for user errors (bad path, bad option, unreadable file)."""


class BenchError(Exception):
    """A user error: says what is wrong and how to fix it. The CLI prints it and exits 2."""
