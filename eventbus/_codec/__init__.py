"""The JSON codec, one idea a module; ``JSONCodec`` (in ``_json_codec``) is the whole of
what the rest of eventbus uses, and its module docstring tells how the pieces fit."""

from ._json_codec import JSONCodec

__all__ = ["JSONCodec"]
