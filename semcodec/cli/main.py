"""``semcodec`` — the shell interface.

Each command parses its options, calls one function of :mod:`semcodec.api` and
prints the result. Errors of the :class:`~semcodec.errors.SemcodecError` family
become a one-line message on stderr and a non-zero exit status (never a
traceback); Ctrl-C exits with status 130.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import SemcodecError
from ..version import __version__
from .io import check_writable, encode_image, read_input_bytes, write_output_bytes


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
@click.argument("stream", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(stream: str, as_json: bool) -> None:
    """Print the header of a semcodec STREAM and the size of each layer ('-' reads stdin)."""
    from ..api import inspect

    report = inspect(read_input_bytes(stream))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.describe())


def default_output(input_path: str, suffix: str) -> str:
    """Output name next to the input: ``photo.png`` → ``photo<suffix>``; stdin → stdout."""
    if input_path == "-":
        return "-"
    p = Path(input_path)
    return str(p.with_name(p.stem + suffix)) if p.suffix != suffix else str(p.with_name(p.name + suffix))


@main.command()
@click.argument("image", type=click.Path(allow_dash=True))
@click.option("-o", "--output", type=click.Path(allow_dash=True), help="Output stream (default: IMAGE with .smc; '-' = stdout).")
@click.option("-q", "--quality", type=click.FloatRange(0, 100), default=None, help="0 (smallest) to 100 (best); default 75.")
@click.option("--model", default=None, help="Codec model name (see `semcodec models`).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output file.")
def compress(image: str, output: str | None, quality: float | None, model: str | None, force: bool) -> None:
    """Compress IMAGE (any format Pillow reads; '-' reads stdin) into a semcodec stream."""
    from .. import api

    out = output or default_output(image, ".smc")
    check_writable(out, force)
    source = read_input_bytes(image) if image == "-" else image
    data = api.compress(source, quality=quality, **({"model": model} if model else {}))
    write_output_bytes(out, data, force=force)
    info = api.inspect(data)
    if out != "-":
        click.echo(f"{image} -> {out}: {info.total_bytes} bytes, {info.bpp:.4f} bpp", err=True)


@main.command()
@click.argument("stream", type=click.Path(allow_dash=True))
@click.option("-o", "--output", type=click.Path(allow_dash=True), help="Output image (default: STREAM with .png; '-' = stdout).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output file.")
def decompress(stream: str, output: str | None, force: bool) -> None:
    """Decode the pixel layer of a semcodec STREAM into an image (PNG unless -o names another format)."""
    from .. import api

    out = output or default_output(stream, ".png")
    check_writable(out, force)
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
        status = "available" if r["available"] else "not on this machine"
        click.echo(f"{r['name']:<16} {r['kind']:<9} {r['shape']:<22} {status}")
        click.echo(f"{'':<16} {r['description']}")


def run() -> None:  # pragma: no cover - console entry point alias
    main(prog_name="semcodec")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
