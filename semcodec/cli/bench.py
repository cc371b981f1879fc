"""``semcodec bench`` — rate–distortion, token fidelity, speed, lossless and high rate against JPEG, WebP, AVIF,
JPEG XL (and PNG for lossless).

The work is done by :mod:`semcodec.bench`; this module parses options, prints
progress and the tables, and says where the files went. See docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import click

#: ``../shared`` next to the repository (``$SEMCODEC_SHARED`` overrides it, as in the tests).
SHARED = Path(os.environ.get("SEMCODEC_SHARED", Path(__file__).resolve().parents[3] / "shared"))
DEFAULT_IMAGES = SHARED / "data" / "kodak"
DEFAULT_BASELINES = "jpeg420,jpeg444,webp,avif,jxl,compressai"


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _parse_sections(value: str | None) -> tuple[str, ...]:
    from ..bench.runner import DEFAULT_SECTIONS, SECTIONS

    if value is None:
        return DEFAULT_SECTIONS
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    if names == ["all"]:
        return SECTIONS
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise click.BadParameter(f"unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(SECTIONS)} "
                                 "(comma-separated) or all", param_hint="--sections")
    return tuple(n for n in SECTIONS if n in names)


def _parse_settings(values: tuple[str, ...]) -> list[dict] | None:
    if not values:
        return None
    from ..bench.runner import compress_image_keywords, unsupported_keywords

    out = []
    for v in values:
        try:
            d = json.loads(v)
        except json.JSONDecodeError as e:
            raise click.BadParameter(f"not JSON: {v!r} ({e.msg})", param_hint="--setting") from None
        if not isinstance(d, dict):
            raise click.BadParameter(f"must be a JSON object of compress_image keywords, got {v!r}",
                                     param_hint="--setting")
        unknown = unsupported_keywords(d)
        if unknown:
            raise click.BadParameter(f"compress_image has no keyword {', '.join(map(repr, unknown))} (in {v!r}); "
                                     f"it takes {', '.join(compress_image_keywords())}", param_hint="--setting")
        out.append(d)
    return out


def _command_line(images_dir: Path, params: dict) -> str:
    """The canonical command line that reproduces this run."""
    args = ["semcodec", "bench", str(images_dir), "-o", str(params["output"]), "--model", params["model"],
            "--semantic", params["semantic"], "--baselines", params["baselines"], "--threads", str(params["threads"]),
            "--seed", str(params["seed"])]
    if params["sections_given"]:
        args += ["--sections", ",".join(params["sections"])]
    if params["quick"]:
        args.append("--quick")
    if params["limit"]:
        args += ["--limit", str(params["limit"])]
    for s in params["setting"]:
        args += ["--setting", s]
    if params["speed_images"] is not None:
        args += ["--speed-images", str(params["speed_images"])]
    args += ["--speed-repeats", str(params["speed_repeats"])]
    if params["no_published"]:
        args.append("--no-published")
    return shlex.join(args)


@click.command()
@click.argument("images_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results"),
              show_default=True, help="Folder for the CSVs, tables, plots, results.md and run.json.")
@click.option("--sections", default=None, metavar="LIST",
              help="Comma-separated, default rd,speed: rd (rate–distortion and token fidelity), speed, "
                   "lossless (semcodec --lossless vs PNG, WebP and JPEG XL lossless, checked bit-exact), "
                   "high-rate (30–50 dB: layer 2 vs the baselines' top qualities, BD-rate over 36–46 dB); "
                   "'all' for every one.")
@click.option("--quick", is_flag=True, help="4 images, 4 rate points per codec, 2 speed images: a few minutes.")
@click.option("--model", default="semcodec-ms192", show_default=True, help="Codec model of the semcodec curves.")
@click.option("--semantic", default="tiny", show_default=True,
              help="Semantic tower for token fidelity and the semcodec curve with that semantic layer; "
                   "'none' skips both. 'tiny' is offline and NOT semantic.")
@click.option("--baselines", default=DEFAULT_BASELINES, show_default=True,
              help="Comma-separated: jpeg420, jpeg444, webp, avif, avif444, jxl, compressai (zoo weights already in "
                   "the torch hub cache only); 'none' for semcodec alone. The high-rate section adds avif444 to "
                   "avif; the lossless section measures PNG, WebP and JPEG XL lossless unless 'none'.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for torch, AVIF and JPEG XL (default: all usable CPUs).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N images.")
@click.option("--setting", multiple=True, metavar="JSON",
              help='A semcodec setting as compress_image keywords, e.g. \'{"quality": 50}\' (repeatable); '
                   "replaces the default quality sweep.")
@click.option("--speed-images", type=click.IntRange(min=0), default=None,
              help="Images in the speed section (default 4, --quick 2; 0 skips it).")
@click.option("--speed-repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Repeats per speed measurement (the median is reported).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for Python, numpy and torch.")
@click.option("--no-published", is_flag=True, help="Leave out the published reference curves.")
@click.option("--update-readme", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Afterwards, replace this README's results section (between <!-- semcodec-bench:begin --> "
                   "and <!-- semcodec-bench:end -->) with results.md.")
@click.pass_context
def bench(ctx, images_dir, output, sections, quick, model, semantic, baselines, threads, limit, setting, speed_images,
          speed_repeats, seed, no_published, update_readme) -> None:
    """Benchmark semcodec against JPEG, WebP, AVIF and JPEG XL on a folder of images.

    IMAGES_DIR defaults to ../shared/data/kodak. Measures per image and setting: bytes, bpp,
    PSNR, MS-SSIM, token fidelity, encode/decode time and peak memory; writes CSVs, markdown
    tables with BD-rates, PNG plots, results.md and run.json to OUTPUT. --sections adds the
    lossless and high-rate sections (layer 2) or runs them alone.
    """
    if images_dir is None:
        if not DEFAULT_IMAGES.is_dir():
            raise click.UsageError(f"no IMAGES_DIR given and the default {DEFAULT_IMAGES} does not exist; "
                                   "pass a folder of images")
        images_dir = DEFAULT_IMAGES
    sections_given = sections is not None
    sections = _parse_sections(sections)
    semantic_name = None if semantic.strip().lower() in ("", "none") else semantic.strip()
    names = [] if baselines.strip().lower() in ("", "none") else [b.strip() for b in baselines.split(",") if b.strip()]
    threads = threads or _usable_cpus()
    settings = _parse_settings(setting)

    from ..bench.baselines import BASELINE_NAMES
    from ..bench.report import PUBLISHED_RD, results_section, run_metadata, update_readme as rewrite_readme, write_report
    from ..bench.runner import BenchConfig, list_images, run_bench

    if update_readme is not None:
        try:
            results_section(update_readme)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--update-readme") from None

    unknown = [n for n in names if n not in BASELINE_NAMES]
    if unknown:
        raise click.BadParameter(f"unknown {', '.join(unknown)}; choose from {', '.join(BASELINE_NAMES)}",
                                 param_hint="--baselines")
    images = list_images(images_dir, limit=limit, quick=quick)
    if not images:
        raise click.UsageError(f"no images ({', '.join(('png', 'jpg', 'bmp', 'tif', 'ppm', 'webp'))}) in {images_dir}")
    config = BenchConfig(images=images, model=model, semantic=semantic_name, baselines=names, threads=threads,
                         quick=quick, seed=seed, settings=settings,
                         speed_images=(2 if quick else 4) if speed_images is None else speed_images,
                         speed_repeats=speed_repeats, sections=sections)
    params = dict(ctx.params, threads=threads, sections=sections, sections_given=sections_given)
    meta = run_metadata(config, images_dir, _command_line(images_dir, params))
    click.echo(f"semcodec bench: {len(images)} images from {images_dir}, model {model}, tower "
               f"{semantic_name or 'none'}, baselines {', '.join(names) or 'none'}, {threads} thread(s), "
               f"sections {', '.join(sections)}", err=True)
    result = run_bench(config, progress=lambda msg: click.echo(msg, err=True))
    out = write_report(result, output, meta, published_path=None if no_published else PUBLISHED_RD)
    if out["summary_md"]:
        click.echo("## Mean per setting\n\n" + out["summary_md"] + "\n")
    if out["bd_md"]:
        click.echo("## BD-rate of semcodec\n\n" + out["bd_md"] + "\n")
    if out.get("lossless_md"):
        click.echo("## Lossless\n\n" + out["lossless_md"] + "\n")
    if out.get("high_rate_md"):
        click.echo("## High rate: mean per setting\n\n" + out["high_rate_md"] + "\n")
        click.echo("## High rate: BD-rate of semcodec over 36–46 dB\n\n" + out["high_rate_bd_md"] + "\n")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if update_readme is not None:
        rewrite_readme(update_readme, output)
        click.echo(f"updated the results section of {update_readme}", err=True)
    click.echo(f"wrote {len(out['files'])} files to {output}/ in {result.seconds / 60:.1f} min "
               f"(results.md, CSVs, plots, run.json)", err=True)
