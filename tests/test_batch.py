"""semcodec.batch: the summary's totals and the worker pool (results, lost workers, interruption)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from semcodec.batch import BatchItem, BatchOutcome, run_in_processes, summarize
from semcodec.fsutil import atomic_write, temporary_files


def test_summary_bpp_is_total_bits_over_total_pixels():
    tiny = BatchOutcome(BatchItem(Path("dot.png"), Path("dot.smc")), True, stream_bytes=73, pixels=1)
    photo = BatchOutcome(BatchItem(Path("photo.png"), Path("photo.smc")), True, stream_bytes=3000, pixels=240_000)
    failed = BatchOutcome(BatchItem(Path("bad.png"), Path("bad.smc")), False, error="not an image")
    summary = summarize([tiny, photo, failed])
    assert summary.bpp == pytest.approx((73 + 3000) * 8 / 240_001)       # 0.1024, not (584 + 0.1) / 2
    assert "0.1024 bpp" in summary.describe() and "mean" not in summary.describe()
    assert summarize([failed]).bpp is None
    # --quiet: the failures alone, one error line each.
    assert summary.describe(quiet=True) == "semcodec: error: bad.png: not an image"
    assert summarize([tiny]).describe(quiet=True) == ""


def test_outcome_lines():
    item = BatchItem(Path("a.png"), Path("out/a.smc"))
    line = BatchOutcome(item, True, detail="137 bytes", seconds=0.5).describe()
    assert line == "a.png -> out/a.smc: 137 bytes; 0.50 s"
    assert BatchOutcome(item, True, skipped=True).describe() == "a.png -> out/a.smc: skipped (output exists)"
    assert BatchOutcome(item, False, error="boom").describe() == "a.png: FAILED: boom"
    summary = summarize([BatchOutcome(item, True, skipped=True, stream_bytes=10, pixels=10)])
    assert "1 skipped (output exists)" in summary.describe()


# Work run in the worker processes (module level: the pool may pickle it).
def _task(task):
    kind, arg = task
    if kind == "exit":
        os._exit(arg)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "raise":
        raise RuntimeError(arg)
    if kind in ("slow", "stubborn"):                 # a write that takes a while (stubborn: ignoring SIGTERM)
        if kind == "stubborn":
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        atomic_write(arg, lambda tmp: (Path(tmp).write_bytes(b"partial"), time.sleep(60)))
    if kind == "write":
        atomic_write(arg, lambda tmp: Path(tmp).write_bytes(b"done"))
    return arg


def test_pool_reports_results_errors_and_dead_workers():
    done, lost = [], {}
    tasks = [("ok", "a"), ("exit", 3), ("ok", "b"), ("kill", None), ("raise", "boom"), ("ok", "c")]
    run_in_processes(_task, tasks, 2, lambda t, r: done.append(r), lambda t, why: lost.__setitem__(t[0], why))
    assert sorted(done) == ["a", "b", "c"]           # a dead worker takes only its own task with it
    assert lost == {"exit": "worker process ended (exit status 3)", "kill": "worker process killed by SIGKILL",
                    "raise": "unexpected error: RuntimeError: boom"}


@pytest.mark.parametrize("kind", ["slow", "stubborn"])
def test_pool_interrupted_stops_at_once_and_leaves_no_temporary_files(tmp_path, kind):
    """An interrupt in the parent (here: raised by the first result) terminates the workers mid-write:
    at once (a worker that ignores SIGTERM is killed after half a second) and without leftovers."""
    outputs = [tmp_path / f"{i}.out" for i in range(6)]
    tasks = [("write", outputs[0])] + [(kind, p) for p in outputs[1:]]
    started = []

    def done(task, result):
        while not temporary_files(outputs[1]):         # the other worker is inside its write
            time.sleep(0.05)
        started.append(time.monotonic())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_in_processes(_task, tasks, 2, done, lambda t, why: None, outputs=lambda task: (task[1],))
    assert time.monotonic() - started[0] < 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.out"]     # no other output, no temporary file
