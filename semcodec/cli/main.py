"""``semcodec`` — the shell interface.

Each command parses its options, calls one function of :mod:`semcodec.api` and
prints the result. Errors of the :class:`~semcodec.errors.SemcodecError` family
become a one-line message on stderr and a non-zero exit status (never a
traceback); Ctrl-C exits with status 130, SIGTERM with 143, and a standard output
whose reader has gone (``| head -c 10``) with 141.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path

import click

from ..batch import IMAGE_SUFFIXES, STREAM_SUFFIXES, expand_inputs
from ..errors import SemcodecError
from ..version import __version__
from .batch_command import engine_options, is_batch, report_single, run_batch_command, skipped_single
from .jobs import compress_detail, compress_file, decompress_detail, decompress_file, verify_image, verify_stream
from .io import (
    check_stream_name,
    check_writable,
    image_format,
    read_input_bytes,
    single_output,
    write_output_bytes,
    write_output_image,
)
from .params import (FiniteFloatRange, check_skip_existing, progress_option, skip_existing_option, verbosity,
                     verbosity_options)


class SemcodecGroup(click.Group):
    """A click group that turns semcodec errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context):
        from ..batch import sigterm_as_interrupt

        try:
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except BrokenPipeError:                 # click.echo to stdout (`semcodec info … | head -1`)
            from .io import output_closed

            error = output_closed()
            click.echo(f"semcodec: error: {error}", err=True)
            ctx.exit(error.exit_code)
        except SemcodecError as e:
            click.echo(f"semcodec: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt as e:          # Ctrl-C (130), or SIGTERM (batch.Terminated, 143)
            code = getattr(e, "exit_code", 130)
            click.echo("semcodec: interrupted" if code == 130 else "semcodec: terminated", err=True)
            ctx.exit(code)


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


@contextlib.contextmanager
def refinement_progress(effort: int):
    """A progress bar on stderr for the latent refinement of one image at effort 2 or more (single-file mode);
    yields the callback for :func:`semcodec.api.compress_image`'s ``progress`` (None: no bar)."""
    if effort < 2:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=1, desc=f"effort {effort}", unit="it", file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def rate_options(f):
    """The rate settings shared by compress commands."""
    f = click.option("--max", "max_size", is_flag=True, help="Treat --bpp/--size as a ceiling: never above it.")(f)
    f = click.option("--size", type=click.IntRange(min=1), default=None, help="Target size of the whole stream in bytes (±2%).")(f)
    f = click.option("--bpp", type=FiniteFloatRange(min=0, min_open=True), default=None, help="Target bits per pixel of the whole stream (±2%).")(f)
    f = click.option("--lossless", is_flag=True,
                     help="Add a lossless layer 2: the stream decodes to exactly the image's 8-bit pixels "
                          "(-q then sets the pixel layer under it; default 82).")(f)
    f = click.option("-q", "--quality", type=FiniteFloatRange(0, 100), default=None,
                     help="Fixed quality, 0 (smallest) to 100 (best); default 75. Above 90 a refinement layer "
                          "(layer 2) is added, up to about 46 dB at 100.")(f)
    f = click.option("-e", "--effort", type=click.IntRange(0, 3), default=0, show_default=True,
                     help="Encoder effort: above 0, the pixel layer's latents are refined for the image "
                          "(smaller streams at the same quality; much slower encoding; images of up to "
                          "8 megapixels; a progress bar from 2 on).")(f)
    f = click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda[:N]",
                     help="Where the semantic tower runs and the refinement of -e 1..3 searches; the stream decodes "
                          "the same on any machine.")(f)
    return f


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(allow_dash=True),
              help="Output stream ('-' = stdout); with several inputs, a folder mirroring the inputs. Default: next to each input, .smc.")
