"""What the file commands share: batch mode, running a batch, reporting one input, the engine options.

``semcodec compress``, ``decompress`` (:mod:`semcodec.cli.main`) and ``tokens``
(:mod:`semcodec.cli.semantic`) take one input or many (files, folders, glob
patterns); with many they run through :func:`run_batch_command`. The commands
import these helpers from here; :mod:`semcodec.cli.main` only assembles commands.
"""

from __future__ import annotations

import functools
import glob
import sys
from pathlib import Path

import click

from ..batch import expand_inputs, plan_outputs, run_batch, summarize
from ..errors import InvalidInputError


def is_batch(inputs: tuple[str, ...]) -> bool:
    """Several inputs, a folder or a glob pattern means batch mode."""
    return len(inputs) > 1 or any(Path(i).is_dir() or (i != "-" and not Path(i).exists() and glob.has_magic(i))
                                  for i in inputs)


def run_batch_command(inputs, output, suffix, suffixes, work, jobs, progress, description, engine="local",
                      ray_address=None, shards=None, shard_row=None, shard_kind="streams", force=False,
                      verbosity=0, skip_existing=False) -> None:
    """Expand inputs, run ``work`` over them, print the summary; exit 1 if any file failed.

    ``--engine ray`` (or ``--shards``) goes through :mod:`semcodec.distributed`: resumable, on Ray workers.
    ``progress`` None: a bar when stderr is a terminal. ``verbosity`` -1 prints only the failures, 1 also
    a line per file. ``skip_existing`` keeps outputs that exist and verify (the Ray engine always does).
    """
    out_dir = Path(output) if output else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"with several inputs, -o must be a folder; {out_dir} is a file")
    if progress is None:
        progress = verbosity >= 0 and sys.stderr.isatty()
    engine = "ray" if ray_address else engine
    if engine == "local" and not shards:
        import time

        items = plan_outputs(expand_inputs(inputs, suffixes), out_dir, suffix)
        if skip_existing:
            work = functools.partial(work, resume=time.time())
        outcomes = run_batch(items, work, jobs=jobs or 1, progress=progress, description=description,
                             verbose=verbosity > 0)
    else:
        from ..distributed import require, run_distributed

        if engine == "ray":
            require("ray")
        if shards:
            require("pyarrow")
        pairs = expand_inputs(inputs, suffixes)
        outcomes = run_distributed(pairs, out_dir, suffix, work, engine=engine, address=ray_address, jobs=jobs,
                                   shards=shards, shard_kind=shard_kind, shard_row=shard_row, force=force,
                                   progress=progress, description=description)
        if verbosity > 0:
            for o in outcomes:
                click.echo(o.describe(), err=True)
    summary = summarize(outcomes)
    if verbosity >= 0 or summary.failed:
        click.echo(summary.describe(quiet=verbosity < 0), err=True)
    if summary.failed:
        sys.exit(1)


def skipped_single(source: str, out: str, verify, skip_existing: bool, verbosity: int) -> bool:
    """With ``--skip-existing``, whether one input's output exists and verifies (then says so, unless quiet).
    An existing output that does not verify is to be written again (with a note)."""
    from .jobs import existing_output

    if not skip_existing or out == "-":
        return False
    kept, notes = existing_output(Path(out), verify, False, 0.0)
    if verbosity >= 0:
        for note in notes:
            click.echo(f"semcodec: note: {out}: {note}", err=True)
        if kept is not None:
            click.echo(f"{source} -> {out}: skipped (output exists)", err=True)
    return kept is not None


def report_single(line: str | None, notes, seconds: float, verbosity: int) -> None:
    """After one input: each note once, then (``line``) what was written; ``--verbose`` adds the time."""
    if verbosity < 0:
        return
    for note in dict.fromkeys(notes):
        click.echo(f"semcodec: note: {note}", err=True)
    if line is not None:
        click.echo(line + (f"; {seconds:.2f} s" if verbosity > 0 else ""), err=True)


def engine_options(f):
    """Where a batch runs: this machine or a Ray cluster (batch mode)."""
    f = click.option("--ray-address", default=None, metavar="ADDR",
                     help="Ray cluster to join (e.g. auto, HEAD_IP:6379; implies --engine ray); "
                          "default: start Ray on this machine.")(f)
    f = click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="Run the batch on this machine, or on Ray workers (resumable; needs the ray extra).")(f)
    return f
