"""The parts of CompressAI that semcodec builds on, imported without the rest of CompressAI.

semcodec uses four things from CompressAI: the entropy models (``EntropyBottleneck``,
``GaussianConditional``), the ``GDN`` layer and the ``conv``/``deconv`` helpers. But
``import compressai`` runs a package ``__init__`` that imports every subpackage, among
them ``compressai.datasets`` and ``compressai.registry``, which import ``torch_geometric``
(and through it ``torch._dynamo`` and dozens of graph-learning datasets): about 2 s of
every ``semcodec compress`` or ``decompress`` on 2 cores, more than ``import torch`` itself,
for modules the codec never touches.

So this module imports only the submodules above, without running that ``__init__``:
``compressai`` is entered in ``sys.modules`` as a :class:`_DeferredPackage` that points at
the installed folder. Its submodules are CompressAI's own files, loaded as usual; the
package's own two small functions that the entropy models call when they are built
(``get_entropy_coder``, ``available_entropy_coders``) answer as CompressAI's defaults do
(``"ans"``; semcodec codes with constriction and never uses that coder). Anything else
asked of the package (``compressai.zoo``, ``compressai.__version__``,
``compressai.set_entropy_coder``, …) runs the real ``__init__`` in the same module object
first, so code that uses CompressAI beside semcodec (the benchmark's CompressAI
baselines, a user's program) gets the whole package, with these very classes in it.
Nothing installed is changed; if CompressAI was imported before semcodec, it is used as
it is. ``tests/test_startup.py`` checks that the heavy modules stay out.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

#: The CompressAI submodules semcodec uses.
_SUBMODULES = ("compressai.entropy_models", "compressai.layers", "compressai.models.utils")
#: Submodules that those import from the package (``from compressai import ans``) without needing the rest.
_LIGHT_SUBMODULES = frozenset({"ans", "_CXX", "ops", "entropy_models", "layers"})


class _DeferredPackage(types.ModuleType):
    """``compressai`` with its ``__init__`` deferred until something needs more than the codec's submodules."""

    def __init__(self, spec):
        super().__init__(spec.name)
        self.__spec__, self.__path__, self.__file__ = spec, list(spec.submodule_search_locations), None
        self.__loader__ = spec.loader

    def __getattr__(self, name: str):
        if name.startswith("__") and name not in ("__version__", "__all__"):
            raise AttributeError(name)        # introspection (copy, pickle, inspect) needs no import
        if name in _LIGHT_SUBMODULES:         # e.g. the entropy models' `from compressai import ans`
            return importlib.import_module(f"{self.__name__}.{name}")
        self._run_real_init()
        return getattr(self, name)

    def _run_real_init(self) -> None:
        """Run CompressAI's own ``__init__`` in this module: from then on it is the whole package."""
        for name in ("get_entropy_coder", "available_entropy_coders"):
            self.__dict__.pop(name, None)
        self.__class__ = types.ModuleType     # plain module again: a failing __init__ is not retried forever
        self.__file__ = self.__spec__.origin
        self.__spec__.loader.exec_module(self)


def _default_entropy_coder() -> str:
    """CompressAI's default entropy coder, as its ``__init__`` sets it."""
    return "ans"


def _available_entropy_coders() -> list[str]:
    """The coders CompressAI's entropy models accept as a default (its ``__init__`` adds "rangecoder" where
    that package is installed; the models built here use the default)."""
    return ["ans"]


def _import_submodules() -> dict[str, types.ModuleType]:
    """Import :data:`_SUBMODULES`, entering ``compressai`` as a :class:`_DeferredPackage` when it is not loaded."""
    if "compressai" not in sys.modules:
        spec = importlib.util.find_spec("compressai")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("compressai is not installed (pip install compressai)")
        package = _DeferredPackage(spec)
        package.get_entropy_coder = _default_entropy_coder
        package.available_entropy_coders = _available_entropy_coders
        sys.modules["compressai"] = package
        if "compressai.models" not in sys.modules:
            # compressai.models' own __init__ imports every model (and the registry): skip it for .utils alone.
            models_spec = importlib.util.spec_from_loader("compressai.models", None, is_package=True)
            models_spec.submodule_search_locations = [f"{spec.submodule_search_locations[0]}/models"]
            sys.modules["compressai.models"] = importlib.util.module_from_spec(models_spec)
            try:
                importlib.import_module("compressai.models.utils")
            finally:
                del sys.modules["compressai.models"]      # a later import of compressai.models runs its __init__
    return {name: importlib.import_module(name) for name in _SUBMODULES}


# The rest of CompressAI (its __init__, compressai.zoo, …) imports torchvision, which needs this shim on CPU-only
# machines (2 ms; it imports no torchvision): in place for whoever imports them after semcodec.
from .. import _compat  # noqa: E402,F401

_modules = _import_submodules()

EntropyBottleneck = _modules["compressai.entropy_models"].EntropyBottleneck
GaussianConditional = _modules["compressai.entropy_models"].GaussianConditional
GDN = _modules["compressai.layers"].GDN
conv = _modules["compressai.models.utils"].conv
deconv = _modules["compressai.models.utils"].deconv

__all__ = ["GDN", "EntropyBottleneck", "GaussianConditional", "conv", "deconv"]
