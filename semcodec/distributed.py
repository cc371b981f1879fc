"""Batch commands at dataset scale: ``--engine ray`` and ``--shards N``.

The files of a batch are grouped into tasks (a few files each, about eight tasks per
worker, or one task per shard). With ``--engine ray`` they run as Ray tasks, ``--jobs``
at a time (default: one per CPU of the cluster). Ray keeps its worker processes
between tasks, so each process loads the codec model once (models are cached per
process) and reuses it for every later task. Workers read the inputs and write the
outputs themselves, so on a cluster every node must see the same paths (a shared
filesystem). The driver only streams the outcomes back (``ray.wait``), drives one
progress bar and prints the same summary as local mode.

Runs are resumable and tolerate lost workers:

* an output that already exists and verifies (the stream parses and its CRCs hold; a
  PNG's chunk CRCs; a tokens file parses; a shard lists the same inputs and each of
  its rows verifies) is kept, not recomputed; with ``--force`` only outputs this very
  run wrote are kept (so a retried task never writes a file twice);
* outputs are written atomically (temporary file + rename), so a dead worker leaves
  no partial file behind;
* a task whose worker process dies is retried in another process (Ray's task
  ``max_retries``); if a task keeps killing its worker, its files are retried one
  by one, so one poisonous file fails alone;
* a bad input file is reported in the summary and the others proceed.

``--shards N`` writes Parquet files ``part-00000-of-0000N.parquet`` instead of one
output per file (see :data:`SHARD_COLUMNS`); it works with both engines.

Ray and pyarrow are optional (``pip install -e ".[ray]"``) and imported on first use.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from .batch import BatchItem, BatchOutcome, failure, plan_outputs
from .errors import InvalidInputError, SemcodecError

INSTALL_HINT = 'pip install -e ".[ray]"'
#: Environment variables the workers inherit from the driver (model and cache locations).
FORWARDED_ENV_PREFIXES = ("SEMCODEC_", "HF_", "TORCH_HOME", "XDG_CACHE_HOME")
#: Tasks submitted per worker slot: one running, one queued, so no worker waits for the driver.
IN_FLIGHT_PER_WORKER = 2
#: Ray retries a task this many times after its worker died (then its files are retried alone).
MAX_TASK_RETRIES = 2
#: Columns of the Parquet shards, by kind; every shard also stores its list of inputs in its metadata.
SHARD_COLUMNS = {
    "streams": "path (input path relative to its folder), stream (the .smc bytes), width, height, bpp",
    "tokens": "path, tokens (a safetensors file: tokens (N, D), positions + metadata, as `semcodec tokens` writes), "
              "num_tokens, dim, grid_h, grid_w, width, height, model",
}


def require(module: str):
    """Import an optional dependency of the ray extra, or fail with the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InvalidInputError(f"this needs the optional '{module}' package; install it with {INSTALL_HINT}") from None


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Shard:
    """One Parquet shard: the inputs it holds, in order, and their names in it."""

    path: Path
    items: tuple[BatchItem, ...]      # source -> shard path (for the summary)
    names: tuple[str, ...]            # relative input paths (posix), the shard's ``path`` column


@dataclass(frozen=True)
class _Task:
    fn: Callable                      # fn(payload) -> list[BatchOutcome], one per index
    payload: object                   # list of BatchItems, or a Shard
    indices: tuple[int, ...]          # positions in the batch of the outcomes fn returns
    splittable: bool                  # after a lost worker, retry each item alone


def run_items(items: list[BatchItem], work: Callable[[BatchItem], BatchOutcome]) -> list[BatchOutcome]:
    """Run ``work`` on each item (in a worker); an unexpected error fails that item only."""
    outcomes = []
    for item in items:
        try:
            outcomes.append(work(item))
        except Exception as e:  # noqa: BLE001 - one file's bug must not take its task's other files along
            outcomes.append(BatchOutcome(item, False, error=f"unexpected error: {type(e).__name__}: {e}"))
    return outcomes


