"""`bench ARGS` called in the test's own process, its output captured: a CLI subprocess spends several
seconds importing torch, MLflow and scikit-learn before it does anything. Tests of what a process does
(its exit status on a signal, a kill, an uncaught traceback) still start one."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
from typing import Mapping
from unittest import mock


def bench(*argv: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI's `main(argv)` with its standard output and error captured, as a finished process; an
    exception other than the CLI's own handling propagates (a traceback the user would see)."""
    from bench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:           # argparse: a malformed command line
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(["bench", *argv], code, out.getvalue(), err.getvalue())
