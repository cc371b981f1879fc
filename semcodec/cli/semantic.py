"""Shell commands of layer 0: ``semcodec calibrate`` and ``semcodec tokens``.

Both are plain click commands; :mod:`semcodec.cli.main` registers them on the
``semcodec`` group, whose error handling turns every
:class:`~semcodec.errors.SemcodecError` into a one-line message and exit code.
What ``tokens`` shares with ``compress`` and ``decompress`` (batch mode, reporting)
comes from :mod:`semcodec.cli.batch_command`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from ..batch import IMAGE_SUFFIXES, files_in
from ..errors import InvalidInputError
from .batch_command import engine_options, is_batch, report_single, run_batch_command, skipped_single
from .io import check_output_folder, check_safetensors_name, check_writable, read_input_bytes, single_output, write_output_bytes
from .params import check_skip_existing, progress_option, skip_existing_option, verbosity, verbosity_options


def _image_files(folder: Path) -> list[Path]:
    files = files_in(folder, IMAGE_SUFFIXES, recursive=True, role="--images")
    if len(files) < 2:
        raise InvalidInputError(f"{folder} holds {len(files)} image file(s); calibration needs at least 2 "
                                "(a few hundred varied photos are recommended)")
    return files


@click.command()
@click.option("--semantic", "semantic", required=True,
              help="Semantic tower: clip-l14-336, clip-b16, siglip-so400m-384, siglip-b16-224, tiny, or an "
                   "open_clip Arch:tag.")
@click.option("--semantic-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Weights file of the tower (instead of the local cache or a download).")
@click.option("--images", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder of calibration photos (searched recursively). Never use your test images.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Calibration file to write, e.g. ~/.cache/semcodec/calibrations/calibration-NAME.safetensors.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images per tower call.")
@click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda[:N]",
              help="Where the tower runs (the statistics are computed on the CPU, in float64).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr. Default: on when stderr is a terminal.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output file.")
def calibrate(semantic: str, semantic_weights: Path | None, images: Path, output: Path, batch_size: int,
              device: str, progress: bool | None, force: bool) -> None:
    """Compute a semantic tower's calibration (KLT, variances, entropy-model tables).

    The calibration is part of the codec model: streams name its hash, and a
    decoder needs this very file. Put it in ~/.cache/semcodec/calibrations/
    (or the repository's checkpoints/) under the name calibration-NAME.safetensors
    so that encoders and decoders find it.
    """
    from ..layers.pixels.refine import search_device
    from ..models.semantic import load_tower
    from ..layers.semantic import calibrate as run_calibration

    output = output.expanduser()
    check_safetensors_name(output, "a calibration")
    check_writable(output, force)
    check_output_folder(output)
    files = _image_files(images.expanduser())
    dev = search_device(device)                  # a missing CUDA device fails here, before the tower loads
    tower = load_tower(semantic, weights=semantic_weights).to(dev)
    t0 = time.perf_counter()
    from tqdm import tqdm

    if progress is None:
        progress = sys.stderr.isatty()
    with tqdm(total=len(files), unit="img", desc=f"calibrating {tower.spec.name}", file=sys.stderr,
              disable=not progress) as bar:
        cal = run_calibration(tower, files, batch_size=batch_size, progress=lambda done: bar.update(done - bar.n))
    cal.save(output)
    skipped = cal.stats.get("skipped_images", 0)
    click.echo(f"{output}: {cal.describe()}; {time.perf_counter() - t0:.1f} s"
               + (f"; {skipped} unreadable file(s) skipped" if skipped else ""), err=True)


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(allow_dash=True), default=None,
              help="Tokens file (safetensors; '-' = stdout). Default: next to STREAM, NAME.tokens.safetensors; "
                   "stdout when STREAM is '-'. With several inputs, a folder mirroring them.")
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Calibration file to use instead of looking it up by the stream's hash.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Parallel worker processes (batch mode); default 1, with --engine ray one per CPU of the cluster.")
@engine_options
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="Write N Parquet shards of tokens (path, tokens as safetensors bytes, num_tokens, dim, grid, "
                   "size, model) into -o FOLDER instead of one file per stream.")
@progress_option
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output file.")
@skip_existing_option
@verbosity_options
def tokens(inputs: tuple[str, ...], output: str | None, calibration: Path | None, jobs: int | None, engine: str,
           ray_address: str | None, shards: int | None, progress: bool | None, force: bool, skip_existing: bool,
           quiet: bool, verbose: bool) -> None:
    """Decode the semantic tokens (layer 0) of streams for a multimodal LLM.

    Reads only each stream's semantic layer: no pixels are decoded and no vision
    transformer runs. Writes a safetensors file with 'tokens' (N, D), 'positions'
    (the coded grid positions) and metadata (tower, preprocessing, grid, layer).
    INPUTS are .smc files, folders or glob patterns ('-' reads one stream from stdin).
    """
    from ..layers.semantic import decode_tokens

    from .jobs import tokens_detail, verify_tokens

    level = verbosity(quiet, verbose)
    check_skip_existing(skip_existing, force)
    if is_batch(inputs) or shards:
        import functools

        from ..batch import STREAM_SUFFIXES
        from ..distributed import tokens_row
        from .jobs import tokens_file

        cal = calibration.expanduser().resolve() if calibration else None
        work = functools.partial(tokens_file, calibration=cal, force=force)
        run_batch_command(inputs, output, ".tokens.safetensors", STREAM_SUFFIXES, work, jobs, progress, "tokens",
                          engine, ray_address, shards, functools.partial(tokens_row, calibration=cal), "tokens", force,
                          verbosity=level, skip_existing=skip_existing)
        return
    t0 = time.perf_counter()
    stream = inputs[0]
    output = single_output(stream, output, ".tokens.safetensors")
    check_safetensors_name(output, "tokens")
    if skipped_single(stream, output, verify_tokens, skip_existing, level):
        return
    check_writable(output, force or skip_existing)
    result = decode_tokens(read_input_bytes(stream), calibration=calibration)
    encoded = result.to_bytes()
    write_output_bytes(output, encoded, force=force or skip_existing)
    detail = (f"{len(encoded)} bytes, " if level > 0 else "") + tokens_detail(result)
    report_single(f"{stream} -> {output}: {detail}" if output != "-" or level > 0 else None, (),
                  time.perf_counter() - t0, level)
