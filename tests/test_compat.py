"""The torchvision import shim: schemas only where torchvision's own library cannot provide them."""

from __future__ import annotations

import importlib.machinery
import importlib.util

import pytest
import torch

from semcodec import _compat


@pytest.fixture
def fake_torchvision(tmp_path, monkeypatch):
    """A torchvision package folder (with a compiled-library file) that find_spec reports."""
    package = tmp_path / "torchvision"
    package.mkdir()
    spec = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "torchvision"
                        else real_find_spec(name, *a))
    return package


def _add_library(package):
    (package / f"_C{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"")


def test_a_library_that_loads_needs_no_schemas(fake_torchvision, monkeypatch):
    _add_library(fake_torchvision)
    loaded = []
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    assert _compat._compiled_library_loads() and loaded[0].startswith(str(fake_torchvision))


def test_a_library_that_fails_to_load_needs_the_schemas(fake_torchvision, monkeypatch):
    _add_library(fake_torchvision)

    def load_library(path):
        raise OSError(f"Could not load this library: {path}")

    monkeypatch.setattr(torch.ops, "load_library", load_library)
    assert not _compat._compiled_library_loads()


def test_a_torchvision_without_its_library_needs_the_schemas(fake_torchvision):
    assert not _compat._compiled_library_loads()


def test_without_torchvision_there_is_nothing_to_mend(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision"
                        else real_find_spec(name, *a))
    assert _compat._compiled_library_loads()


def test_torchvision_imports_with_nms_defined():
    import torchvision

    assert _compat._nms_registered() and torchvision.__version__
