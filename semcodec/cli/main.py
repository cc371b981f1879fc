"""``semcodec`` — the shell interface.

Each command parses its options, calls one function of :mod:`semcodec.api` and
prints the result. Errors of the :class:`~semcodec.errors.SemcodecError` family
become a one-line message on stderr and a non-zero exit status (never a
traceback); Ctrl-C exits with status 130.
"""

from __future__ import annotations

import functools
import glob
import json
import sys
from pathlib import Path

import click

from ..batch import IMAGE_SUFFIXES, STREAM_SUFFIXES, expand_inputs, plan_outputs, run_batch, summarize
from ..errors import InvalidInputError, SemcodecError
from ..version import __version__
from .jobs import compress_file, decompress_file
from .io import check_stream_name, check_writable, encode_image, image_format, read_input_bytes, single_output, write_output_bytes
from .params import FiniteFloatRange


class SemcodecGroup(click.Group):
    """A click group that turns semcodec errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SemcodecError as e:
            click.echo(f"semcodec: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("semcodec: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=SemcodecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="semcodec")
def main() -> None:
    """semcodec: a two-layer semantic image codec.

    Layer 0 carries the vision tokens a multimodal LLM consumes; layer 1 carries
    the pixels beyond them. Each layer decodes without the other.
    """


@main.command()
@click.argument("streams", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(streams: tuple[str, ...], as_json: bool) -> None:
    """Print the header of each semcodec stream and the size of each layer.

    STREAMS are files, folders (their .smc files, recursively) or glob patterns; '-' reads stdin.
    With several streams, each report is headed by its path (a JSON list with --json), a stream
    that cannot be read is reported on stderr, and the exit status is 1 if any failed.
    """
    from ..bitstream.info import inspect

    if not is_batch(streams):
        report = inspect(read_input_bytes(streams[0]))
        click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.describe())
        return
    reports, failed = [], 0
    for path, _ in expand_inputs(streams, STREAM_SUFFIXES):
        try:
            report = inspect(read_input_bytes(path))
        except SemcodecError as e:
            failed += 1
            click.echo(f"semcodec: error: {path}: {e}", err=True)
            continue
        if not as_json:                                   # a blank line between reports, as head(1) does
            click.echo(("\n" if reports else "") + f"==> {path} <==\n{report.describe()}")
        reports.append({"path": str(path)} | report.to_dict())
    if as_json:
        click.echo(json.dumps(reports, indent=2))
    if failed:
        sys.exit(1)


def is_batch(inputs: tuple[str, ...]) -> bool:
    """Several inputs, a folder or a glob pattern means batch mode."""
    return len(inputs) > 1 or any(Path(i).is_dir() or (i != "-" and not Path(i).exists() and glob.has_magic(i))
                                  for i in inputs)


def run_batch_command(inputs, output, suffix, suffixes, work, jobs, progress, description, engine="local",
                      ray_address=None, shards=None, shard_row=None, shard_kind="streams", force=False) -> None:
    """Expand inputs, run ``work`` over them, print the summary; exit 1 if any file failed.

    ``--engine ray`` (or ``--shards``) goes through :mod:`semcodec.distributed`: resumable, on Ray workers.
    """
    out_dir = Path(output) if output else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"with several inputs, -o must be a folder; {out_dir} is a file")
    engine = "ray" if ray_address else engine
    if engine == "local" and not shards:
        items = plan_outputs(expand_inputs(inputs, suffixes), out_dir, suffix)
        outcomes = run_batch(items, work, jobs=jobs or 1, progress=progress, description=description)
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
    summary = summarize(outcomes)
    click.echo(summary.describe(), err=True)
    if summary.failed:
        sys.exit(1)


def engine_options(f):
    """Where a batch runs: this machine or a Ray cluster (batch mode)."""
    f = click.option("--ray-address", default=None, metavar="ADDR",
                     help="Ray cluster to join (e.g. auto, HEAD_IP:6379; implies --engine ray); "
                          "default: start Ray on this machine.")(f)
    f = click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="Run the batch on this machine, or on Ray workers (resumable; needs the ray extra).")(f)
    return f


def rate_options(f):
    """The rate settings shared by compress commands."""
    f = click.option("--max", "max_size", is_flag=True, help="Treat --bpp/--size as a ceiling: never above it.")(f)
    f = click.option("--size", type=click.IntRange(min=1), default=None, help="Target size of the whole stream in bytes (±2%).")(f)
    f = click.option("--bpp", type=FiniteFloatRange(min=0, min_open=True), default=None, help="Target bits per pixel of the whole stream (±2%).")(f)
    f = click.option("-q", "--quality", type=FiniteFloatRange(0, 100), default=None, help="Fixed quality, 0 (smallest) to 100 (best); default 75.")(f)
    f = click.option("-e", "--effort", type=click.IntRange(0, 3), default=0, show_default=True,
                     help="Encoder effort: above 0, the pixel layer's latent is refined for the image "
                          "(smaller streams at the same quality; much slower encoding; images of up to "
                          "8 megapixels).")(f)
    return f


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(allow_dash=True),
              help="Output stream ('-' = stdout); with several inputs, a folder mirroring the inputs. Default: next to each input, .smc.")
@rate_options
@click.option("--model", default=None, help="Codec model name (see `semcodec models`).")
@click.option("--semantic", default=None,
              help="Tower of layer 0: clip-l14-336, clip-b16, tiny (offline, not semantic) or an open_clip Arch:tag. "
                   "Default: clip-l14-336 when its weights and calibration are on this machine, else no layer 0.")
@click.option("--no-semantic", is_flag=True, help="Write the pixel layer only.")
@click.option("--semantic-weights", type=click.Path(dir_okay=False), default=None, help="Weights file of the tower.")
@click.option("--semantic-only", is_flag=True, help="Write layer 0 alone (--bpp/--size then budget the whole stream).")
@click.option("--semantic-bytes", type=click.IntRange(min=1), default=None, help="Byte budget of layer 0.")
@click.option("--strip", "strip_metadata", is_flag=True,
              help="Drop the image's metadata (EXIF, ICC profile, XMP), as cwebp -metadata none. Default: kept.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Parallel worker processes (batch mode); default 1, with --engine ray one per CPU of the cluster.")
@engine_options
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="Write N Parquet shards (path, stream, width, height, bpp) into -o FOLDER instead of .smc files.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr (batch mode).")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
def compress(inputs, output, quality, effort, bpp, size, max_size, model, semantic, no_semantic, semantic_weights, semantic_only,
             semantic_bytes, strip_metadata, jobs, engine, ray_address, shards, progress, force) -> None:
    """Compress images (any format Pillow reads, HEIC and JPEG XL too) into semcodec streams.

    INPUTS are image files, folders (searched recursively) or glob patterns; '-' reads one
    image from stdin. Give at most one of -q/--quality, --bpp and --size.
    """
    from .. import api

    if sum(x is not None for x in (quality, bpp, size)) > 1:
        raise click.UsageError("give at most one of --quality, --bpp and --size")
    if max_size and bpp is None and size is None:
        raise click.UsageError("--max needs --bpp or --size")
    if no_semantic and (semantic or semantic_only or semantic_bytes):
        raise click.UsageError("--no-semantic contradicts --semantic/--semantic-only/--semantic-bytes")
    options = {"quality": quality, "bpp": bpp, "size": size, "max_size": max_size, "effort": effort,
               "semantic": False if no_semantic else semantic, "semantic_weights": semantic_weights,
               "semantic_only": semantic_only, "semantic_bytes": semantic_bytes,
               "strip_metadata": strip_metadata} | ({"model": model} if model else {})
    if is_batch(inputs) or shards:
        from ..distributed import stream_row

        work = functools.partial(compress_file, options=options, force=force)
        run_batch_command(inputs, output, ".smc", IMAGE_SUFFIXES, work, jobs, progress, "compress", engine, ray_address,
                          shards, functools.partial(stream_row, options=options), "streams", force)
        return
    image = inputs[0]
    out = single_output(image, output, ".smc")
    check_stream_name(out)
    check_writable(out, force)
    source = read_input_bytes(image) if image == "-" else image
    result = api.compress_image(source, **options)
    write_output_bytes(out, result.data, force=force)
    for note in result.notes:
        click.echo(f"semcodec: note: {note}", err=True)
    if out != "-":
        click.echo(f"{image} -> {out}: {len(result.data)} bytes, {result.bpp:.4f} bpp", err=True)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(allow_dash=True),
              help="Output image ('-' = stdout, PNG; by suffix .png .bmp .tif .ppm .webp, all lossless); with several "
                   "inputs, a folder. Default: next to each input, .png.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Parallel worker processes (batch mode); default 1, with --engine ray one per CPU of the cluster.")
@engine_options
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr (batch mode).")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
def decompress(inputs, output, jobs, engine, ray_address, progress, force) -> None:
    """Decode the pixel layer of semcodec streams into images (PNG unless -o names another format).

    INPUTS are .smc files, folders or glob patterns; '-' reads one stream from stdin.
    """
    from .. import api

    if is_batch(inputs):
        work = functools.partial(decompress_file, force=force)
        run_batch_command(inputs, output, ".png", STREAM_SUFFIXES, work, jobs, progress, "decompress", engine,
                          ray_address, force=force)
        return
    stream = inputs[0]
    out = single_output(stream, output, ".png")
    check_writable(out, force)
    image_format(out)                   # an output name we cannot honour fails before the decode
    image = api.decompress(read_input_bytes(stream))
    write_output_bytes(out, encode_image(image, out), force=force)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def models(as_json: bool) -> None:
    """List the registered models, their sizes, what each is for and whether it is on this machine."""
    from ..models.catalog import list_models

    rows = list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        if r["kind"] == "codec":
            status = f"available ({r['bytes'] / 1e6:.1f} MB)" if r["available"] else "checkpoint not on this machine"
        else:
            status = "available" if r["available"] else (
                "weights and calibration not on this machine" if not r["weights_present"] and not r["calibration_present"]
                else ("weights" if not r["weights_present"] else "calibration") + " not on this machine")
        click.echo(f"{r['name']:<16} {r['kind']:<9} {r['shape']:<22} {status}")
        click.echo(f"{'':<16} {r['description']}")


def _register_subcommands() -> None:
    from .bench import bench
    from .semantic import calibrate, tokens
    from .train import train

    for command in (tokens, calibrate, train, bench):
        main.add_command(command)


_register_subcommands()


def run() -> None:  # pragma: no cover - console entry point alias
    main(prog_name="semcodec")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
