"""The converter's one error: an input it cannot convert, with the reason."""

__all__ = ["ConversionError"]


class ConversionError(ValueError):
    """An input this converter cannot convert, with the reason (file, mmdetection key, version)."""
