"""bench.atomic: temporaries of dead writers on this host are removed by the next write of the same output."""
from __future__ import annotations

import socket
import subprocess
import sys

from bench.atomic import atomic_dir, atomic_write_text


def test_the_next_write_removes_what_dead_writers_of_this_host_left(tmp_path):
    root = tmp_path
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    left = root / f".out.tmp-{host}-{dead.pid}-abc"          # a SIGKILLed `bench predict --out out`
    live = root / f".out.tmp-{host}-1-xyz"                   # pid 1 is alive: its writer may still be at work
    elsewhere = root / f".out.tmp-another-host-{dead.pid}-q"  # another machine's pid says nothing here
    other = root / f".report.tmp-{host}-{dead.pid}-r"         # another output's
    file_left = root / f".metrics.json.tmp-{host}-{dead.pid}-f"
    for folder in (left, live, elsewhere, other):
        folder.mkdir()
        (folder / "part.txt").write_text("half")
    file_left.write_text("half")
    with atomic_dir(root / "out") as tmp:
        assert tmp.name.startswith(f".out.tmp-{host}-")
        (tmp / "done.txt").write_text("whole")
    assert (root / "out" / "done.txt").read_text() == "whole"
    assert not left.exists() and live.exists() and elsewhere.exists() and other.exists()
    atomic_write_text(root / "metrics.json", "{}")
    assert not file_left.exists() and (root / "metrics.json").read_text() == "{}"
