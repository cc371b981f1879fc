"""Import-time compatibility shims, kept in one place.

torchvision's CPU wheel that pairs with ``torch==2.13.0`` (``torchvision==0.28.0``)
ships without its compiled operator library on CPU-only machines, yet its
``_meta_registrations`` module unconditionally registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms``. Registering a fake kernel for an
operator whose schema was never defined raises
``RuntimeError: operator torchvision::nms does not exist`` and makes
``import torchvision`` (and therefore ``import compressai`` / ``import open_clip``)
fail.

semcodec never calls these detection operators. We define the two missing
schemas (exactly as torchvision's C++ library declares them) before torchvision
is imported, so the import succeeds. When the compiled library is present the
schemas already exist and nothing is done.
"""

from __future__ import annotations

import torch

_MISSING_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

_fragment: torch.library.Library | None = None


def ensure_torchvision_importable() -> None:
    """Define torchvision's NMS schemas when its compiled ops are missing."""
    global _fragment
    if _fragment is not None:
        return
    try:
        torch.ops.torchvision.nms.default  # noqa: B018 - probes for the compiled op
        return
    except (AttributeError, RuntimeError):
        pass
    # Keep a reference: the schemas live as long as the Library object does.
    _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _MISSING_TORCHVISION_SCHEMAS:
        _fragment.define(schema)


ensure_torchvision_importable()
