"""semcodec as a Pillow image format: ``import semcodec.pillow`` and Pillow reads and writes ``.smc`` files.

As pillow-heif and pillow-jxl-plugin do for their formats, importing this module
registers the format with Pillow (name ``SEMCODEC``, extension ``.smc``, MIME type
``image/x-semcodec``)::

    import semcodec.pillow
    from PIL import Image

    image = Image.open("photo.smc")          # the header is read here (size, mode) ...
    image.load()                             # ... the pixel layer is decoded on first use
    image.save("copy.smc", quality=60)       # any keyword of semcodec.compress: bpp=, size=, effort=, …

Opening reads and checks the whole stream (every CRC) but decodes nothing; the pixels
are decoded (:func:`semcodec.decompress`) when Pillow first needs them, so
``Image.open(...).size`` is cheap. A stream without a pixel layer (semantic-only) opens,
reports its size, and raises :class:`~semcodec.errors.MissingLayerError` when its pixels
are asked for. The image's metadata (EXIF, ICC profile, XMP) is in ``info`` from the
open on, as Pillow's own readers put it. Saving takes the keywords of
:func:`semcodec.compress` (``quality``, ``bpp``, ``size``, ``max_size``, ``effort``,
``semantic``, ``strip_metadata``, …) and writes the stream with the image's metadata
(or the ``exif``, ``icc_profile`` and ``xmp`` given to ``save``, as Pillow's writers take them).
"""

from __future__ import annotations

from PIL import Image, ImageFile

from .bitstream.container import MAGIC, REFINEMENT_LAYER, RESIDUAL_LAYER, read_container
from .layers.refinement.payload import refinement_channels
from .errors import InvalidInputError, MissingLayerError
from .fsutil import MAX_INPUT_BYTES

#: The format's name in Pillow (``Image.open(...).format``).
FORMAT = "SEMCODEC"
#: The keywords of :func:`semcodec.compress` that ``Image.save`` passes on.
SAVE_OPTIONS = ("quality", "bpp", "size", "max_size", "model", "semantic", "semantic_weights", "semantic_only",
                "semantic_bytes", "effort", "strip_metadata", "lossless")


def _accept(prefix: bytes) -> bool:
    return prefix[:len(MAGIC)] == MAGIC


class SemcodecImageFile(ImageFile.ImageFile):
    """A semcodec stream opened by Pillow: header parsed at open, pixel layer decoded on first load."""

    format = FORMAT
    format_description = "semcodec semantic neural image stream"

    def _open(self) -> None:
        data = self.fp.read(MAX_INPUT_BYTES + 1)
        if len(data) > MAX_INPUT_BYTES:
            raise InvalidInputError(f"the stream is larger than {MAX_INPUT_BYTES} bytes, the limit")
        container = read_container(data)               # SemcodecError (not SyntaxError): Pillow passes it on
        header = container.header
        self._stream = data
        self._size = (header.width, header.height)
        refinement = container.layer(REFINEMENT_LAYER)
        # Layer 2 decides the channels when present: it refines a nearly gray image's pixel layer to RGB.
        self._mode = ("L" if header.gray else "RGB") if refinement is None else (
            "L" if refinement_channels(refinement) == 1 else "RGB")
        self._has_pixels = RESIDUAL_LAYER in header.layers
        self.info["semcodec_layers"] = tuple(layer.decode("ascii") for layer in header.layers)
        self.info.update(container.image_metadata().image_info())      # EXIF, ICC profile, XMP
        self.tile = []                                  # no Pillow decoder: load() decodes

    def load(self):
        if self._stream is not None:
            if not self._has_pixels:
                raise MissingLayerError("this semcodec stream has no pixel layer (it is semantic-only); "
                                        "use semcodec.decode_tokens for its tokens")
            from .api import decompress

            self.im = decompress(self._stream).im
            self._stream = None
        return Image.Image.load(self)


def _save(im: Image.Image, fp, filename) -> None:
    """Encode ``im`` with the keywords given to ``Image.save`` (see :data:`SAVE_OPTIONS`)."""
    from .api import compress

    options = {key: im.encoderinfo[key] for key in SAVE_OPTIONS if key in im.encoderinfo}
    given = {key: im.encoderinfo[key] for key in ("exif", "icc_profile", "xmp") if im.encoderinfo.get(key)}
    if given:                    # save(..., exif=…): as Pillow's writers do, it replaces the image's own
        if isinstance(given.get("exif"), Image.Exif):
            given["exif"] = given["exif"].tobytes()
        im = im.copy()
        im.info.update(given)
    fp.write(compress(im, **options))


def register() -> None:
    """Register the format with Pillow (done on import; calling it again changes nothing)."""
    Image.register_open(FORMAT, SemcodecImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, ".smc")
    Image.register_mime(FORMAT, "image/x-semcodec")


register()
