"""Fast JSON on the relay's per-chunk path: orjson, with the standard library as the exact fallback.

``dumps`` gives compact UTF-8 JSON as ``json.dumps(obj, ensure_ascii=False, separators=(",", ":"))``
would (the same text for what r1proxy relays; numbers may be spelled differently, e.g. ``1e-05`` as
``0.00001``, and NaN/Infinity, which are not JSON, become ``null``); what orjson refuses (integers
beyond 64 bits, non-string keys, lone surrogates) goes through ``json``. ``loads`` parses a text as
``json.loads`` does: whatever orjson rejects (NaN/Infinity literals, lone surrogate escapes, nesting
past its limit) or would read differently (integers beyond 64 bits) is parsed by ``json``, which
raises as before when it is invalid.
Request bodies keep their own strict parser (``jsonbody``) and cache keys their canonical form
(``cache.keys``): neither goes through here.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# orjson reads an integer beyond 64 bits as a float (precision lost): a text with a run of 19 digits goes
# to json (the run can also be text inside a string; json then reads it, as before). Found by mapping
# every ASCII digit to "9" and looking for nineteen of them: ~2.5 us on a 3 KB chunk, where a regex
# search took ~35 us (more than the parse it guards). JSON numbers are ASCII digits only.
_DIGITS = bytes.maketrans(b"0123456789", b"9" * 10)
_LONG_RUN = b"9" * 19
# one encoder for the fallback: json.dumps with options builds a new JSONEncoder per call
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError: huge ints, non-str keys, lone surrogates
        return _ENCODER.encode(obj).encode()


def long_digit_run(raw: bytes) -> bool:
    """Whether ``raw`` holds 19 ASCII digits in a row (where orjson and json may read a number apart)."""
    return _LONG_RUN in raw.translate(_DIGITS)


def loads(text: str | bytes) -> Any:
    """Parsed JSON (of a text, or of UTF-8 bytes); raises ``ValueError`` (or ``RecursionError``) as
    ``json.loads`` does."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if not long_digit_run(raw):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)
