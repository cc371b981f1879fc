"""The package version (semver). Bitstream and checkpoint versions live in their own modules."""

__version__ = "0.3.0"
