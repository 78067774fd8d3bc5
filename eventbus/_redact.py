"""Keeping secrets out of what eventbus writes down: logs, stored errors, dead letters, errors.

One place every path goes through:

- ``redact(text)`` masks URL passwords and secret-looking query values in any text;
- ``describe_error(error)`` is the one way a failure becomes text (``Type: message``,
  masked and bounded): outbox rows' ``last_error``, CLI output, log arguments;
- every ``eventbus.*`` logger carries ``RedactingFilter`` (``masked_logger(name)`` makes them),
  which masks a record's message, its exception text and its stack text before any
  handler sees it: what a handler raised reaches log records whatever the call logged;
- ``DeadLetter`` masks its ``message`` and ``traceback`` whoever builds it.

A logger's filters see only the records logged to that very logger, not those its
children pass up, so each module's logger gets the filter itself (through ``masked_logger``),
rather than one filter on ``eventbus``.
"""

from __future__ import annotations

import logging
import re

__all__ = ["RedactingFilter", "bounded", "describe_error", "masked_logger", "redact"]

# scheme://user:password@host -> scheme://user:***@host, and ?password=... in query strings.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+(?P<at>@)")
# A value ends at the next parameter, a space or a quote (a valid URL escapes quotes, and
# texts quote URLs: the quote that closes one in a repr is not the secret's).
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|secret|token|api_key|apikey)=)[^&;\s'\"]+",
    re.IGNORECASE,
)

MAX_ERROR_TEXT = 2_000
"""Characters of an error's text that are kept (outbox ``last_error``, a letter's message)."""


def redact(text: str) -> str:
    """``text`` with the passwords of URLs and secret-looking query values masked.

    ``postgresql://app:s3cret@db/app`` becomes ``postgresql://app:***@db/app`` and
    ``?password=s3cret`` becomes ``?password=***`` (also ``token``, ``secret``,
    ``api_key``, ...). Stores and transports call it on every text they write down.
    """
    if "://" in text:
        text = _USERINFO.sub(r"\g<head>***\g<at>", text)
    if "=" in text:
        text = _QUERY_SECRET.sub(r"\g<head>***", text)
    return text


def bounded(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    marker = f"... [{len(text) - limit} more characters cut]"
    return text[: max(0, limit - len(marker))] + marker


def describe_error(error: BaseException, *, limit: int = MAX_ERROR_TEXT) -> str:
    """``error`` as one text, ``Type: message``, secrets masked, at most ``limit``
    characters: what eventbus writes down about a failure."""
    message = str(error)
    name = type(error).__name__
    return bounded(redact(f"{name}: {message}" if message else name), limit)


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every record it sees (never drops one).

    The message is rendered and masked; where masking changed it, the record carries the
    masked text instead of its template and arguments. The exception's and the stack's
    text are rendered and masked the same way, and the exception object is dropped from
    a record whose traceback held a secret (a handler formatting it again would print
    the secret). Records without secrets are left as they are.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is logging's to report, not ours
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            text = redact(record.exc_text)
            if text != record.exc_text:
                record.exc_text, record.exc_info = text, None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def masked_logger(name: str) -> logging.Logger:
    """The logger ``name`` (an ``eventbus.*`` name), masking secrets in what it logs."""
    found = logging.getLogger(name)
    if _FILTER not in found.filters:
        found.addFilter(_FILTER)
    return found
