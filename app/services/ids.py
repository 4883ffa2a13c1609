"""Integers from text (a path, a query, a header, a stored spec), parsed in one place: ASCII digits
only. ``str.isdigit()`` takes '²', which ``int()`` then refuses (a 500), and ``int()`` takes '+1',
' 1', '1\\n', '1_0' and '١' alike: an id has one spelling, anything else is a 4xx."""

from __future__ import annotations

import re

from pydantic import BeforeValidator

from app.core.errors import invalid
from app.db.models import MAX_ID

DIGITS = re.compile(r"[0-9]{1,20}")  # fullmatch: "$" would also match before a final newline


def is_digits(text) -> bool:
    return isinstance(text, str) and DIGITS.fullmatch(text) is not None


def parse_int(text, loc: str, lo: int = 1, hi: int = MAX_ID) -> int:
    """``text`` as an integer in [lo, hi], or a 422 naming ``loc``."""
    if not is_digits(text) or not lo <= int(text) <= hi:
        raise invalid(loc, f"{str(text)[:40]!r} is not an integer in [{lo}, {hi}] (ASCII digits only)")
    return int(text)


def _digits_only(value):
    """For a path or query parameter: FastAPI hands it over as text, which pydantic's int would take
    in any of the spellings above."""
    if isinstance(value, str) and not is_digits(value):
        raise ValueError(f"{value[:40]!r} is not a whole number of ASCII digits")
    return value


Digits = BeforeValidator(_digits_only)  # Annotated[int, Digits, Path(...)]: an integer in a path or query
