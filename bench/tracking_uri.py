"""Where a suite is tracked (bench.tracking): MLflow URIs, the tracking-server check, SQLite lock retries.

The URI is always explicit (``sqlite:///<absolute results>/mlflow.db`` unless given); a relative
``sqlite:///`` path is made absolute once; a server URI is checked at ``<uri>/health`` so a server that
is not running is a quick BenchError; SQLite "database is locked" beyond MLflow's 20 s busy timeout is
retried with backoff.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, TypeVar

from bench.errors import BenchError

T = TypeVar("T")

DISABLED_URIS = {"none", "off", "disabled", ""}
REMOTE_SCHEMES = {"http", "https", "databricks"}
LOCK_RETRIES = 6                          # attempts at an operation that hit "database is locked"


def default_tracking_uri(results: Path) -> str:
    """``sqlite:///<absolute results>/mlflow.db`` (four slashes before an absolute POSIX path)."""
    return "sqlite:///" + Path(results).expanduser().resolve().joinpath("mlflow.db").as_posix()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for other URIs and in-memory SQLite."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def normalise_uri(uri: str) -> str:
    """Make a relative ``sqlite:///`` path absolute (against the current directory, once)."""
    path = sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    query = uri.split("?", 1)[1] if "?" in uri else ""
    out = "sqlite:///" + path.resolve().as_posix()
    return f"{out}?{query}" if query else out


def check_server(uri: str, timeout: float = 10.0) -> None:
    """Raise BenchError unless an MLflow tracking server answers ``GET <uri>/health`` with 200."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http/https only)
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise BenchError(f"no MLflow tracking server answers at {uri} ({url}: {problem}). Start one, e.g. "
                     "`mlflow server --backend-store-uri sqlite:////abs/mlflow.db --host 127.0.0.1 --port 5000` "
                     "(or a postgresql:// backend), or leave --tracking-uri out for sqlite:///<results>/mlflow.db")


def is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def retry_locked(call: Callable[[], T], retries: int = LOCK_RETRIES, pause: float = 0.2) -> T:
    """Run `call`; on SQLite "database is locked" (after MLflow's own busy timeout) wait and retry.

    A locked write is rolled back by MLflow's session, so repeating it cannot duplicate
    anything. Every other error propagates at once.
    """
    for attempt in range(retries):
        try:
            return call()
        except Exception as exc:
            if not is_locked(exc) or attempt == retries - 1:
                raise
            time.sleep(pause * 2 ** attempt)
    raise AssertionError("unreachable")  # pragma: no cover