def plan_shards(pairs: list[tuple[Path, Path]], out_dir: Path, count: int) -> list[Shard]:
    """Split the inputs, in order, into ``count`` contiguous shards (fewer when there are fewer files)."""
    count = max(1, min(count, len(pairs)))
    shards = []
    for k in range(count):
        part = pairs[k * len(pairs) // count:(k + 1) * len(pairs) // count]
        path = out_dir / f"part-{k:05d}-of-{count:05d}.parquet"
        shards.append(Shard(path, tuple(BatchItem(s, path) for s, _ in part), tuple(r.as_posix() for _, r in part)))
    return shards


# --------------------------------------------------------------------------- shards
def _schema(kind: str):
    pa = require("pyarrow")
    if kind == "streams":
        fields = [("path", pa.string()), ("stream", pa.binary()), ("width", pa.int32()), ("height", pa.int32()),
                  ("bpp", pa.float64())]
    else:
        fields = [("path", pa.string()), ("tokens", pa.binary()), ("num_tokens", pa.int32()), ("dim", pa.int32()),
                  ("grid_h", pa.int32()), ("grid_w", pa.int32()), ("width", pa.int32()), ("height", pa.int32()),
                  ("model", pa.string())]
    return pa.schema(fields)


def stream_row(item: BatchItem, options: dict) -> tuple[dict, BatchOutcome]:
    """Compress one image into a row of a streams shard."""
    from . import api

    result = api.compress_image(item.source, **options)
    row = {"stream": result.data, "width": result.width, "height": result.height, "bpp": result.bpp}
    return row, BatchOutcome(item, True, bytes_in=item.source.stat().st_size, bytes_out=len(result.data),
                             stream_bytes=len(result.data), pixels=result.width * result.height, notes=result.notes)


def tokens_row(item: BatchItem, calibration: Path | None) -> tuple[dict, BatchOutcome]:
    """Decode layer 0 of one stream into a row of a tokens shard."""
    from .cli.io import read_input_bytes
    from .layers.semantic import decode_tokens

    data = read_input_bytes(item.source)
    tokens = decode_tokens(data, calibration=calibration)
    encoded = tokens.to_bytes()
    (n, d), (gh, gw), (w, h) = tuple(tokens.tokens.shape), tokens.grid, tokens.image_size
    row = {"tokens": encoded, "num_tokens": n, "dim": d, "grid_h": gh, "grid_w": gw, "width": w, "height": h,
           "model": tokens.model}
    return row, BatchOutcome(item, True, bytes_in=len(data), bytes_out=len(encoded), stream_bytes=len(data),
                             pixels=w * h)


def read_shard(data: bytes, kind: str, verify_rows: bool = True):
    """Parse a shard (bytes of a Parquet file); returns ``(table, inputs listed in its metadata)``.

    With ``verify_rows``, also checks every row's payload (streams: header and CRCs; tokens: safetensors).

    Raises:
        ValueError (or a pyarrow / semcodec error): not a readable shard of this kind.
    """
    pa = require("pyarrow")
    pq = require("pyarrow.parquet")
    from .cli.jobs import verify_stream, verify_tokens

    table = pq.read_table(pa.BufferReader(data))
    meta = json.loads((table.schema.metadata or {}).get(b"semcodec", b"{}"))
    if meta.get("kind") != kind:
        raise ValueError(f"not a semcodec {kind} shard")
    if verify_rows:
        verify = verify_stream if kind == "streams" else verify_tokens
        for payload in table.column("stream" if kind == "streams" else "tokens").to_pylist():
            verify(payload)
    return table, list(meta.get("inputs", []))


def run_shard(shard: Shard, kind: str, make_row: Callable, force: bool, resume: float) -> list[BatchOutcome]:
    """Write one shard (in a worker): one row per input that worked; one outcome per input.

    A shard that exists and verifies for the same inputs is kept. One that holds other
    inputs (from a run over other files) is replaced only with ``force``.
    """
    from .cli.jobs import kept_output
    from .fsutil import atomic_write

    def verified(data: bytes):
        table, inputs = read_shard(data, kind)
        if inputs != list(shard.names) or table.column("path").to_pylist() != list(shard.names):
            raise ValueError("other inputs")
        return table

    kept = kept_output(shard.path, verified, force, resume)
    if kept is not None:
        rows = verified(kept).to_pylist()
        payload = "stream" if kind == "streams" else "tokens"
        return [BatchOutcome(item, True, bytes_in=_size(item.source), bytes_out=len(r[payload]),
                             stream_bytes=len(r[payload]) if kind == "streams" else _size(item.source),
                             pixels=r["width"] * r["height"], skipped=True) for item, r in zip(shard.items, rows)]
    if not force and shard.path.exists():
        with contextlib.suppress(Exception):
            if read_shard(shard.path.read_bytes(), kind, verify_rows=False)[1] != list(shard.names):
                error = InvalidInputError(f"{shard.path} holds other inputs (from a run over other files); "
                                          "use --force to replace it, or another -o folder")
                return [failure(item, error) for item in shard.items]
    rows, outcomes = [], []
    for item, name in zip(shard.items, shard.names):
        try:
            row, outcome = make_row(item)
            rows.append({"path": name} | row)
        except SemcodecError as e:
            outcome = failure(item, e)
        except Exception as e:  # noqa: BLE001 - as in run_items
            outcome = BatchOutcome(item, False, error=f"unexpected error: {type(e).__name__}: {e}")
        outcomes.append(outcome)
    pa, pq = require("pyarrow"), require("pyarrow.parquet")
    meta = {"kind": kind, "inputs": list(shard.names)}
    table = pa.Table.from_pylist(rows, schema=_schema(kind).with_metadata({"semcodec": json.dumps(meta)}))
    shard.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(shard.path, lambda tmp: pq.write_table(table, tmp))
    except OSError as e:
        error = InvalidInputError(f"cannot write {shard.path}: {e.strerror or e}")
        return [failure(item, error) for item in shard.items]
    return outcomes


def _check_other_shards(out_dir: Path, names: set[str], force: bool) -> None:
    """Shards of a plan with another N in the folder would be read together with these: refuse, or (--force) remove."""
    others = sorted(p for p in out_dir.glob("part-*-of-*.parquet") if p.name not in names) if out_dir.is_dir() else []
    if others and not force:
        raise InvalidInputError(f"{out_dir} holds {len(others)} shard(s) of another --shards count ({others[0].name}, "
                                "...); use another folder, or --force to replace them")
    for p in others:
        p.unlink()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# --------------------------------------------------------------------------- engines
def run_distributed(pairs: list[tuple[Path, Path]], out_dir: Path | None, suffix: str,
                    work: Callable[[BatchItem], BatchOutcome], *, engine: str = "ray", address: str | None = None,
                    jobs: int | None = None, shards: int | None = None, shard_kind: str = "streams",
                    shard_row: Callable | None = None, force: bool = False, files_per_task: int | None = None,
                    progress: bool = True, description: str = "files") -> list[BatchOutcome]:
    """Run a batch command with resume semantics, on Ray (``engine="ray"``) or on this machine.

    Args:
        pairs: ``(file, relative path)`` from :func:`semcodec.batch.expand_inputs`.
        out_dir: output folder (required with ``shards``); None writes next to the inputs.
        suffix: output suffix of per-file outputs (as :func:`semcodec.batch.plan_outputs`).
        work: per-file work taking ``resume=`` (e.g. ``partial(compress_file, options=..., force=...)``).
        engine: ``"ray"`` or ``"local"`` (``local`` only matters with ``shards``).
        address: Ray cluster to join; None starts Ray on this machine.
        jobs: workers; default one per CPU of the cluster.
        shards: write this many Parquet shards (rows made by ``shard_row``) instead of per-file outputs.
        files_per_task: files per Ray task (default: about 8 tasks per worker, at most 32 files each).

    Returns:
        One outcome per input, in input order.
    """
    resume = time.time()
    if shards:
        if out_dir is None:
            raise InvalidInputError("--shards needs -o FOLDER for the shard files")
        if out_dir.exists() and not out_dir.is_dir():
            raise InvalidInputError(f"--shards needs -o FOLDER; {out_dir} is a file")
        plan = plan_shards([(s.resolve(), r) for s, r in pairs], out_dir.resolve(), shards)
        _check_other_shards(out_dir, {p.path.name for p in plan}, force)
        fn = functools.partial(run_shard, kind=shard_kind, make_row=shard_row, force=force, resume=resume)
        items, fixed = [], []
        for shard in plan:
            fixed.append(_Task(fn, shard, tuple(range(len(items), len(items) + len(shard.items))), False))
            items += [BatchItem(pairs[i][0], out_dir / shard.path.name) for i in fixed[-1].indices]
    else:
        items = plan_outputs(pairs, out_dir, suffix)
        remote = [BatchItem(i.source.resolve(), i.output.resolve()) for i in items]   # workers' cwd differs
        fn = functools.partial(run_items, work=functools.partial(work, resume=resume))
        fixed = None
    from tqdm import tqdm

    outcomes: list[BatchOutcome | None] = [None] * len(items)
    bar = tqdm(total=len(items), unit="file", desc=description, file=sys.stderr, disable=not progress,
               dynamic_ncols=True)

    def done(indices, results) -> None:
        for i, o in zip(indices, results):
            outcomes[i] = replace(o, item=items[i])
        bar.update(len(indices))

    def group(workers: int) -> list[_Task]:
        size = files_per_task or max(1, min(32, -(-len(items) // (workers * 8))))
        return [_Task(fn, remote[k:k + size], tuple(range(k, min(k + size, len(items)))), True)
                for k in range(0, len(items), size)]

    try:
        if engine == "ray":
            _run_on_ray(lambda workers: fixed or group(workers), jobs, address, done, items)
        else:
            _run_here(fixed or group(jobs or 1), jobs or 1, done, items)
    finally:
        bar.close()
    return outcomes  # type: ignore[return-value]


def _lost(indices, items, reason: str) -> list[BatchOutcome]:
    first = (reason.strip().splitlines() or ["?"])[0][:200]
    return [BatchOutcome(items[i], False, error=f"worker lost: {first}") for i in indices]


def _run_here(tasks: list[_Task], jobs: int, done, items) -> None:
    """The tasks on this machine: in this process, or in ``jobs`` worker processes."""
    if jobs == 1 or len(tasks) <= 1:
        for t in tasks:
            done(t.indices, t.fn(t.payload))
        return
    from .batch import run_in_processes

    def outputs(t: _Task) -> list[Path]:            # whose temporary files an interrupted worker may leave
        return [t.payload.path] if isinstance(t.payload, Shard) else [i.output for i in t.payload]

    # Ctrl-C or SIGTERM stops the workers at once (see run_in_processes); a lost worker fails its files.
    run_in_processes(_call, tasks, jobs, lambda t, result: done(t.indices, result),
                     lambda t, why: done(t.indices, _lost(t.indices, items, why)), outputs)


def _call(task: _Task):
    return task.fn(task.payload)


def _run_task(threads: int, fn, payload):
    """A Ray task: ``fn(payload)`` with ``threads`` torch threads.

    Ray keeps its worker processes between tasks, so the models a task loads (cached
    per process) serve every later task that lands in the same process.
    """
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)    # read when torch is first imported
    return fn(payload)


def _forwarded_env() -> dict[str, str]:
    def absolute(v: str) -> str:   # workers do not run in the driver's folder
        return str(Path(v).resolve()) if v and not os.path.isabs(v) and os.path.exists(v) else v

    return {k: absolute(v) for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator:
    """Ray, connected: joins the cluster at ``address``, or starts Ray on this machine (quietly).

    When Ray is already initialized in this process (a notebook, a test), it is used as
    it is and left running; otherwise it is shut down on exit. Workers inherit the
    driver's ``SEMCODEC_*``/``HF_*`` variables (where the models are).
    """
    ray = require("ray")
    if ray.is_initialized():
        yield ray
        return
    options = dict(log_to_driver=False, logging_level=logging.ERROR, runtime_env={"env_vars": _forwarded_env()})
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **options)
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InvalidInputError(f"cannot start or join {where}: {first}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def worker_threads(ray, workers: int) -> tuple[int, float]:
    """Torch threads and Ray CPUs of each of ``workers`` concurrent tasks, from the cluster's CPUs."""
    cpus = ray.cluster_resources().get("CPU", 1)
    largest_node = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=cpus)
    threads = int(max(1, min(cpus // workers, largest_node)))
    return threads, (threads if workers * threads <= cpus else cpus / workers)


def _run_on_ray(make_tasks: Callable[[int], list[_Task]], jobs: int | None, address: str | None, done, items) -> None:
    """The tasks on Ray, ``jobs`` at a time, streaming their outcomes back as they finish.

    A task whose worker process dies is retried by Ray (``max_retries``) in another
    process; its files that the dead worker finished are kept, not redone.
    """
    with ray_session(address) as ray, contextlib.redirect_stdout(sys.stderr):   # Ray's notes print to stdout
        workers = jobs or max(1, int(ray.cluster_resources().get("CPU", 1)))
        tasks = make_tasks(workers)
        workers = max(1, min(workers, len(tasks)))
        threads, cpus = worker_threads(ray, workers)
        remote = ray.remote(num_cpus=cpus, max_retries=MAX_TASK_RETRIES)(_run_task)
        queue, pending = deque(tasks), {}

        def submit() -> None:
            if queue:
                t = queue.popleft()
                pending[remote.remote(threads, t.fn, t.payload)] = t

        try:
            for _ in range(IN_FLIGHT_PER_WORKER * workers):
                submit()
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                t = pending.pop(ref)
                try:
                    done(t.indices, ray.get(ref))
                except ray.exceptions.RayError as e:   # its worker died more often than Ray retries
                    if t.splittable and len(t.indices) > 1:   # retry its files one by one: one culprit fails alone
                        queue.extendleft(_Task(t.fn, [item], (i,), False)
                                         for item, i in reversed(list(zip(t.payload, t.indices))))
                    else:
                        done(t.indices, _lost(t.indices, items, str(e)))
                submit()
        finally:
            for ref in pending:                 # after Ctrl-C, when Ray stays up (a caller's session)
                ray.cancel(ref, force=True)
