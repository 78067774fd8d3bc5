"""Keeping secrets out of what eventbus writes down: logs, dead letters, reprs, errors."""

from __future__ import annotations

import re

__all__ = ["bounded", "redact"]

# scheme://user:password@host -> scheme://user:***@host, and ?password=... in query strings.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+(?P<at>@)")
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|secret|token|api_key|apikey)=)[^&;\s]+", re.IGNORECASE
)


def redact(text: str) -> str:
    """``text`` with the passwords of URLs and secret-looking query values masked."""
    text = _USERINFO.sub(r"\g<head>***\g<at>", text)
    return _QUERY_SECRET.sub(r"\g<head>***", text)


def bounded(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    marker = f"... [{len(text) - limit} more characters cut]"
    return text[: max(0, limit - len(marker))] + marker
