"""Start-up: what a single-image command imports, and what it refuses before importing torch.

Each test runs a fresh interpreter (imports are per process) and asserts on ``sys.modules``:
no timing here (the start-up time is measured by ``benchmarks/startup.py``).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import SAMPLE, TEST_DATA, run_cli_in_fresh_interpreter

#: Modules a compress or decompress never needs: CompressAI's package __init__ pulls them in (torch_geometric,
#: torchvision, its datasets and registry), and torch.compiler.disable used as a decorator imports torch._dynamo.
HEAVY = ("torch_geometric", "torchvision", "compressai.datasets", "compressai.registry", "compressai.zoo",
         "compressai.models.google", "torch._dynamo", "open_clip", "transformers", "scipy.stats._stats_py")


def _cli(*args: str, forbidden: tuple[str, ...]):
    """``semcodec ARGS`` in a fresh interpreter with the test checkpoints; (process, forbidden modules imported)."""
    return run_cli_in_fresh_interpreter(*args, forbidden=forbidden,
                                        env={"SEMCODEC_CHECKPOINTS": str(TEST_DATA / "checkpoints"), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("args, status, message", [
    (("compress", "nosuch.jpg"), 2, "nosuch.jpg: no such file"),
    (("compress", str(TEST_DATA / "checkpoints")), 2, "files in this folder"),
    (("compress", __file__, "-o", "-"), 2, "not an image"),
    (("decompress", "nosuch.smc"), 2, "nosuch.smc: no such file"),
    (("decompress", __file__, "-o", "-"), 3, "not a semcodec stream"),
    (("compress", str(SAMPLE), "-q", "5", "--bpp", "1"), 2, "at most one of"),
])
def test_bad_input_is_refused_before_torch_loads(args, status, message, tmp_path):
    r, imported = _cli(*args, forbidden=("torch",))
    assert r.returncode == status, r.stderr
    assert message in r.stderr and imported == []


def test_compress_and_decompress_import_no_heavy_module(tmp_path):
    stream, image = tmp_path / "s.smc", tmp_path / "s.png"
    r, imported = _cli("compress", str(SAMPLE), "-o", str(stream), "--model", "semcodec-test", forbidden=HEAVY)
    assert r.returncode == 0 and imported == [], r.stderr
    r, imported = _cli("decompress", str(stream), "-o", str(image), forbidden=HEAVY)
    assert r.returncode == 0 and imported == [], r.stderr
    assert image.stat().st_size > 0


def test_compressai_imported_after_semcodec_is_the_whole_package():
    """semcodec skips CompressAI's package __init__; a later `import compressai` (the benchmark's baselines, a
    user's code) still gets every subpackage, with the classes semcodec's models are built from."""
    code = ("import sys, semcodec.models.residual as r\n"
            "assert 'compressai.zoo' not in sys.modules\n"
            "import compressai\n"
            "from compressai.zoo import image_models\n"
            "assert 'mbt2018-mean' in image_models and compressai.__version__\n"
            "assert compressai.entropy_models.EntropyBottleneck is r.EntropyBottleneck\n"
            "assert compressai.get_entropy_coder() == 'ans'\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_compressai_imported_before_semcodec_is_used_as_it_is():
    code = ("from semcodec import _compat\n"
            "import compressai, semcodec.models.residual as r\n"
            "assert r.EntropyBottleneck is compressai.entropy_models.EntropyBottleneck\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
