"""Throughput of batch compression: ``--engine local -j 1/2`` next to ``--engine ray -j 1/2``.

Each configuration runs the real shell command (``semcodec compress FOLDER -o OUT
--no-semantic --no-progress``) in a fresh process on the same images, into a fresh
output folder, so its time includes what a user waits for: interpreter start, model
load and, for Ray, starting a local Ray instance. The steady-state rate (images/s
once the workers are up) is reported too, from a second run over twice the images
(t(2n) - t(n) = the time of n more images). Then, in this process, the per-task
overhead of Ray: the round trip of an empty task one at a time, and the cost per
empty task when many are in flight.

    python benchmarks/ray_throughput.py [--images DIR] [--count 4] [--model NAME] [--json OUT]

Not a test: run it on an otherwise idle machine; it prints a table (and writes JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from semcodec.bench.runner import list_images, run_script

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [("local", 1), ("local", 2), ("ray", 1), ("ray", 2)]


def run_cli(folder: Path, out: Path, engine: str, jobs: int, model: str) -> float:
    cmd = [sys.executable, "-m", "semcodec.cli.main", "compress", str(folder), "-o", str(out), "--model", model,
           "--no-semantic", "--no-progress", "--engine", engine, "-j", str(jobs)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return elapsed


def task_overhead(n: int = 300) -> dict:
    """Round trip of an empty Ray task (one at a time), and cost per empty task with many in flight."""
    import ray

    from semcodec.distributed import _run_task

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    init_s = time.perf_counter() - t0
    try:
        remote = ray.remote(num_cpus=1)(_run_task)
        ray.get([remote.remote(1, len, [i]) for i in range(4)])          # start the worker processes
        t0 = time.perf_counter()
        for i in range(n):
            ray.get(remote.remote(1, len, [i]))
        serial = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        ray.get([remote.remote(1, len, [i]) for i in range(n)])
        pipelined = (time.perf_counter() - t0) / n
    finally:
        ray.shutdown()
    return {"ray_init_s": init_s, "task_round_trip_ms": serial * 1e3, "task_pipelined_ms": pipelined * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--count", type=int, default=4, help="images per run (the steady-state run uses twice as many)")
    parser.add_argument("--model", default="semcodec-ms192",
                        help="codec model (semcodec-test with SEMCODEC_CHECKPOINTS=tests/data/checkpoints is the tiny one)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    images = list_images(args.images)
    if len(images) < 2 * args.count:
        raise SystemExit(f"{args.images} holds {len(images)} images; --count {args.count} needs {2 * args.count}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="semcodec-ray-bench-") as tmp:
        tmp = Path(tmp)
        small, large = tmp / "small", tmp / "large"
        small.mkdir()
        large.mkdir()
        for k, p in enumerate(images[: 2 * args.count]):
            if k < args.count:
                shutil.copy(p, small / p.name)
            shutil.copy(p, large / p.name)
        for engine, jobs in CONFIGS:
            t_small = run_cli(small, tmp / f"out-{engine}-{jobs}-s", engine, jobs, args.model)
            t_large = run_cli(large, tmp / f"out-{engine}-{jobs}-l", engine, jobs, args.model)
            extra = t_large - t_small          # n more images, workers already up (noisy when images are cheap)
            row = {"engine": engine, "jobs": jobs, "images": args.count, "wall_s": t_small, "wall_2n_s": t_large,
                   "images_per_s": args.count / t_small,
                   "steady_images_per_s": args.count / extra if extra > 0.05 * t_large else None}
            rows.append(row)
            steady = f"{row['steady_images_per_s']:.2f} img/s" if row["steady_images_per_s"] else "n/a (too noisy)"
            print(f"--engine {engine:<5} -j {jobs}: {t_small:6.1f} s for {args.count} images "
                  f"= {row['images_per_s']:.2f} img/s end to end; {t_large:6.1f} s for {2 * args.count}; "
                  f"steady {steady}", flush=True)
    overhead = task_overhead()
    print(f"Ray: local start {overhead['ray_init_s']:.1f} s; empty task {overhead['task_round_trip_ms']:.2f} ms "
          f"round trip, {overhead['task_pipelined_ms']:.2f} ms each with many in flight")
    report = {"model": args.model, "images": str(args.images), "count": args.count, "runs": rows, "ray": overhead,
              "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    run_script(main)
