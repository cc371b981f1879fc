"""Import-time compatibility shims, kept in one place.

torchvision's wheel that pairs with ``torch==2.13.0`` (``torchvision==0.28.0``)
carries a compiled operator library (``_C.so``) that does not load on CPU-only
machines, yet its ``_meta_registrations`` module unconditionally registers fake
kernels for ``torchvision::nms`` and ``torchvision::qnms``. Registering a fake
kernel for an operator whose schema was never defined raises
``RuntimeError: operator torchvision::nms does not exist`` and makes
``import torchvision`` (and therefore ``import compressai`` / ``import open_clip``)
fail.

semcodec never calls these detection operators. Before torchvision is imported
we load its compiled library the way torchvision itself does; where that works
(a matching install, e.g. a CUDA machine) the real schemas exist and nothing else
is done — defining them ourselves there would collide with the library's own
registration. Where it fails, we define the two missing schemas (exactly as
torchvision's C++ library declares them), so the import succeeds.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import torch

_MISSING_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

_fragment: torch.library.Library | None = None


def ensure_torchvision_importable() -> None:
    """Define torchvision's NMS schemas when its compiled ops are missing."""
    global _fragment
    if _fragment is not None or _nms_registered() or _compiled_library_loads():
        return
    # Keep a reference: the schemas live as long as the Library object does.
    _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _MISSING_TORCHVISION_SCHEMAS:
        _fragment.define(schema)


def _nms_registered() -> bool:
    """Whether ``torchvision::nms`` exists already (its library, or these schemas, loaded before)."""
    try:
        torch.ops.torchvision.nms.default  # noqa: B018 - probes for the operator
        return True
    except (AttributeError, RuntimeError):
        return False


def _compiled_library_loads() -> bool:
    """Load torchvision's compiled library as torchvision would; False where it is missing or fails to load.

    True where torchvision is not installed at all: then there is nothing to mend.
    """
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True
    for folder in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            library = Path(folder) / f"_C{suffix}"
            if library.is_file():
                try:
                    torch.ops.load_library(str(library))
                except OSError:
                    return False
                return True
    return False


ensure_torchvision_importable()
