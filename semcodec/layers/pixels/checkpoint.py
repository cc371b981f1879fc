"""Self-describing safetensors checkpoints (no pickles).

Every checkpoint carries in its ``__metadata__``: ``format_version``, ``kind``,
the full architecture config as JSON, the semantic priors it holds, and the
semcodec version. The architecture is rebuilt from that config and checked
against the tensors; it is never inferred from tensor shapes.

The entropy bottleneck's integer CDF tables (``_quantized_cdf``, ``_offset``,
``_cdf_length``) are saved once a model is frozen for shipping; they are what
the decoder codes with, so every machine uses the very same integers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ...errors import ModelError
from ...models.residual import ResidualCodec, ResidualConfig
from ...safetensors_io import read_checked_metadata, save_atomic
from ...version import __version__

#: Version of the checkpoint layout (independent of the package and bitstream versions).
CHECKPOINT_FORMAT_VERSION = "1"

_OPTIMIZER_PREFIX = "optimizer/"
#: The entropy bottleneck's frozen integer CDF tables (sized by the data; empty until frozen).
CDF_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length")


def save_residual_checkpoint(model: ResidualCodec, path: str | Path, metadata: dict | None = None,
                             optimizer_state: dict[str, torch.Tensor] | None = None,
                             dtype: torch.dtype = torch.float32) -> None:
    """Save a residual codec (optionally with Adam moments for resuming) as safetensors.

    Args:
        model: the codec.
        path: destination file; written atomically.
        metadata: extra string-able metadata (iterations, recipe, ...).
        optimizer_state: flat tensor dict of optimizer state, stored under ``optimizer/``.
        dtype: storage dtype of floating-point weights (``torch.float16`` for shipped files).
    """
    tensors = {}
    for name, t in model.state_dict().items():
        if name.startswith("gaussian_conditional."):
            continue  # the coder uses semcodec's own scale table, not these buffers
        if name.rsplit(".", 1)[-1] in CDF_BUFFERS and t.numel() == 0:
            continue  # not frozen yet
        t = t.detach().cpu().contiguous()
        tensors[name] = t.to(dtype) if t.is_floating_point() else t
    for name, t in (optimizer_state or {}).items():
        tensors[_OPTIMIZER_PREFIX + name] = t.detach().cpu().contiguous().float()
    meta = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "kind": "residual",
        "config": json.dumps(model.config.to_dict()),
        "semantic_priors": json.dumps({k: p.project.in_channels for k, p in model.semantic_priors.items()}),
        "semcodec_version": __version__,
    }
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    save_atomic(tensors, Path(path), meta)


def load_residual_checkpoint(path: str | Path, with_optimizer: bool = False):
    """Load a residual codec checkpoint.

    Returns:
        ``(model, metadata)``, or ``(model, optimizer_state, metadata)`` with ``with_optimizer``.
        The model is in float32 and eval mode.

    Raises:
        ModelError: unreadable file, wrong kind or format version, or tensors that do not
            match the architecture recorded in the metadata.
    """
    path = Path(path)
    meta = read_checked_metadata(path, "residual", CHECKPOINT_FORMAT_VERSION, "residual-codec checkpoint")
    try:
        config = ResidualConfig.from_dict(json.loads(meta["config"]))
        priors = json.loads(meta.get("semantic_priors", "{}"))
        tensors = load_file(str(path))
    except (KeyError, TypeError, ValueError, SafetensorError) as e:
        raise ModelError(f"malformed checkpoint {path}: {e}") from None
    model = ResidualCodec(config)
    for key, token_dim in priors.items():
        model.add_semantic_prior(key, int(token_dim))
    optimizer_state = {k[len(_OPTIMIZER_PREFIX):]: v for k, v in tensors.items() if k.startswith(_OPTIMIZER_PREFIX)}
    weights = {k: v for k, v in tensors.items() if not k.startswith(_OPTIMIZER_PREFIX)}
    # The frozen integer CDF tables have data-dependent shapes: size the buffers first.
    eb = model.entropy_bottleneck
    for buf in CDF_BUFFERS:
        key = f"entropy_bottleneck.{buf}"
        if key in weights:
            getattr(eb, buf).resize_(weights[key].shape)
    expected = {k for k in model.state_dict() if not k.startswith("gaussian_conditional.")}
    optional = {f"entropy_bottleneck.{b}" for b in CDF_BUFFERS}
    missing = expected - weights.keys() - optional
    unexpected = weights.keys() - expected
    if missing or unexpected:
        raise ModelError(f"checkpoint {path} does not match its recorded architecture "
                         f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    state = model.state_dict()
    for k, v in weights.items():
        if state[k].shape != v.shape:
            raise ModelError(f"checkpoint {path}: tensor {k} has shape {tuple(v.shape)}, "
                             f"architecture expects {tuple(state[k].shape)}")
    model.load_state_dict({k: v.to(state[k].dtype) for k, v in weights.items()}, strict=False)
    model.eval()
    if with_optimizer:
        return model, optimizer_state, meta
    return model, meta


def freeze_for_shipping(source: str | Path, destination: str | Path, name: str, extra_metadata: dict | None = None,
                        rate_images: list | None = None) -> Path:
    """Turn a training checkpoint into a shipped one: fp16 weights plus frozen integer CDF tables.

    The weights are rounded to fp16 *before* the entropy bottleneck's CDF tables are
    computed, so the tables match the weights every decoder loads. With ``rate_images``
    ((H, W, 3) uint8 arrays), the model's size curve for rate control is measured and stored.
    """
    from .coder import ResidualCoder, measure_rate_curve

    model, meta = load_residual_checkpoint(source)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    model.entropy_bottleneck.update(force=True)
    keep = {k: meta[k] for k in ("iterations", "train_hours", "recipe", "history") if k in meta}
    keep.update(name=name, **{k: str(v) for k, v in (extra_metadata or {}).items()})
    if rate_images:
        keep["rate_curve"] = json.dumps([[q, round(b, 5)] for q, b in measure_rate_curve(ResidualCoder(model), rate_images)])
    save_residual_checkpoint(model, destination, metadata=keep, dtype=torch.float16)
    return Path(destination)
