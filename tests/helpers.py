"""Constants and small helpers shared by the tests (importable as ``helpers``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
SAMPLE = REPO / "assets" / "sample.jpg"
SHARED = Path(os.environ.get("SEMCODEC_SHARED", REPO.parent / "shared"))
KODAK = SHARED / "data" / "kodak"
TEST_MODEL = "semcodec-test"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def pixels_digest(image) -> str:
    """sha256 of a PIL image's RGB pixels (what a bit-exact decode must reproduce)."""
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def pixels_digest_in_another_process(stream: Path) -> str:
    """Decode ``stream`` in a fresh Python process with one torch/OpenMP thread (and the test checkpoints)
    and return its :func:`pixels_digest`: the cross-process, cross-thread-count determinism check."""
    import subprocess
    import sys

    code = ("import sys, hashlib, numpy as np, torch; torch.set_num_threads(1); import semcodec; "
            "im = semcodec.decompress(open(sys.argv[1], 'rb').read()); "
            "print(hashlib.sha256(np.asarray(im.convert('RGB')).tobytes()).hexdigest())")
    env = dict(os.environ, SEMCODEC_CHECKPOINTS=str(TEST_DATA / "checkpoints"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code, str(stream)], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    return out.stdout.strip()


def rgb_icc_profile(red_xyz, green_xyz, blue_xyz, description: str, gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 display profile (matrix/TRC) with the given D50 colorants and a pure gamma curve.

    Pillow can only create sRGB, LAB and XYZ profiles, so the tests build other RGB colour
    spaces byte by byte (ICC.1:2001-04, sections 6 and 6.5).
    """
    import struct

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(v) -> bytes:
        return b"XYZ " + bytes(4) + b"".join(s15(c) for c in v)

    ascii_text = description.encode("ascii") + b"\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(ascii_text)) + ascii_text + bytes(4 + 4 + 2 + 1 + 67)
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"rXYZ", xyz(red_xyz)),
            (b"gXYZ", xyz(green_xyz)), (b"bXYZ", xyz(blue_xyz)), (b"rTRC", curve), (b"gTRC", curve),
            (b"bTRC", curve), (b"cprt", b"text" + bytes(4) + b"none\0")]
    table, data = b"", b""
    offset = 128 + 4 + 12 * len(tags)
    for signature, body in tags:
        body += bytes(-len(body) % 4)                           # tags start on 4-byte boundaries
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + bytes(4) + bytes((2, 0x10, 0, 0)) + b"mntrRGB XYZ " + bytes(12) + b"acsp"
              + bytes(24) + bytes(4) + xyz((0.9642, 1.0, 0.8249))[8:] + bytes(4) + bytes(16) + bytes(28))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


#: sRGB's colorants adapted to D50, as in the standard sRGB ICC profile.
SRGB_RED_XYZ, SRGB_GREEN_XYZ, SRGB_BLUE_XYZ = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)


#: XMP of :func:`jpeg_with_metadata`; its tiff:Orientation is dropped once the orientation is applied.
XMP_PACKET = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
              b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6" '
              b'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator>Ada</dc:creator></rdf:Description>'
              b'</rdf:RDF></x:xmpmeta>')


def jpeg_with_metadata(size=(64, 48), orientation: int = 6) -> bytes:
    """A small camera-like JPEG (the sample photo, resized): EXIF with an orientation, a camera make and a date
    in its Exif IFD, the sRGB ICC profile Pillow makes, and :data:`XMP_PACKET` (with the same orientation)."""
    import io

    from PIL import Image, ImageCms

    exif = Image.Exif()
    exif[0x0112] = orientation                                  # Orientation
    exif[0x010F] = "SemcodecCam"                                # Make
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"        # Exif IFD: DateTimeOriginal
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buf = io.BytesIO()
    Image.open(SAMPLE).convert("RGB").resize(size).save(buf, "JPEG", quality=90, exif=exif, icc_profile=srgb,
                                                         xmp=XMP_PACKET.replace(b'"6"', b'"%d"' % orientation))
    return buf.getvalue()


def run_cli_in_fresh_interpreter(*args: str, forbidden: tuple[str, ...] = (), env: dict | None = None):
    """``semcodec ARGS`` in a fresh Python process (imports are per process); returns the completed process and
    the modules of ``forbidden`` that the command imported (read from the last line of its stdout)."""
    import ast
    import subprocess
    import sys

    script = ("import sys\n"
              "from semcodec.cli.main import main\n"
              "sys.argv = ['semcodec', *sys.argv[1:]]\n"
              "try:\n"
              "    main()\n"
              "finally:\n"
              f"    print('imported:', [m for m in {forbidden!r} if m in sys.modules])\n")
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                            env=env)
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    imported = ast.literal_eval(last.removeprefix("imported:").strip()) if last.startswith("imported:") else None
    return result, imported


def csv_rows(path) -> list[dict]:
    """The rows of a CSV file with a header, as dicts."""
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))
