"""The tables of the stand-in mail server (a real one keeps its own, elsewhere)."""

from __future__ import annotations

__all__ = ["TABLES"]

TABLES = {
    "mailbox": """CREATE TABLE IF NOT EXISTS mailbox (
        message_id TEXT PRIMARY KEY,
        recipient TEXT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        submissions INTEGER NOT NULL
    )""",
    "mail_greylist": """CREATE TABLE IF NOT EXISTS mail_greylist (
        message_id TEXT PRIMARY KEY
    )""",
}
