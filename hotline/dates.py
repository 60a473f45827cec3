"""Calendar days given in query strings (``from``/``to`` of searches and reports)."""

from __future__ import annotations

from datetime import datetime, tzinfo

# Reports step a day or a year either side of what they are given; dates near year 1 or 9999 would leave
# the calendar, and no case of this product is that old or that far ahead.
MIN_YEAR = 1970
MAX_YEAR = 2200


def parse_day(value: str, tz: tzinfo) -> datetime:
    """Midnight of a ``YYYY-MM-DD`` day in ``tz``; ValueError for another form or a year out of range."""
    day = datetime.strptime(value, "%Y-%m-%d")
    if not MIN_YEAR <= day.year <= MAX_YEAR:
        raise ValueError(f"year {day.year} outside {MIN_YEAR}-{MAX_YEAR}")
    return day.replace(tzinfo=tz)
