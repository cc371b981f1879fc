"""Per-file work of the batch commands (module-level so worker processes can pickle it)."""

from __future__ import annotations

from ..batch import BatchItem, BatchOutcome, failure
from ..errors import SemcodecError
from .io import encode_image, read_input_bytes, write_output_bytes


def compress_file(item: BatchItem, options: dict, force: bool) -> BatchOutcome:
    """Compress one image file into one stream file."""
    from .. import api

    try:
        result = api.compress_image(item.source, **options)
        item.output.parent.mkdir(parents=True, exist_ok=True)
        write_output_bytes(item.output, result.data, force=force)
        return BatchOutcome(item, True, bytes_in=item.source.stat().st_size, bytes_out=len(result.data),
                            stream_bytes=len(result.data), pixels=result.width * result.height, notes=result.notes)
    except SemcodecError as e:
        return failure(item, e)


def decompress_file(item: BatchItem, force: bool) -> BatchOutcome:
    """Decode one stream file into one image file."""
    from .. import api

    try:
        data = read_input_bytes(item.source)
        image = api.decompress(data)
        encoded = encode_image(image, item.output)
        item.output.parent.mkdir(parents=True, exist_ok=True)
        write_output_bytes(item.output, encoded, force=force)
        return BatchOutcome(item, True, bytes_in=len(data), bytes_out=len(encoded), stream_bytes=len(data),
                            pixels=image.width * image.height)
    except SemcodecError as e:
        return failure(item, e)
