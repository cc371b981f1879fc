"""The parts of CompressAI that semcodec builds on, imported without the rest of CompressAI.

semcodec uses four things from CompressAI: the entropy models (``EntropyBottleneck``,
``GaussianConditional``), the ``GDN`` layer and the ``conv``/``deconv`` helpers. But
``import compressai`` runs a package ``__init__`` that imports every subpackage, among
them ``compressai.datasets`` and ``compressai.registry``, which import ``torch_geometric``
(and through it ``torch._dynamo`` and dozens of graph-learning datasets): about 2 s of
every ``semcodec compress`` or ``decompress`` on 2 cores, more than ``import torch`` itself,
for modules the codec never touches.

So this module imports only the submodules above, without running that ``__init__``:
``compressai`` is entered in ``sys.modules`` as a :class:`_DeferredModule` that points at
the installed folder. Its submodules are CompressAI's own files, loaded as usual; the
package's own two small functions that the entropy models call when they are built
(``get_entropy_coder``, ``available_entropy_coders``) answer as CompressAI's defaults do
(``"ans"``; semcodec codes with constriction and never uses that coder). Anything else
asked of the package (``compressai.zoo``, ``compressai.__version__``,
``compressai.set_entropy_coder``, …) runs the real ``__init__`` in the same module object
first, so code that uses CompressAI beside semcodec (the benchmark's CompressAI
baselines, a user's program) gets the whole package, with these very classes in it.

One more module is deferred the same way: ``compressai.entropy_models`` imports
``scipy.stats`` at the top (0.6–2.8 s on 2 cores, most of it parsing the docstrings of
about 600 distributions) for one call, ``scipy.stats.norm.ppf`` in
``GaussianConditional.update()``, which semcodec never makes (its scale table is its
own); ``scipy.stats`` loads, whole and unchanged, when an attribute of it is first used.
(The standard library's ``importlib.util.LazyLoader`` would load it at once on Python
3.11: the import statement itself reads the module's ``__spec__``.)

Nothing installed is changed; modules imported before semcodec are used as they are.
``tests/test_startup.py`` checks that the heavy modules stay out and that CompressAI
imported after semcodec is whole.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

#: The CompressAI submodules semcodec uses.
_SUBMODULES = ("compressai.entropy_models", "compressai.layers", "compressai.models.utils")
#: Submodules of a deferred package that may be imported from it (``from compressai import ans``, as the entropy
#: models do) without running its ``__init__``.
_LIGHT_SUBMODULES = {"compressai": frozenset({"ans", "_CXX", "ops", "entropy_models", "layers"})}
#: Dunder names whose absence is no reason to run a deferred module (introspection by copy, pickle, inspect, …).
_RUNS_FOR_DUNDERS = frozenset({"__version__", "__all__"})


class _DeferredModule(types.ModuleType):
    """A module entered in ``sys.modules`` before its code has run; the code runs, in this very module object,
    when an attribute that the module does not have yet is first asked for."""

    def __init__(self, spec):
        super().__init__(spec.name)
        self.__spec__, self.__loader__, self.__file__ = spec, spec.loader, None
        if spec.submodule_search_locations is not None:
            self.__path__ = list(spec.submodule_search_locations)

    def __getattr__(self, name: str):
        if name.startswith("__") and name not in _RUNS_FOR_DUNDERS:
            raise AttributeError(name)
        if name in _LIGHT_SUBMODULES.get(self.__name__, ()):
            return importlib.import_module(f"{self.__name__}.{name}")
        self.__class__ = types.ModuleType          # a plain module from here on, as if imported the usual way
        self.__file__ = self.__spec__.origin
        try:
            self.__spec__.loader.exec_module(self)
        except BaseException:
            sys.modules.pop(self.__name__, None)   # as a failed import leaves nothing behind
            raise
        return getattr(self, name)


def _defer(name: str) -> _DeferredModule | None:
    """Enter module ``name`` in ``sys.modules`` as a :class:`_DeferredModule` (None where it is loaded already)."""
    if name in sys.modules:
        return None
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ImportError(f"{name} is not installed")
    module = sys.modules[name] = _DeferredModule(spec)
    return module


def _default_entropy_coder() -> str:
    """CompressAI's default entropy coder, as its ``__init__`` sets it."""
    return "ans"


def _available_entropy_coders() -> list[str]:
    """The coders CompressAI's entropy models accept as a default (its ``__init__`` adds "rangecoder" where
    that package is installed; the models built here use the default)."""
    return ["ans"]


def _import_submodules() -> dict[str, types.ModuleType]:
    """Import :data:`_SUBMODULES` with ``compressai``'s ``__init__`` and ``scipy.stats`` deferred."""
    _defer("scipy.stats")
    package = _defer("compressai")
    if package is not None:
        package.get_entropy_coder = _default_entropy_coder
        package.available_entropy_coders = _available_entropy_coders
        if "compressai.models" not in sys.modules:
            # compressai.models' own __init__ imports every model (and the registry): skip it for .utils alone,
            # then forget it, so that a later import of compressai.models runs that __init__.
            models_spec = importlib.util.spec_from_loader("compressai.models", None, is_package=True)
            models_spec.submodule_search_locations = [f"{package.__path__[0]}/models"]
            sys.modules["compressai.models"] = importlib.util.module_from_spec(models_spec)
            try:
                importlib.import_module("compressai.models.utils")
            finally:
                del sys.modules["compressai.models"]
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
