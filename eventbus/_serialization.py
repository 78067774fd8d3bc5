"""The JSON codec moved to the package ``eventbus._codec``, one idea a module; the names
its importers use are re-exported here until they import from there."""

from ._codec import JSONCodec
from ._codec._envelope_fields import _time_text
from ._codec._scalars import _uuid_text

__all__ = ["JSONCodec", "_time_text", "_uuid_text"]
