"""benchmarks/effort.py: the top level's stream measured in its curve run is the one ``compress`` writes,
and a rerun resumes from the CSV (short schedules; no timing is checked here)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
from helpers import csv_rows

import semcodec
from semcodec.bench.metrics import psnr
from semcodec.imageio import load_rgb
from semcodec.layers.pixels import refine

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "effort.py"


def run_effort(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    runpy.run_path(str(SCRIPT), run_name="__main__")


@pytest.mark.parametrize("curve", [0, 8])
def test_top_level_row_is_the_compress_stream_and_rerun_resumes(small_images, tmp_path, monkeypatch, capsys, curve):
    monkeypatch.setattr(refine, "EFFORT_ITERATIONS", (0, 4, 12, 24))
    table = tmp_path / "effort.csv"
    args = ["--images", str(small_images), "--limit", "1", "--efforts", "0,3", "--qualities", "20,60",
            "--threads", "1", "--csv", str(table), "--curve", str(curve)]
    run_effort(monkeypatch, *args)
    rows = csv_rows(table)
    image = load_rgb(small_images / "a.png")
    for q in (20.0, 60.0):
        data = semcodec.compress(image, quality=q, semantic=False, effort=3)
        (row,) = [r for r in rows if r["kind"] == "effort" and r["effort"] == "3" and float(r["quality"]) == q]
        assert int(row["bits"]) == len(data) * 8
        assert float(row["psnr"]) == pytest.approx(psnr(semcodec.decompress(data), image), abs=1e-3)
    curve_rows = [r for r in rows if r["kind"] == "curve"]
    assert sorted({int(r["iterations"]) for r in curve_rows}) == ([0, 8, 16, 24] if curve else [])
    out = capsys.readouterr().out
    assert "| 3 | 24 | 1 |" in out
    run_effort(monkeypatch, *args, "--baselines", "jpeg420")          # nothing new measured
    assert csv_rows(table) == rows
    assert "vs jpeg420" in capsys.readouterr().out


def test_report_only_without_measurements_says_so(small_images, tmp_path, monkeypatch, capsys):
    run_effort(monkeypatch, "--images", str(small_images), "--efforts", "0,1", "--csv", str(tmp_path / "none.csv"),
               "--report-only")
    assert "| 1 | 32 | 0 | not measured |" in capsys.readouterr().out
    assert not (tmp_path / "none.csv").exists()
