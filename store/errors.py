"""The one exception the store raises for anything a user can cause (bad URL, unknown id, bad input)."""
from __future__ import annotations


class StoreError(Exception):
    """A one-line, user-facing message; the CLI prints it without a traceback."""


def one_line(e: BaseException) -> str:
    """The first line of the driver's own message (SQLAlchemy appends SQL and a help link)."""
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__
