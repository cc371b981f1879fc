"""``semcodec train`` — train, resume or export the residual codec."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InvalidInputError
from .io import check_output_folder, check_safetensors_name
from .params import FiniteFloatRange

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "train"


@click.command()
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of training photos (default: ../shared/data/train). Never the evaluation set.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/semcodec-ms192"),
              show_default=True, help="Where last.safetensors, log.jsonl and hourly snapshots go; resumes from it.")
@click.option("--model", "model_name", default="semcodec-ms192", show_default=True,
              help="Registered architecture to create when starting from scratch.")
@click.option("--resume-from", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Start from this checkpoint (e.g. the shipped one) when the run folder has none.")
@click.option("--hours", type=FiniteFloatRange(min=0), default=None, help="Stop after this many hours of training in this call.")
@click.option("--iterations", type=click.IntRange(min=0), default=None, help="Stop at this total iteration count.")
@click.option("--crop", type=click.IntRange(min=64), default=128, show_default=True,
              help="Side of the square training crops, a multiple of 64 (the model's stride).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=5e-4, show_default=True, help="Peak learning rate (after warm-up).")
@click.option("--lr-final", type=FiniteFloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Learning rate the cosine decay ends at.")
@click.option("--lr-decay-iterations", type=click.IntRange(min=1), default=150_000, show_default=True,
              help="Total iteration (counted from 0, not from the resume point) at which the cosine reaches "
                   "--lr-final; a value just above a resumed run's count anneals it.")
@click.option("--anneal", is_flag=True,
              help="Decay the lr from --lr to --lr-final over this call's --hours / --iterations (whichever ends "
                   "first) instead of over --lr-decay-iterations: a warm restart that ends annealed whatever the "
                   "machine's speed.")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="torch threads (0 = torch's default).")
@click.option("--device", default="cpu", show_default=True, help="torch device that trains, e.g. cuda.")
@click.option("--checkpoint-minutes", type=FiniteFloatRange(min=0, min_open=True), default=8.0, show_default=True,
              help="Write last.safetensors at least this often.")
@click.option("--semantic", default=None, help="Condition the entropy model on this tower's decoded layer-0 tokens.")
@click.option("--conditioning-only", is_flag=True, help="Train only the --semantic tower's prior; everything else frozen.")
@click.option("--context", type=click.Choice(["checkerboard"]), default=None,
              help="Add this spatial context model (starting neutral) to a model that has none.")
@click.option("--context-only", is_flag=True, help="Train only the context model; everything else frozen.")
@click.option("--add-level", type=FiniteFloatRange(min=0, min_open=True), default=None, metavar="LAMBDA",
              help="Add a gain level trained at this λ above the model's top one, for higher rates; it starts "
                   "where the top two levels extrapolate to, so the model's other rates are unchanged.")
@click.option("--compile", "compile_loss", is_flag=True,
              help="Compile the loss with torch.compile: about 1.25x more iterations/s on 2 CPU cores (0.86 vs "
                   "0.69 at 256² x 8) after a one-off compilation of about a minute (needs a C++ compiler).")
@click.option("--export-to", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Afterwards, freeze the last checkpoint (fp16 + integer CDF tables) into this file.")
def train(data, run_dir, model_name, resume_from, hours, iterations, crop, batch_size, lr, lr_final,
          lr_decay_iterations, anneal, threads, device, checkpoint_minutes, semantic, conditioning_only, context,
          context_only, add_level, compile_loss, export_to) -> None:
    """Train the residual codec with random crops and an RD loss over its λ levels (resumable)."""
    from ..batch import IMAGE_SUFFIXES, files_in
    from ..layers.pixels.checkpoint import freeze_for_shipping
    from ..models.registry import codec_models
    from ..training import TrainSettings
    from ..training import train as run_training

    data = data or DEFAULT_DATA
    try:
        photos = files_in(data, IMAGE_SUFFIXES, role="training data folder")    # fails now, before a model loads
    except InvalidInputError as e:
        raise InvalidInputError(f"{e}; pass --data DIR") from None
    if export_to:
        check_safetensors_name(export_to, "a codec checkpoint")
        check_output_folder(export_to)          # found now, not after hours of training
    if lr_final > lr:
        raise InvalidInputError(f"--lr-final must not exceed --lr; got {lr_final} with --lr {lr}")
    registry = codec_models()
    if model_name not in registry:
        raise InvalidInputError(f"unknown model {model_name!r}; registered: {', '.join(registry)}")
    settings = TrainSettings(data=str(data), run_dir=str(run_dir), crop=crop, batch_size=batch_size, lr=lr,
                             lr_final=lr_final, lr_decay_iterations=lr_decay_iterations, anneal=anneal,
                             threads=threads, device=device, checkpoint_minutes=checkpoint_minutes,
                             semantic=semantic, conditioning_only=conditioning_only,
                             context=context, context_only=context_only, add_level=add_level, compile=compile_loss,
                             max_iterations=iterations, max_hours=hours)
    last = run_training(settings, registry[model_name].config, resume_from=str(resume_from) if resume_from else None,
                        log=lambda m: click.echo(m, err=True))
    if export_to:
        from ..imageio import load_rgb

        # A few training photos (never the evaluation set) give the model's size curve for rate control.
        freeze_for_shipping(last, export_to, model_name, rate_images=[load_rgb(p) for p in photos[::37][:8]])
        click.echo(f"exported {export_to}", err=True)