@rate_options
@click.option("--model", default=None, help="Codec model name (see `semcodec models`).")
@click.option("--semantic", default=None,
              help="Tower of layer 0: clip-l14-336, clip-b16, siglip-so400m-384, siglip-b16-224, tiny (offline, "
                   "not semantic) or an open_clip Arch:tag. "
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
@progress_option
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
@skip_existing_option
@verbosity_options
def compress(inputs, output, quality, lossless, effort, device, bpp, size, max_size, model, semantic, no_semantic,
             semantic_weights, semantic_only,
             semantic_bytes, strip_metadata, jobs, engine, ray_address, shards, progress, force, skip_existing, quiet,
             verbose) -> None:
    """Compress images (any format Pillow reads, HEIC and JPEG XL too) into semcodec streams.

    INPUTS are image files, folders (searched recursively) or glob patterns; '-' reads one
    image from stdin. Give at most one of -q/--quality, --bpp and --size.
    """
    if sum(x is not None for x in (quality, bpp, size)) > 1:
        raise click.UsageError("give at most one of --quality, --bpp and --size")
    if max_size and bpp is None and size is None:
        raise click.UsageError("--max needs --bpp or --size")
    if lossless and (bpp is not None or size is not None or semantic_only):
        raise click.UsageError("--lossless contradicts --bpp/--size/--semantic-only (a lossless stream is as large "
                               "as the image needs)")
    if no_semantic and (semantic or semantic_only or semantic_bytes):
        raise click.UsageError("--no-semantic contradicts --semantic/--semantic-only/--semantic-bytes")
    level = verbosity(quiet, verbose)
    check_skip_existing(skip_existing, force)
    options = {"quality": quality, "lossless": lossless, "bpp": bpp, "size": size, "max_size": max_size,
               "effort": effort, "device": device,
               "semantic": False if no_semantic else semantic, "semantic_weights": semantic_weights,
               "semantic_only": semantic_only, "semantic_bytes": semantic_bytes,
               "strip_metadata": strip_metadata} | ({"model": model} if model else {})
    if is_batch(inputs) or shards:
        from ..distributed import stream_row

        work = functools.partial(compress_file, options=options, force=force)
        run_batch_command(inputs, output, ".smc", IMAGE_SUFFIXES, work, jobs, progress, "compress", engine, ray_address,
                          shards, functools.partial(stream_row, options=options), "streams", force,
                          verbosity=level, skip_existing=skip_existing)
        return
    import time

    t0 = time.perf_counter()
    image = inputs[0]
    out = single_output(image, output, ".smc")
    check_stream_name(out)
    if skipped_single(image, out, verify_stream, skip_existing, level):
        return
    check_writable(out, force or skip_existing)      # with --skip-existing, an existing output here did not verify
    from ..imageio import open_image

    # Pillow reads the image's header before torch loads: a missing or unreadable input fails at once. (The
    # pixels are read by compress_image, which lets go of the decoded image once it has them.)
    # stdin or a pipe (bash's <(…)) can be read once: its bytes are what both read.
    source = read_input_bytes(image) if image == "-" or not Path(image).is_file() else image
    open_image(source, load=False)
    from .. import api

    show_bar = (sys.stderr.isatty() if progress is None else progress) and level >= 0
    with refinement_progress(effort if show_bar else 0) as on_iteration:
        result = api.compress_image(source, **options, progress=on_iteration)
    write_output_bytes(out, result.data, force=force or skip_existing)
    done = compress_detail(result) if level > 0 else f"{len(result.data)} bytes, {result.bpp:.4f} bpp"
    report_single(f"{image} -> {out}: {done}" if out != "-" or level > 0 else None, result.notes,
                  time.perf_counter() - t0, level)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(allow_dash=True),
              help="Output image ('-' = stdout, PNG; by suffix .png .bmp .tif .ppm .webp, all lossless); with several "
                   "inputs, a folder. Default: next to each input, .png.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Parallel worker processes (batch mode); default 1, with --engine ray one per CPU of the cluster.")
