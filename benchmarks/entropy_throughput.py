"""Throughput of semcodec's Gaussian-conditional entropy path against raw constriction.

Encodes and decodes ``--n`` symbols (default 1 M) twice, with the same data:

* **ours**: :class:`semcodec.bitstream.entropy.EntropyEncoder` /
  ``EntropyDecoder`` with integer parameters (scale indices into the 64-entry
  ``ScaleTable.geometric()``, means ``mean_q / 16``), including validation and
  the integer-to-float parameter derivation;
* **raw**: constriction called directly (``RangeEncoder.encode(symbols,
  QuantizedGaussian(lo, hi), means, stds)`` with ready float64 arrays).

Both must produce the same words (checked). Scale indices are uniform over the
table, means lie on the grid, and symbols are drawn from the matching Gaussian,
rounded and clipped to ``[lo, hi]``. Each path runs ``--repeat`` times,
interleaved, and the best time is reported (a background load only slows
runs down). Target: ours >= 50 % of raw symbols/s.

Usage::

    python benchmarks/entropy_throughput.py            # human-readable report
    python benchmarks/entropy_throughput.py --json     # JSON on stdout
    python benchmarks/entropy_throughput.py --json out.json --n 200000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib.metadata import version

from pathlib import Path

import constriction
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from semcodec.bitstream.entropy import EntropyDecoder, EntropyEncoder, ScaleTable  # noqa: E402

LO, HI, GRID = -1024, 1024, 16


def cpu_info() -> dict:
    """Describes the machine: CPU model, cores, usable cores, thread settings, load."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "load_avg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "threads": "constriction codes on the calling thread (single-threaded)",
        "env_threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "python": platform.python_version(),
        "numpy": np.__version__,
        "constriction": version("constriction"),
        "platform": platform.platform(),
    }


def make_data(n: int, seed: int) -> dict:
    """Random integer parameters and symbols drawn from the matching quantized Gaussian."""
    rng = np.random.default_rng(seed)
    table = ScaleTable.geometric(min=0.11, max=256.0, count=64)
    scale_index = rng.integers(0, len(table), size=n, dtype=np.int32)
    mean_q = rng.integers(-20 * GRID, 20 * GRID + 1, size=n, dtype=np.int32)
    means = mean_q.astype(np.float64) / GRID
    stds = table.scales[scale_index]
    symbols = np.clip(np.rint(means + stds * rng.standard_normal(n)), LO, HI).astype(np.int32)
    return dict(table=table, scale_index=scale_index, mean_q=mean_q, means=means, stds=stds, symbols=symbols)


def run_ours(d: dict) -> tuple[float, float, bytes]:
    t0 = time.perf_counter()
    enc = EntropyEncoder()
    enc.encode_gaussian(d["symbols"], d["scale_index"], d["table"], mean_q=d["mean_q"], mean_grid=GRID, lo=LO, hi=HI)
    data = enc.to_bytes()
    t1 = time.perf_counter()
    out = EntropyDecoder(data).decode_gaussian(d["scale_index"], d["table"], mean_q=d["mean_q"], mean_grid=GRID, lo=LO, hi=HI)
    t2 = time.perf_counter()
    if not np.array_equal(out, d["symbols"]):
        raise AssertionError("semcodec round trip failed")
    return t1 - t0, t2 - t1, data


def run_raw(d: dict) -> tuple[float, float, bytes]:
    family = constriction.stream.model.QuantizedGaussian(LO, HI)
    t0 = time.perf_counter()
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(d["symbols"], family, d["means"], d["stds"])
    words = enc.get_compressed()
    t1 = time.perf_counter()
    out = constriction.stream.queue.RangeDecoder(words).decode(family, d["means"], d["stds"])
    t2 = time.perf_counter()
    if not np.array_equal(out, d["symbols"]):
        raise AssertionError("raw constriction round trip failed")
    return t1 - t0, t2 - t1, words.astype("<u4").tobytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of symbols (default: 1000000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path; the best is reported (default: 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="write the results as JSON to PATH (or stdout without PATH)")
    args = parser.parse_args(argv)

    info = cpu_info()
    d = make_data(args.n, args.seed)
    times = {"ours": [], "raw": []}
    streams = {}
    for _ in range(max(1, args.repeat)):  # interleaved, so a load change hits both paths
        for name, fn in (("ours", run_ours), ("raw", run_raw)):
            t_enc, t_dec, data = fn(d)
            times[name].append((t_enc, t_dec))
            streams[name] = data

    results = {"n_symbols": args.n, "repeat": args.repeat, "symbol_range": [LO, HI], "mean_grid": GRID,
               "scale_table": {"count": len(d["table"]), "fingerprint": d["table"].fingerprint()},
               "bit_identical": streams["ours"] == streams["raw"], "machine": info}
    for name, runs in times.items():
        t_enc, t_dec = min(r[0] for r in runs), min(r[1] for r in runs)
        results[name] = {"encode_sym_per_s": args.n / t_enc, "decode_sym_per_s": args.n / t_dec,
                         "encode_s": t_enc, "decode_s": t_dec,
                         "bits_per_symbol": 8 * len(streams[name]) / max(args.n, 1)}
    results["ratio"] = {k: results["ours"][k] / results["raw"][k] for k in ("encode_sym_per_s", "decode_sym_per_s")}
    results["target_met"] = all(r >= 0.5 for r in results["ratio"].values())

    if args.json is not None:
        text = json.dumps(results, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text + "\n")
    if args.json != "-":
        print(f"CPU: {info['cpu']} | {info['cpu_count']} cores, {info['usable_cpus']} usable | "
              f"load {info['load_avg_1_5_15']} | {info['threads']}")
        print(f"python {info['python']}, numpy {info['numpy']}, constriction {info['constriction']}")
        print(f"{args.n} symbols, range [{LO}, {HI}], 64 scales, mean grid 1/{GRID}, best of {args.repeat}")
        print(f"{'path':6} {'encode sym/s':>14} {'decode sym/s':>14} {'bits/sym':>9}")
        for name in ("ours", "raw"):
            r = results[name]
            print(f"{name:6} {r['encode_sym_per_s']:14,.0f} {r['decode_sym_per_s']:14,.0f} {r['bits_per_symbol']:9.4f}")
        ratio = results["ratio"]
        print(f"ratio ours/raw: encode {ratio['encode_sym_per_s']:.1%}, decode {ratio['decode_sym_per_s']:.1%} "
              f"(target >= 50%: {'met' if results['target_met'] else 'NOT met'}); "
              f"streams bit-identical: {results['bit_identical']}")
    return 0 if results["bit_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
