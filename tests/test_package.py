"""What the installed package offers by itself: its public names, the model list's hints, shipped data."""

from __future__ import annotations

import re

import semcodec
from helpers import REPO
from semcodec import errors


def test_every_error_class_the_readme_names_is_exported_at_the_top_level():
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"`(\w+Error)`", readme))
    assert {"InvalidInputError", "CorruptStreamError", "ModelNotAvailableError"} <= named
    for name in named | {n for n in vars(errors) if n.endswith("Error")}:
        assert getattr(semcodec, name) is getattr(errors, name), name
        assert name in semcodec.__all__


def test_models_says_how_to_get_a_missing_tower(runner, monkeypatch, tmp_path):
    from semcodec.cli.main import main

    monkeypatch.setenv("HF_HOME", str(tmp_path))              # an empty cache: clip-b16 is not here
    monkeypatch.setenv("HOME", str(tmp_path))
    r = runner.invoke(main, ["models"])
    assert r.exit_code == 0, r.output
    assert "to get it, weights: open_clip ViT-B-16/openai" in r.output and "--semantic-weights FILE" in r.output
    assert "to get it, calibration: semcodec calibrate --semantic clip-b16 --images DIR -o" in r.output


def test_published_reference_curves_ship_inside_the_package():
    from semcodec.bench.report import PUBLISHED_RD, load_published

    assert PUBLISHED_RD.is_relative_to(REPO / "semcodec")
    curves = load_published()
    assert "mbt2018-mean" in {name.split(" ")[0] for name in curves} or any("mbt2018-mean" in n for n in curves)
    assert (PUBLISHED_RD.parent / "README.md").read_text().startswith("# Published reference results")