@engine_options
@progress_option
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
@skip_existing_option
@verbosity_options
def decompress(inputs, output, jobs, engine, ray_address, progress, force, skip_existing, quiet, verbose) -> None:
    """Decode the pixel layer of semcodec streams into images (PNG unless -o names another format).

    INPUTS are .smc files, folders or glob patterns; '-' reads one stream from stdin.
    """
    level = verbosity(quiet, verbose)
    check_skip_existing(skip_existing, force)
    if is_batch(inputs):
        work = functools.partial(decompress_file, force=force)
        run_batch_command(inputs, output, ".png", STREAM_SUFFIXES, work, jobs, progress, "decompress", engine,
                          ray_address, force=force, verbosity=level, skip_existing=skip_existing)
        return
    import time

    t0 = time.perf_counter()
    stream = inputs[0]
    out = single_output(stream, output, ".png")
    if skipped_single(stream, out, verify_image, skip_existing, level):
        return
    check_writable(out, force or skip_existing)
    image_format(out)                   # an output name we cannot honour fails before the decode
    from ..bitstream.container import read_container

    data = read_input_bytes(stream)
    read_container(data)                # a damaged or truncated stream fails before torch loads
    from .. import api

    image = api.decompress(data)
    written = write_output_image(out, image, force=force or skip_existing)
    if level > 0:
        report_single(f"{stream} -> {out}: {decompress_detail(image, written, data)}", (), time.perf_counter() - t0,
                      level)


def layer_list(ctx, param, value: str) -> tuple[int, ...]:
    """Parse ``--layers 0,1`` into layer numbers."""
    try:
        numbers = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of layer numbers (e.g. 0,1)") from None
    from ..bitstream.container import LAYER_TYPES      # a layer's number is its place in the stream order

    if not numbers or any(not 0 <= n < len(LAYER_TYPES) for n in numbers):
        raise click.BadParameter(f"layers are 0 (semantic), 1 (pixels) and 2 (refinement); got {value!r}")
    return numbers


@main.command()
@click.argument("stream")
@click.option("--layers", required=True, callback=layer_list, metavar="N[,N…]",
              help="Layers to keep: 0 (semantic), 1 (pixels), 2 (refinement), e.g. 0,1 for the lossy image.")
@click.option("-o", "--output", required=True, type=click.Path(allow_dash=True), help="Output stream ('-' = stdout).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output file.")
def extract(stream: str, layers: tuple[int, ...], output: str, force: bool) -> None:
    """Write a stream holding only some layers of STREAM, without re-encoding ('-' reads stdin).

    Every prefix of a stream's layers is a valid stream: tokens alone (0), tokens and lossy pixels (0,1), or the
    pixels alone (1) when they are not coded conditioned on the tokens.
    """
    check_stream_name(output)
    check_writable(output, force)
    from ..bitstream.container import read_container

    data = read_input_bytes(stream)
    read_container(data)                # a damaged or truncated stream fails before torch loads
    from .. import api

    out = api.extract_layers(data, layers)
    write_output_bytes(output, out, force=force)
    if output != "-":
        click.echo(f"{stream} -> {output}: layers {','.join(map(str, sorted(set(layers))))}, {len(out)} bytes "
                   f"(from {len(data)})", err=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def models(as_json: bool) -> None:
    """List the registered models, their sizes, what each is for and whether it is on this machine."""
    from ..models.catalog import list_models

    rows = list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    w = max([16, *(len(r["name"]) for r in rows)])  # name column
    for r in rows:
        if r["kind"] == "codec":
            status = f"available ({r['bytes'] / 1e6:.1f} MB)" if r["available"] else "checkpoint not on this machine"
        else:
            status = "available" if r["available"] else (
                "weights and calibration not on this machine" if not r["weights_present"] and not r["calibration_present"]
                else ("weights" if not r["weights_present"] else "calibration") + " not on this machine")
        click.echo(f"{r['name']:<{w}} {r['kind']:<9} {r['shape']:<22} {status}")
        click.echo(f"{'':<{w}} {r['description']}")
        for step in r.get("how_to_get", ()):
            click.echo(f"{'':<{w}} to get it, {step}")


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
