"""Layer-0 encoding speed with full-size towers: semcodec's overhead over the tower's own forward pass.

No pretrained weights are needed: each tower is built at full size with random weights
(their values do not change the cost), written to a temporary file and given to semcodec
with ``--semantic-weights``, as a user with the real file would. For each tower:

1. **fixed cost**: a process that imports semcodec and loads the tower, nothing else.
2. **forward**: a process that also reads the ``--images`` Kodak images and runs the tower on
   each (``tower.tokens``, preprocessing included): the baseline.
3. **calibrate**: ``semcodec calibrate`` over ``--calib-images`` training photos
   (``../shared/data/train``, never Kodak).
4. **compress**: ``semcodec compress --semantic-only -j 1 -v`` over the same Kodak images in
   one batch, at the default rate and with ``--size`` (the rate search), using that calibration.

Every run is a separate process with the same thread count; per image = ``(run - fixed) / images``,
in wall time and in CPU time (user + system, less sensitive to other load on a shared machine), and
"steady" = the median per-image time after the first (as ``-v`` reports it). Peak memory is the
process's maximum RSS.

Targets (issue 30): a semantic-only compress in batch at most 1.3x the tower's forward time
per image; calibration at most 1.2x (forward time x images). Prints a markdown table.

    python benchmarks/semantic_speed.py [--towers clip-l14-336,siglip-so400m-384] [--images 8]
        [--calib-images 16] [--size 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import semcodec._compat  # noqa: E402,F401  (before open_clip / transformers)

from semcodec.models import semantic as sem  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def random_tower_weights(name: str, path: Path, seed: int = 0) -> Path:
    """Writes a weights file of tower ``name`` at full size with random weights (``randomize`` of
    ``benchmarks/tower_equivalence.py``), in the naming ``--semantic-weights`` reads:
    ``visual.*`` for CLIP and SigLIP (open_clip's), ``visual.*`` for Qwen2.5-VL (Qwen's)."""
    from safetensors.torch import save_file
    from tower_equivalence import randomize

    spec = sem.semantic_spec(name)
    if spec.variable_grid:
        from semcodec.models.qwen_vl import build_qwen_visual

        visual = build_qwen_visual(spec.config["vision_cfg"], init=False)
    else:
        visual = sem._build_visual(spec)
    randomize(visual, seed)
    save_file({"visual." + k: v.contiguous() for k, v in visual.state_dict().items()}, str(path))
    del visual
    return path


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Runs ``cmd``; returns its wall and CPU seconds (user + system), peak RSS (GiB) and stderr."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code:
        sys.exit(f"{' '.join(cmd)} failed ({code}):\n{stderr[-2000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 2**20, "stderr": stderr}


# The tower alone, as a user script would run it: import, load, then each image read and run through the tower.
FORWARD_SCRIPT = """
import sys, time
import semcodec._compat
from PIL import Image
from semcodec.imageio import load_rgb
from semcodec.models.semantic import load_tower
tower = load_tower(sys.argv[1], weights=sys.argv[2])
for path in sys.argv[3:]:
    t0 = time.perf_counter()
    tower.tokens([Image.fromarray(load_rgb(path))])
    print(f"{path} -> tokens; {time.perf_counter() - t0:.2f} s", file=sys.stderr)
