"""The semcodec bitstream: container format (``container``) and entropy coding (``entropy``)."""
