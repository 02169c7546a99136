"""Text from a request or the lake, made safe to answer with or to log: one definition for the
API (`api/`) and the monitoring service (`monitoring/`), which both answer a malformed request
with a 422 naming the field and never echoing what was sent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_ERRORS = 20  # a body of 1,000 bad events is answered with the first 20 of its errors


def safe_text(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with every character that is not printable (control
    characters, lone surrogates that UTF-8 cannot encode) escaped: safe to put in a JSON
    answer or a log line."""
    cut = text[:limit]
    if not cut.isprintable():
        cut = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return cut + ("..." if len(text) > limit else "")


def safe_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Validation errors as `{type, loc, msg}`: no `input`, no `ctx`, bounded, encodable."""
    safe = []
    for error in errors[:MAX_ERRORS]:
        loc = [p if isinstance(p, int) else safe_text(str(p), 64) for p in error.get("loc", ())]
        msg = str(error.get("msg", ""))
        if error.get("type") == "json_invalid" and isinstance(error.get("ctx"), dict):
            msg = f"{msg}: {error['ctx'].get('error', '')}"  # says what, not the input
        safe.append(
            {
                "type": safe_text(str(error.get("type", "")), 64),
                "loc": loc,
                "msg": safe_text(msg, 200),
            }
        )
    return safe
