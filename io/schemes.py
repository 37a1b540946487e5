"""URI schemes a manifest's image and mask URIs may use (``--allowed-schemes``).

By default local files and the object stores. Not http(s), ftp, memory, data or chained "a::b" URLs: a manifest
from elsewhere must not make workers fetch arbitrary endpoints (instance metadata, internal services).
Kept apart from ``prepare`` so that the command line's settings can use it without importing the image code.
"""

from __future__ import annotations

import re

DEFAULT_ALLOWED_SCHEMES = ("file", "s3", "gs", "gcs", "az", "abfs", "abfss")

_SCHEME_NAME = re.compile(r"[a-z][a-z0-9+.-]*")


def valid_scheme_list(schemes) -> bool:
    """A non-empty tuple of lower-case URI scheme names."""
    return (isinstance(schemes, tuple) and bool(schemes)
            and all(isinstance(x, str) and _SCHEME_NAME.fullmatch(x) for x in schemes))
