"""`bench cache`: outputs, leftovers and resumable states counted; clean removes the leftovers of
keys nobody writes (and resumable states only when asked), keeps a key whose lock is held."""
from __future__ import annotations

import json

from bench.cache import clean, usage
from bench.cli import main
from bench.executors.locking import data_lock, stage_lock


def _folder(path, nbytes):
    path.mkdir(parents=True)
    (path / "blob.bin").write_bytes(b"x" * nbytes)
    return path


def _cache(root):
    cache = root / "results" / "cache"
    done = _folder(cache / "segment" / "aaaa", 100)
    (done / "_stage.json").write_text(json.dumps({"key": "aaaa"}))
    leftovers = [_folder(cache / "segment" / ".bbbb.tmp-x1y2", 1000), _folder(cache / "segment" / ".aaaa.old-123", 10),
                 _folder(cache / "phantom" / ".public-smoke.tmp-zz", 50)]
    busy = _folder(cache / "pretrain" / ".cccc.tmp-q", 7)
    resume = _folder(cache / "pretrain" / ".dddd.resume", 300)
    _folder(cache / "phantom" / "public-smoke", 5)
    return cache, done, leftovers, busy, resume


def test_usage_counts_by_kind(tmp_path):
    cache, *_ = _cache(tmp_path)
    by = {u.stage: u for u in usage(cache)}
    assert set(by) == {"segment", "pretrain", "phantom"}                   # .locks is not a stage
    assert (by["segment"].outputs, by["segment"].output_bytes) == (1, 100 + len(json.dumps({"key": "aaaa"})))
    assert (len(by["segment"].leftovers), by["segment"].leftover_bytes) == (2, 1010)
    assert (len(by["pretrain"].resumable), by["pretrain"].resumable_bytes) == (1, 300)
    assert by["phantom"].outputs == 1 and len(by["phantom"].leftovers) == 1


def test_clean_spares_what_is_being_written_and_resumable_states_unless_asked(tmp_path):
    cache, done, leftovers, busy, resume = _cache(tmp_path)
    with stage_lock(cache, "pretrain", "cccc"):              # another process computes pretrain/cccc now
        would, kept, size = clean(cache, dry_run=True)
        assert sorted(would) == sorted(leftovers) and kept == [busy] and size == 1060
        assert all(p.exists() for p in leftovers)
        removed, kept, size = clean(cache)
    assert sorted(removed) == sorted(leftovers) and kept == [busy] and size == 1060
    assert not any(p.exists() for p in leftovers) and busy.exists() and resume.exists() and done.exists()
    with data_lock(cache):                                   # (the phantom lock does not block stage keys)
        removed, kept, _ = clean(cache, resumable=True)
    assert sorted(removed) == sorted([busy, resume]) and kept == []
    assert done.exists() and (cache / "phantom" / "public-smoke").exists()


def test_cli_status_and_clean(tmp_path, capsys):
    cache, *_ = _cache(tmp_path)
    results = str(tmp_path / "results")
    assert main(["cache", "--results", results]) == 0
    out = capsys.readouterr().out
    assert "segment" in out and "4 leftover folder(s)" in out and "bench cache clean" in out
    assert main(["cache", "--results", results, "--dry-run"]) == 2      # a clean option without clean
    assert "--dry-run belongs to `bench cache clean`" in capsys.readouterr().err
    assert main(["cache", "clean", "--results", results, "--dry-run"]) == 0
    assert "would remove 4 folder(s)" in capsys.readouterr().out
    assert main(["cache", "clean", "--results", results]) == 0
    assert "removed 4 folder(s)" in capsys.readouterr().out
    assert main(["cache", "--results", str(tmp_path / "nowhere")]) == 2
    assert "not a cache folder" in capsys.readouterr().err


def test_stale_phantoms_are_removed_only_when_asked_and_not_while_one_is_generated(tmp_path, capsys):
    from bench.cache import stale_phantoms
    from bench.data.provision import phantom_dir

    cache, done, leftovers, busy, resume = _cache(tmp_path)
    current = _folder(phantom_dir(cache, "public", "smoke", 0), 5)
    old_generator = _folder(cache / "phantom" / "public-smoke-seed0-v0.1.0-phantom-1.0", 20)
    unversioned = cache / "phantom" / "public-smoke"                     # from _cache: named before versions
    mine = _folder(cache / "phantom" / "mydata", 3)                       # not a phantom's name: never touched
    assert stale_phantoms(cache) == sorted([old_generator, unversioned])
    removed, _, _ = clean(cache)
    assert old_generator.exists() and unversioned.exists() and current.exists()
    with data_lock(cache):                                   # a phantom is being generated now
        removed, kept, _ = clean(cache, stale=True)
    assert sorted(kept) == sorted([old_generator, unversioned]) and old_generator.exists()
    results = str(tmp_path / "results")
    assert main(["cache", "--results", results]) == 0
    assert "2 cached phantom(s) of other osteobench or generator versions" in capsys.readouterr().out
    assert main(["cache", "clean", "--stale-phantoms", "--results", results]) == 0
    assert "removed 2 folder(s)" in capsys.readouterr().out
    assert not old_generator.exists() and not unversioned.exists() and current.exists() and done.exists()
    assert mine.exists()
    assert stale_phantoms(cache) == []


def test_waiting_for_a_stage_another_process_computes_is_said(tmp_path, capsys):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from bench.executors.locking import stage_lock\n"
        f"with stage_lock({str(tmp_path)!r}, 'segment', 'k1'):\n"
        "    print('held', flush=True); time.sleep(1.5)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with stage_lock(tmp_path, "segment", "k1"):
        pass
    holder.wait(timeout=60)
    assert "waiting for another process computing stage segment (k1)" in capsys.readouterr().err
    with stage_lock(tmp_path, "segment", "k1"):            # free: nothing said
        pass
    assert capsys.readouterr().err == ""
