"""The benchmark harness behind ``semcodec bench``.

::

    images ─ runner.run_bench ─ rows (one per image × setting) + speed rows
               │  semcodec settings: compress_image keyword dicts (quality sweep, + semantic layer)
               │  baselines: Pillow JPEG 4:2:0 / 4:4:4, WebP, AVIF, JPEG XL; CompressAI zoo if cached
               │  metrics: PSNR, MS-SSIM, token cosine / MSE, encode / decode time, peak memory
               └ report.write_report ─ measurements.csv, summary.csv, bdrate.csv, speed.csv,
                                       4 PNG plots, results.md, run.json

Modules: :mod:`~semcodec.bench.metrics`, :mod:`~semcodec.bench.bdrate`,
:mod:`~semcodec.bench.baselines`, :mod:`~semcodec.bench.runner`,
:mod:`~semcodec.bench.report`. How to run it and what each number means:
``docs/benchmarks.md``.

Example:
    >>> from semcodec.bench import bd_rate
    >>> round(bd_rate([1, 2, 4], [30, 33, 36], [0.9, 1.8, 3.6], [30, 33, 36]), 3)
    -10.0
"""

from .bdrate import BDError, bd_psnr, bd_rate
from .metrics import ms_ssim, psnr, token_fidelity

__all__ = ["BDError", "bd_psnr", "bd_rate", "ms_ssim", "psnr", "token_fidelity"]
