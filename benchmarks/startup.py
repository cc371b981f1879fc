"""Start-up cost of the shell commands: wall time of whole ``semcodec`` processes against ``import torch``.

Each command runs as a fresh process (as a user runs it), interleaved with a bare
``python -c "import torch"`` so that both see the same machine load; the table gives the
median of ``--repeats`` runs and each command's ratio to the bare torch import.

    python benchmarks/startup.py [--image FILE] [--repeats 5] [--model NAME]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wall_time(command: list[str], expect_status: int = 0) -> float:
    """Seconds one process takes, from start to exit; fails on an unexpected exit status."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True)
    elapsed = time.perf_counter() - start
    if result.returncode != expect_status:
        sys.exit(f"{' '.join(command)} exited {result.returncode}: {result.stderr.decode()[-400:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=REPO.parent / "shared" / "data" / "kodak" / "kodim01.png")
    parser.add_argument("--model", default="semcodec-ms192")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not args.image.is_file():
        sys.exit(f"error: {args.image} is not a file (pass --image)")
    semcodec = shutil.which("semcodec") or sys.exit("error: the semcodec command is not on PATH (pip install -e .)")
    work = Path(tempfile.mkdtemp())
    stream, decoded = work / "x.smc", work / "x.png"
    commands = {
        "python -c 'import torch'": ([sys.executable, "-c", "import torch"], 0),
        "semcodec --version": ([semcodec, "--version"], 0),
        "semcodec compress nosuch.png": ([semcodec, "compress", str(work / "nosuch.png")], 2),
        f"semcodec compress {args.image.name}": (
            [semcodec, "compress", str(args.image), "-o", str(stream), "-f", "--model", args.model], 0),
        f"semcodec decompress {stream.name}": ([semcodec, "decompress", str(stream), "-o", str(decoded), "-f"], 0),
        f"semcodec info {stream.name}": ([semcodec, "info", str(stream)], 0),
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, (command, status) in commands.items():     # interleaved: each round sees the same load
            times[name].append(wall_time(command, status))
    torch_s = statistics.median(times["python -c 'import torch'"])
    print(f"| command | median wall time (s, {args.repeats} runs) | × import torch |")
    print("| --- | ---: | ---: |")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| `{name}` | {median:.2f} | {median / torch_s:.2f} |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
