"""The one exception type for user errors (bad path, bad option, unreadable file), and the warnings
that are said once a process however often the code meets their cause."""
import warnings

_SAID: set[str] = set()


class BenchError(Exception):
    """A user error: says what is wrong and how to fix it. The CLI prints it and exits 2."""


def warn_once(message: str, stacklevel: int = 1) -> None:
    """``warnings.warn(message)`` the first time this process says `message`, nothing after (a run
    resolves an entry's config, and a report loads a suite, several times). Python's own "once"
    filter cannot do it: any ``catch_warnings`` block resets its registry."""
    if message not in _SAID:
        _SAID.add(message)
        warnings.warn(message, stacklevel=stacklevel + 1)


def brief(exc: BaseException, limit: int = 400) -> str:
    """``Type: message`` on one line, for a BenchError that wraps a library's exception: drivers
    (psycopg, Ray, torch's load_state_dict) raise messages of many lines, which the CLI's one-line
    ``bench: error:`` would break up; whitespace runs become one space, and past `limit` characters
    the rest is cut with "…" (the traceback, where one is recorded, keeps everything)."""
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"
