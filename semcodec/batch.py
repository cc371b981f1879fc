"""Batch processing of many files: input expansion, output naming, parallel workers, progress, summary.

One bad file never stops a batch: its error is recorded and reported at the end,
and the exit status says whether anything failed. Each worker process loads the
models once (they are cached per process) and uses ``cores / jobs`` torch threads.
"""

from __future__ import annotations

import glob
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

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
    skipped: bool = False       # a resumed run kept an existing output that verifies (nothing was written)


@dataclass(frozen=True)
class BatchSummary:
    """Totals over a batch."""

    files: int
    failed: list[BatchOutcome]
    bytes_in: int
    bytes_out: int
    mean_bpp: float | None
    notes: tuple[str, ...] = ()
    skipped: int = 0

    def describe(self) -> str:
        files = f"{self.files} file" + ("s" if self.files != 1 else "")
        lines = [f"{files}, {self.files - len(self.failed)} ok, {len(self.failed)} failed; "
                 f"{self.bytes_in} bytes in, {self.bytes_out} bytes out"
                 + (f", mean {self.mean_bpp:.4f} bpp" if self.mean_bpp is not None else "")
                 + (f"; {self.skipped} already done (kept)" if self.skipped else "")]
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
    import torch

    torch.set_num_threads(threads)


def run_batch(items: list[BatchItem], work: Callable[[BatchItem], BatchOutcome], jobs: int = 1,
              progress: bool = True, description: str = "files") -> list[BatchOutcome]:
    """Run ``work`` on every item (in ``jobs`` processes), with a progress bar on stderr.

    ``work`` must be a picklable module-level callable that returns a :class:`BatchOutcome`
    and turns every :class:`SemcodecError` into a failed outcome.
    """
    from tqdm import tqdm

    if jobs < 1:
        raise InvalidInputError(f"--jobs must be at least 1, got {jobs}")
    bar = tqdm(total=len(items), unit="file", desc=description, file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    outcomes: list[BatchOutcome] = []
    try:
        if jobs == 1 or len(items) <= 1:
            for item in items:
                outcomes.append(work(item))
                bar.update()
        else:
            threads = max(1, (os.cpu_count() or 1) // jobs)
            with ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker, initargs=(threads,)) as pool:
                futures = {pool.submit(work, item): item for item in items}
                try:
                    for future in as_completed(futures):
                        try:
                            outcomes.append(future.result())
                        except Exception as e:  # a worker that died: report the file, go on
                            outcomes.append(BatchOutcome(futures[future], False, error=f"worker failed: {e}"))
                        bar.update()
                except KeyboardInterrupt:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    finally:
        bar.close()
    order = {item: i for i, item in enumerate(items)}
    return sorted(outcomes, key=lambda o: order[o.item])


def summarize(outcomes: list[BatchOutcome]) -> BatchSummary:
    """Totals: files, failures, bytes in and out, mean bpp of the produced streams."""
    ok = [o for o in outcomes if o.ok]
    bpps = [o.stream_bytes * 8 / o.pixels for o in ok if o.pixels]
    return BatchSummary(files=len(outcomes), failed=[o for o in outcomes if not o.ok],
                        bytes_in=sum(o.bytes_in for o in ok), bytes_out=sum(o.bytes_out for o in ok),
                        mean_bpp=sum(bpps) / len(bpps) if bpps else None,
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
