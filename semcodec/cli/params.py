"""Option types shared by the shell commands."""

from __future__ import annotations

import math

import click


class FiniteFloatRange(click.FloatRange):
    """A ``click.FloatRange`` that also refuses ``nan`` and ``inf``.

    ``click.FloatRange`` lets ``nan`` through (every comparison with it is false), and
    ``inf`` where the range is open above; neither is a usable bitrate, hour count or rate.
    """

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number.", param, ctx)
        return number


def verbosity_options(f):
    """``--quiet`` and ``-v/--verbose``, alike on every command that writes files (compress, decompress, tokens)."""
    f = click.option("-v", "--verbose", is_flag=True,
                     help="Also print each file's details: the layers and their bytes, the rate knob, the time.")(f)
    f = click.option("--quiet", is_flag=True,
                     help="Print errors only: no notes, no per-file lines, no progress bar, and a batch's summary "
                          "only when a file failed. (No short form: -q is --quality on compress.)")(f)
    return f


def verbosity(quiet: bool, verbose: bool) -> int:
    """-1 (``--quiet``), 0 (default) or 1 (``--verbose``)."""
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose contradict each other; give one")
    return -1 if quiet else int(verbose)


def progress_option(f):
    """``--progress/--no-progress``: by default a progress bar only where stderr is a terminal."""
    return click.option("--progress/--no-progress", default=None,
                        help="Progress bar on stderr (batch mode). Default: on when stderr is a terminal "
                             "(and not --quiet).")(f)


def skip_existing_option(f):
    """``--skip-existing``: resume a batch, leaving the outputs it already wrote."""
    return click.option("--skip-existing", is_flag=True,
                        help="Leave an output that already exists and verifies as it is (counted as skipped, not "
                             "an error); one that does not verify is written again. Not with --force.")(f)


def check_skip_existing(skip_existing: bool, force: bool) -> None:
    """``--skip-existing`` and ``--force`` ask for opposite things."""
    if skip_existing and force:
        raise click.UsageError("--skip-existing contradicts --force (keep existing outputs, or overwrite them)")