"""


def per_file_seconds(stderr: str) -> list[float]:
    """The ``; X.XX s`` of each ``-v`` line of a batch, in the order printed."""
    return [float(m.group(1)) for m in re.finditer(r"-> .*; ([0-9.]+) s$", stderr, re.M)]


def measure(name: str, args, tmp: Path) -> dict:
    kodak = sorted((args.kodak).glob("*.png"))[:args.images]
    train = sorted(p for p in args.train.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if len(kodak) < args.images or len(train) < args.calib_images:
        sys.exit(f"need {args.images} Kodak images in {args.kodak} and {args.calib_images} in {args.train}")
    weights = random_tower_weights(name, tmp / f"{name}.safetensors")
    env = dict(os.environ, SEMCODEC_CALIBRATION_PATH=str(tmp / "cal"), OMP_NUM_THREADS=str(args.threads),
               PYTHONWARNINGS="ignore")
    script = Path(sys.executable).parent / "semcodec"
    exe = [str(script)] if script.is_file() else [shutil.which("semcodec") or "semcodec"]
    out = {"tower": name}

    def log(label: str) -> None:
        r = out[label]
        files = f" ({', '.join(f'{s:.1f}' for s in r['files'])})" if "files" in r else ""
        print(f"  {name}: {label} {r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU, {r['rss']:.2f} GiB{files}",
              file=sys.stderr)

    out["fixed"] = run_measured([sys.executable, "-c", FORWARD_SCRIPT, name, str(weights)], env)
    log("fixed")
    out["forward"] = run_measured([sys.executable, "-c", FORWARD_SCRIPT, name, str(weights), *map(str, kodak)], env)
    out["forward"]["files"] = per_file_seconds(out["forward"]["stderr"])
    log("forward")

    cal_dir = tmp / "cal"
    cal_dir.mkdir(exist_ok=True)
    cal_images = tmp / "train"
    cal_images.mkdir(exist_ok=True)
    for p in train[:args.calib_images]:
        (cal_images / p.name).symlink_to(p)
    cal = cal_dir / f"calibration-{name}.safetensors"
    out["calibrate"] = run_measured(
        exe + ["calibrate", "--semantic", name, "--semantic-weights", str(weights), "--images", str(cal_images),
               "-o", str(cal), "--no-progress"], env)
    log("calibrate")

    batch = tmp / "kodak"
    batch.mkdir(exist_ok=True)
    for p in kodak:
        (batch / p.name).symlink_to(p)
    for label, extra in (("compress", []), ("compress_size", ["--size", str(args.size)])):
        r = run_measured(exe + ["compress", str(batch), "-o", str(tmp / label), "--semantic-only", "--semantic",
                                name, "--semantic-weights", str(weights), "-j", "1", "-v", "--no-progress", *extra],
                         env)
        r["files"] = per_file_seconds(r["stderr"])
        if len(r["files"]) != args.images:
            sys.exit(f"{label}: expected {args.images} per-file times in:\n{r['stderr'][-2000:]}")
        out[label] = r
        log(label)
    if args.interleaved:
        out["interleaved"] = interleaved(name, weights, cal_dir, kodak, sorted(cal_images.iterdir()), args.size)
        print(f"  {name}: interleaved {out['interleaved']}", file=sys.stderr)
    weights.unlink()
    return out


def interleaved(name: str, weights: Path, cal_dir: Path, kodak: list[Path], train: list[Path], size: int) -> dict:
    """In this process, image by image: the tower's forward, then ``compress_image`` at the default rate and with
    ``size`` (each runs the tower itself), so that other load on a shared machine hits both sides of each ratio
    alike; then ``calibrate`` over ``train`` between two passes of plain forwards over the same photos.
    Returns per-image median ratios (wall and this process's CPU time) and the calibration ratio."""
    from PIL import Image

    from semcodec import api
    from semcodec.imageio import load_rgb
    from semcodec.layers.semantic import calibrate

    os.environ["SEMCODEC_CALIBRATION_PATH"] = str(cal_dir)
    tower, _ = api._semantic_models(name, str(weights))

    def clock(fn) -> tuple[float, float]:
        w, c = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - w, time.process_time() - c

    ratios = {"compress": [], "compress_size": []}
    cpu_ratios = {"compress": [], "compress_size": []}
    clock(lambda: tower.tokens([Image.fromarray(load_rgb(kodak[0]))]))  # warm-up
    for path in kodak:
        fw, fc = clock(lambda: tower.tokens([Image.fromarray(load_rgb(path))]))
        for label, extra in (("compress", {}), ("compress_size", {"size": size})):
            w, c = clock(lambda: api.compress_image(path, semantic=name, semantic_weights=str(weights),
                                                    semantic_only=True, **extra))
            ratios[label].append(w / fw)
            cpu_ratios[label].append(c / fc)
    out = {k: statistics.median(v) for k, v in ratios.items()}
    out.update({k + "_cpu": statistics.median(v) for k, v in cpu_ratios.items()})

    def forwards() -> None:
        for p in train:
            tower.tokens([Image.fromarray(load_rgb(p))])

    f1 = clock(forwards)
    cw, cc = clock(lambda: calibrate(tower, train))
    f2 = clock(forwards)
    out["calibrate"] = cw / ((f1[0] + f2[0]) / 2)
    out["calibrate_cpu"] = cc / ((f1[1] + f2[1]) / 2)
    out["forward_train"] = (f1[0] + f2[0]) / 2 / len(train)
    return out


def report(r: dict, args) -> str:
    """Per image = (wall − fixed) / images; CPU likewise; steady = the median per-file time after the first."""
    n, m = args.images, args.calib_images
    fixed = r["fixed"]

    def per(label: str, count: int, key: str) -> float:
        return (r[label][key] - fixed[key]) / count

    f_wall, f_cpu = per("forward", n, "wall"), per("forward", n, "cpu")
    f_steady = statistics.median(r["forward"]["files"][1:] or r["forward"]["files"])
    lines = [f"\n### {r['tower']} (random full-size weights, {args.threads} threads)\n",
             "| run | wall (s) | per image: wall (s) | × forward | CPU (s) | × forward | steady (s) | × forward "
             "| target | peak RSS (GiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| import + load the tower (the fixed cost) | {fixed['wall']:.1f} | – | – | {fixed['cpu']:.1f} "
             "| – | – "
             f"| – | – | {fixed['rss']:.2f} |",
             f"| tower forward, {n} Kodak images | {r['forward']['wall']:.1f} | {f_wall:.2f} | 1.00 "
             f"| {per('forward', n, 'cpu'):.2f} | 1.00 | {f_steady:.2f} | 1.00 | – | {r['forward']['rss']:.2f} |"]
    w, c = per("calibrate", m, "wall"), per("calibrate", m, "cpu")
    lines.append(f"| `semcodec calibrate`, {m} train images | {r['calibrate']['wall']:.1f} | {w:.2f} "
                 f"| {w / f_wall:.2f} "
                 f"| {c:.2f} | {c / f_cpu:.2f} | – | – | ≤ 1.2 | {r['calibrate']['rss']:.2f} |")
    for label, what in (("compress", "default rate"), ("compress_size", f"--size {args.size}")):
        w, c = per(label, n, "wall"), per(label, n, "cpu")
        steady = statistics.median(r[label]["files"][1:])
        lines.append(f"| `compress --semantic-only -j 1`, {n} Kodak, {what} | {r[label]['wall']:.1f} | {w:.2f} "
                     f"| {w / f_wall:.2f} | {c:.2f} | {c / f_cpu:.2f} | {steady:.2f} | {steady / f_steady:.2f} "
                     f"| ≤ 1.3 | {r[label]['rss']:.2f} |")
    if "interleaved" in r:
        i = r["interleaved"]
        lines += ["", "Interleaved in one process (each ratio over the same image, forward then compress; "
                  f"median of {n}):",
                  "", "| run | × forward (wall) | × forward (CPU) | target |", "|---|---:|---:|---:|",
                  f"| compress --semantic-only, default rate | {i['compress']:.2f} | {i['compress_cpu']:.2f} "
                  "| ≤ 1.3 |",
                  f"| compress --semantic-only --size {args.size} | {i['compress_size']:.2f} "
                  f"| {i['compress_size_cpu']:.2f} | ≤ 1.3 |",
                  f"| calibrate, {m} train images (÷ {m} forwards, {i['forward_train']:.2f} s each) "
                  f"| {i['calibrate']:.2f} | {i['calibrate_cpu']:.2f} | ≤ 1.2 |"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--towers", default="clip-l14-336", help="comma-separated tower names")
    ap.add_argument("--images", type=int, default=8, help="Kodak images in the compress batch")
    ap.add_argument("--calib-images", type=int, default=16, help="training images for semcodec calibrate")
    ap.add_argument("--size", type=int, default=1000, help="--size of the rate-searched compress")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, here and in the subprocesses")
    ap.add_argument("--no-interleaved", dest="interleaved", action="store_false",
                    help="skip the in-process interleaved ratios")
    ap.add_argument("--kodak", type=Path, default=DATA / "kodak")
    ap.add_argument("--train", type=Path, default=DATA / "train")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = []
    for name in [t.strip() for t in args.towers.split(",") if t.strip()]:
        with tempfile.TemporaryDirectory(prefix="semcodec-speed-") as tmp:
            results.append(measure(name, args, Path(tmp)))
    print(f"## Layer-0 encoding speed ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end)")
    for r in results:
        print(report(r, args))


if __name__ == "__main__":
    main()
