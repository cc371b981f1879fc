"""Peak memory and time of whole ``semcodec`` processes on large images, and of refusing a hostile stream.

Each size is a mosaic of Kodak photos (mirrored, so that every part looks like a photo), written
as PPM; ``semcodec compress`` and ``semcodec decompress`` run as separate processes and their peak
resident memory (GNU ``time``'s maximum resident set size) and wall time are
reported. The last row is a 90-byte stream whose header claims a huge image: how long and how much
memory the decoder spends before refusing it.

    python benchmarks/memory.py [--images DIR] [--sizes 12,100] [--quality 75]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def mosaic(images: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """A (height, width, 3) uint8 mosaic of the photos, mirrored every other time so that edges meet."""
    out = np.empty((height, width, 3), dtype=np.uint8)
    k = 0
    for top in range(0, height, 512):
        for left in range(0, width, 768):
            tile = images[k % len(images)]
            k += 1
            tile = tile[:, ::-1] if k % 2 else tile
            tile = tile if tile.shape[0] == 512 else np.rot90(tile)[:512, :768]
            h, w = min(512, height - top), min(768, width - left)
            out[top:top + h, left:left + w] = tile[:h, :w]
    return out


def run(command: list[str]) -> tuple[float, float, int, str]:
    """Wall seconds, peak RSS (MiB, GNU time's maximum resident set size of the process) and exit status of
    one child process, and the end of its stderr."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
        start = time.perf_counter()
        result = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, *command], capture_output=True)
        elapsed = time.perf_counter() - start
        peak_kib = float(report.read().strip().splitlines()[-1])
    return elapsed, peak_kib / 1024, result.returncode, result.stderr.decode()[-300:]


def hostile_stream(path: Path, width: int, height: int) -> None:
    """A well-formed stream (valid CRCs, the shipped model's name and hash) whose pixel layer is 64 bytes
    of noise, claiming a ``width`` x ``height`` image."""
    import semcodec
    from semcodec.bitstream.container import RESIDUAL_LAYER, Chunk, Container, Header, read_container, write_container

    real = read_container(semcodec.compress(np.zeros((64, 64, 3), np.uint8), quality=0))
    header = Header(**{**real.header.__dict__, "width": width, "height": height})
    payload = bytes([0, 0, 0]) + bytes(range(4, 68))
    path.write_bytes(write_container(Container(header, (Chunk(RESIDUAL_LAYER, payload),))))
    assert RESIDUAL_LAYER in header.layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--sizes", default="12,100", help="megapixels, 4:3 (comma-separated)")
    parser.add_argument("--quality", default="75")
    args = parser.parse_args()
    files = sorted(args.images.glob("*.png"))
    if not files:
        sys.exit(f"error: no PNG images in {args.images} (pass --images)")
    semcodec = shutil.which("semcodec") or sys.exit("error: the semcodec command is not on PATH (pip install -e .)")
    photos = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    work = Path(tempfile.mkdtemp())
    print("| image | step | wall (s) | peak RSS (MiB) | bytes | exit |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    try:
        for megapixels in (float(m) for m in args.sizes.split(",")):
            width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5 / 16) * 16)
            height = int(round(megapixels * 1e6 / width / 16) * 16)
            source, stream, decoded = work / "in.ppm", work / "x.smc", work / "out.ppm"
            Image.fromarray(mosaic(photos, width, height)).save(source)
            name = f"{width}x{height} ({width * height / 1e6:.1f} MP)"
            for step, command, output in (
                    ("compress", [semcodec, "compress", str(source), "-q", args.quality, "-o", str(stream), "-f",
                                  "--strip"], stream),
                    ("decompress", [semcodec, "decompress", str(stream), "-o", str(decoded), "-f"], decoded)):
                seconds, peak, status, err = run(command)
                size = output.stat().st_size if output.exists() and status == 0 else 0
                print(f"| {name} | {step} | {seconds:.1f} | {peak:.0f} | {size} | {status} |", flush=True)
                if status:
                    print(f"  {err.strip()}", flush=True)
            for f in (source, stream, decoded):
                f.unlink(missing_ok=True)
        hostile = work / "hostile.smc"
        hostile_stream(hostile, 16000, 16000)
        seconds, peak, status, err = run([semcodec, "decompress", str(hostile), "-o", str(work / "h.png"), "-f"])
        print(f"| {hostile.stat().st_size}-byte stream claiming 16000x16000 | decompress (refused) | {seconds:.1f} "
              f"| {peak:.0f} | – | {status} |")
        print(f"\n{err.strip()}")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
