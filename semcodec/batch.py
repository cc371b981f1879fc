"""Batch processing of many files: input expansion, output naming, parallel workers, progress, summary.

One bad file never stops a batch: its error is recorded and reported at the end,
and the exit status says whether anything failed. Each worker process loads the
models once (they are cached per process) and uses ``cores / jobs`` torch threads.

Stopping: Ctrl-C (SIGINT) or SIGTERM stops a batch at once. The parent hands out one
file at a time, so nothing new starts; the workers are terminated (their writes are
atomic, and the temporary file of a write cut short is removed), and the command exits
with 130 (SIGINT) or 143 (SIGTERM). Workers also die with their parent when it is
killed outright (SIGKILL): the kernel sends them SIGTERM (Linux), or they notice that
their parent is gone within half a second (elsewhere).
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

from .errors import InvalidInputError, SemcodecError

#: Suffixes of the image files that a folder contributes (compress inputs, and the training, calibration and
#: benchmark folders): the formats semcodec.imageio reads.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm",
                            ".pnm", ".avif", ".heic", ".heif", ".jxl", ".jp2", ".tga", ".ico"})
STREAM_SUFFIXES = frozenset({".smc"})


@dataclass(frozen=True)
class BatchItem:
    """One unit of work: read ``source``, write ``output``."""

    source: Path
    output: Path


@dataclass(frozen=True)
class BatchOutcome:
    """What happened to one item."""

    item: BatchItem
    ok: bool
    bytes_in: int = 0
    bytes_out: int = 0
    stream_bytes: int = 0       # size of the semcodec stream involved (output of compress, input of decompress)
    pixels: int = 0
    error: str | None = None
    notes: tuple[str, ...] = ()
    skipped: bool = False       # an existing output that verifies was kept (--skip-existing, a resumed run)
    detail: str = ""            # what -v/--verbose prints about the output (sizes, layers, rate)
    seconds: float = 0.0        # time spent on this file

    def describe(self) -> str:
        """One line about this file, as ``-v/--verbose`` prints it."""
        if not self.ok:
            return f"{self.item.source}: FAILED: {self.error}"
        if self.skipped:
            return f"{self.item.source} -> {self.item.output}: skipped (output exists)"
        return (f"{self.item.source} -> {self.item.output}: {self.detail or f'{self.bytes_out} bytes'}"
                + (f"; {self.seconds:.2f} s" if self.seconds else ""))


@dataclass(frozen=True)
class BatchSummary:
    """Totals over a batch."""

    files: int
    failed: list[BatchOutcome]
    bytes_in: int
    bytes_out: int
    bpp: float | None           # bits of all the streams over all their pixels (a tiny image weighs little)
    notes: tuple[str, ...] = ()
    skipped: int = 0

    def describe(self, quiet: bool = False) -> str:
        """The summary printed after a batch; ``quiet``: only the failures, one ``semcodec: error:`` line each."""
        if quiet:
            return "\n".join(f"semcodec: error: {o.item.source}: {o.error}" for o in self.failed)
        files = f"{self.files} file" + ("s" if self.files != 1 else "")
        lines = [f"{files}, {self.files - len(self.failed)} ok, {len(self.failed)} failed; "
                 f"{self.bytes_in} bytes in, {self.bytes_out} bytes out"
                 + (f", {self.bpp:.4f} bpp" if self.bpp is not None else "")
                 + (f"; {self.skipped} skipped (output exists)" if self.skipped else "")]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  FAILED {o.item.source}: {o.error}" for o in self.failed]
        return "\n".join(lines)


def files_in(folder: str | os.PathLike, suffixes: frozenset[str], recursive: bool = False,
             role: str = "folder") -> list[Path]:
    """The files of ``folder`` (and of its subfolders when ``recursive``) with one of ``suffixes``, sorted.

    ``role`` names the folder in the error (``"image folder"``, ``"--images"``).

    Raises:
        InvalidInputError: ``folder`` does not exist or is not a folder.
    """
    if not Path(folder).is_dir():
        raise InvalidInputError(f"{role} {folder} is not a folder" if Path(folder).exists()
                                else f"{role} {folder} does not exist")
    found = Path(folder).rglob("*") if recursive else Path(folder).iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in suffixes)


def expand_inputs(inputs: Sequence[str], suffixes: frozenset[str]) -> list[tuple[Path, Path]]:
    """Expand files, folders (recursively) and glob patterns into ``(file, relative path)`` pairs.

    The relative path is what output trees mirror: relative to the folder for folder
    inputs, the bare file name otherwise. A file named more than once (``photos`` and
    ``photos/a.jpg``, or ``a.jpg`` and ``./a.jpg``) is taken once, where it first appears.

    Raises:
        InvalidInputError: an input (file, folder or pattern) matches nothing, or '-' (stdin) is among them.
    """
    if "-" in inputs:
        raise InvalidInputError("'-' (stdin) cannot be combined with other inputs")
    found: list[tuple[Path, Path]] = []
    for spec in inputs:
        p = Path(spec)
        if p.is_dir():
            files = files_in(p, suffixes, recursive=True)
            if not files:
                raise InvalidInputError(f"{spec}: no {' '.join(sorted(suffixes))} files in this folder")
            found += [(f, f.relative_to(p)) for f in files]
        elif p.exists():
            found.append((p, Path(p.name)))
        elif glob.has_magic(spec):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True) if Path(m).is_file())
            if not matches:
                raise InvalidInputError(f"{spec}: no file matches this pattern")
            found += [(m, Path(m.name)) for m in matches]
        else:
            raise InvalidInputError(f"{spec}: no such file or folder")
    seen: set[str] = set()
    unique = []
    for file, rel in found:
        key = os.path.abspath(file)    # not resolve(): two links to one file are two inputs
        if key not in seen:
            seen.add(key)
            unique.append((file, rel))
    return unique


def plan_outputs(pairs: list[tuple[Path, Path]], output_dir: Path | None, suffix: str) -> list[BatchItem]:
    """Name each output: next to its input, or mirrored under ``output_dir``, with ``suffix``.

    ``photo.jpg`` becomes ``photo<suffix>``; when two inputs would share a name
    (``photo.jpg`` and ``photo.png``), both keep their own extension
    (``photo.jpg<suffix>``, ``photo.png<suffix>``).
    """
    targets = [(output_dir / rel) if output_dir is not None else source for source, rel in pairs]
    plain = [t.with_name(t.stem + suffix) for t in targets]
    clashes = {o for o in plain if plain.count(o) > 1}
    items = [BatchItem(source, t.with_name(t.name + suffix) if o in clashes else o)
             for (source, _), t, o in zip(pairs, targets, plain)]
    outputs = [i.output for i in items]
    if len(set(outputs)) != len(outputs):
        dup = next(o for o in outputs if outputs.count(o) > 1)
        raise InvalidInputError(f"two inputs would both be written to {dup}; give them separate folders")
    return items


def _init_worker(threads: int) -> None:
    """``threads`` torch threads in this worker, without importing torch before its work needs it."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)    # read when torch is first imported


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises :class:`KeyboardInterrupt`, so that the same
    cleanup runs (an atomic write removes its temporary file, a batch stops its workers); exit status 143."""

    exit_code = 143


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)      # one is enough: a second must not cut the cleanup short
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within: SIGTERM raises :class:`Terminated` in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _die_with_parent(parent: int) -> None:
    """Have this worker get SIGTERM when its parent dies, even by SIGKILL: the kernel's parent-death
    signal on Linux, a thread polling the parent's pid elsewhere."""
    try:
        import ctypes

        if not sys.platform.startswith("linux"):
            raise OSError("no prctl")
        PR_SET_PDEATHSIG = 1
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, daemon=True, name="semcodec-parent-watch").start()
    if os.getppid() != parent:                          # the parent died before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(conn, fn: Callable, threads: int, parent: int) -> None:
    """A worker process: ``fn(task)`` for each task the parent sends, until it sends None or goes away.

    Ctrl-C reaches every process of the terminal's group: the workers ignore SIGINT and let the parent
    decide. SIGTERM unwinds the task (an atomic write removes its temporary file) and ends the worker.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        _die_with_parent(parent)
        _init_worker(threads)
        while (task := conn.recv()) is not None:         # (forked workers share pipe ends: no EOF to wait for)
            try:
                reply = ("ok", fn(task))
            except Exception as e:  # noqa: BLE001 - an unexpected error fails this task, not the batch
                reply = ("error", f"unexpected error: {type(e).__name__}: {e}")
            conn.send(reply)
    except EOFError:                                    # the parent closed the pipe: no more tasks
        pass
    except (KeyboardInterrupt, OSError):                # terminated, or the parent went away
        sys.exit(143)


class _Worker:
    """One worker process, its end of the pipe and the task it is on (None: idle)."""

    def __init__(self, context, fn: Callable, threads: int) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, fn, threads, os.getpid()), daemon=True,
                                       name="semcodec-worker")
        self.process.start()
        child.close()
        self.task = None

    def give(self, task) -> None:
        self.task = task
        with contextlib.suppress(OSError):              # a dead worker: its pipe reports it at the next wait
            self.conn.send(task)

    def death(self) -> str:
        """Why the process ended, once it has."""
        self.process.join(1)
        code = self.process.exitcode
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"worker process killed by {signal.Signals(-code).name}"
        return f"worker process ended (exit status {code})" if code is not None else "worker process stopped answering"


T = TypeVar("T")
R = TypeVar("R")


def run_in_processes(fn: Callable[[T], R], tasks: Sequence[T], jobs: int, done: Callable[[T, R], None],
                     lost: Callable[[T, str], None], outputs: Callable[[T], Iterable[Path]] = lambda task: ()) -> None:
    """``fn(task)`` for every task in ``jobs`` worker processes; ``done(task, result)`` as each finishes.

    The parent gives each worker one task at a time. A task that raises, or whose worker dies (killed,
    out of memory), is ``lost(task, reason)``; a new worker replaces a dead one. When the parent is
    interrupted (Ctrl-C, SIGTERM: any exception), the workers are terminated at once (SIGTERM, then
    SIGKILL after half a second), the temporary files of the ``outputs(task)`` they were writing are
    removed, and the exception goes on.

    ``fn`` and the tasks must be picklable; workers are started as multiprocessing's default.
    """
    import multiprocessing
    from multiprocessing.connection import wait

    from .fsutil import temporary_files

    context = multiprocessing.get_context()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    waiting = list(reversed(tasks))                      # pop() hands them out in order
    workers: list[_Worker] = []

    def clean(task) -> None:
        for path in outputs(task):
            for tmp in temporary_files(path):
                tmp.unlink(missing_ok=True)

    def next_task(worker: _Worker) -> None:
        if waiting:
            worker.give(waiting.pop())
        else:
            worker.task = None

    try:
        for _ in range(min(jobs, len(tasks))):
            workers.append(_Worker(context, fn, threads))
            next_task(workers[-1])
        while busy := [w for w in workers if w.task is not None]:
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for w in busy:
                if w.conn not in ready and w.process.sentinel not in ready:
                    continue
                task = w.task
                try:
                    status, value = w.conn.recv()
                except (EOFError, OSError):              # the worker died with this task
                    workers.remove(w)
                    w.conn.close()
                    clean(task)
                    lost(task, w.death())
                    if waiting:
                        workers.append(_Worker(context, fn, threads))
                        next_task(workers[-1])
                    continue
                next_task(w)
                done(task, value) if status == "ok" else lost(task, value)
    except BaseException:
        _stop(workers)
        for w in workers:
            if w.task is not None:
                clean(w.task)
        raise
    for w in workers:                                    # all done: None ends each worker
        with contextlib.suppress(OSError):
            w.conn.send(None)
    for w in workers:
        w.process.join(5)
        w.conn.close()
        if w.process.is_alive():
            w.process.kill()
            w.process.join()


def _stop(workers: list[_Worker], grace: float = 0.5) -> None:
    """Terminate the workers: SIGTERM, and SIGKILL for those still alive after ``grace`` seconds."""
    for w in workers:
        with contextlib.suppress(OSError):
            w.process.terminate()
    deadline = time.monotonic() + grace
    for w in workers:
        w.process.join(max(0.0, deadline - time.monotonic()))
    for w in workers:
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        w.conn.close()


def run_batch(items: list[BatchItem], work: Callable[[BatchItem], BatchOutcome], jobs: int = 1,
              progress: bool = True, description: str = "files", verbose: bool = False) -> list[BatchOutcome]:
    """Run ``work`` on every item (in ``jobs`` processes), with a progress bar on stderr.

    ``work`` must be a picklable module-level callable that returns a :class:`BatchOutcome`
    and turns every :class:`SemcodecError` into a failed outcome. With ``verbose``, each
    outcome's line (:meth:`BatchOutcome.describe`) is printed as it arrives. Ctrl-C or
    SIGTERM stops the batch at once (see :func:`run_in_processes`) and propagates.
    """
    from tqdm import tqdm

    if jobs < 1:
        raise InvalidInputError(f"--jobs must be at least 1, got {jobs}")
    bar = tqdm(total=len(items), unit="file", desc=description, file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    outcomes: list[BatchOutcome] = []

    def done(item: BatchItem, outcome: BatchOutcome) -> None:
        outcomes.append(outcome)
        if verbose:
            tqdm.write(outcome.describe(), file=sys.stderr)
        bar.update()

    def lost(item: BatchItem, reason: str) -> None:
        done(item, BatchOutcome(item, False, error=f"worker failed: {reason}"))

    try:
        if jobs == 1 or len(items) <= 1:
            for item in items:
                done(item, work(item))
        else:
            run_in_processes(work, items, jobs, done, lost, outputs=lambda item: (item.output,))
    finally:
        bar.close()
    order = {item: i for i, item in enumerate(items)}
    return sorted(outcomes, key=lambda o: order[o.item])


def summarize(outcomes: list[BatchOutcome]) -> BatchSummary:
    """Totals: files, failures, bytes in and out, and the bpp of the streams: all their bits over all their
    pixels (a mean of per-file bpp would let a 1×1 image's hundreds of bits per pixel swamp a photo's)."""
    ok = [o for o in outcomes if o.ok]
    pixels = sum(o.pixels for o in ok if o.pixels)
    bits = sum(o.stream_bytes * 8 for o in ok if o.pixels)
    return BatchSummary(files=len(outcomes), failed=[o for o in outcomes if not o.ok],
                        bytes_in=sum(o.bytes_in for o in ok), bytes_out=sum(o.bytes_out for o in ok),
                        bpp=bits / pixels if pixels else None,
                        notes=_notes_naming_files(ok), skipped=sum(o.skipped for o in ok))


def _notes_naming_files(outcomes: list[BatchOutcome], shown: int = 3) -> tuple[str, ...]:
    """Each distinct note once; a note that only some of the files got names them (the first ``shown``)."""
    files_of: dict[str, list[Path]] = {}
    for o in outcomes:
        for note in o.notes:
            files_of.setdefault(note, []).append(o.item.source)
    lines = []
    for note, files in files_of.items():
        if len(files) == len(outcomes):
            lines.append(note)
            continue
        more = f" and {len(files) - shown} more" if len(files) > shown else ""
        names = ", ".join(str(f) for f in files[:shown]) + more
        lines.append(f"{names}: {note}")
    return tuple(lines)


def failure(item: BatchItem, error: SemcodecError) -> BatchOutcome:
    """A failed outcome carrying the error's one-line message."""
    return BatchOutcome(item, False, error=str(error))
