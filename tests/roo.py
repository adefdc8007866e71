"""What Roo Code sends: the request body of protocol.md A.6, shared by the test suites."""

from __future__ import annotations

from typing import Any


def roo_body(text: str = "Add a --verbose flag to cli.py", *, model: str = "deepseek-r1", stream: bool = True,
             when: str = "2026-04-20T10:12:03+02:00", **extra: Any) -> dict[str, Any]:
    """Roo Code's OpenAI Compatible provider (R1 box not ticked): a system prompt, then the task with
    an ``<environment_details>`` block carrying the volatile "# Current Time" section. ``stream=False``
    is Roo's non-streaming path (no ``stream`` field); ``extra`` fields are set on top."""
    body: dict[str, Any] = {
        "model": model,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "You are Roo, a highly skilled software engineer."},
            {"role": "user", "content": [
                {"type": "text", "text": f"<task>\n{text}\n</task>"},
                {"type": "text", "text": f"<environment_details>\n# Current Time\n{when}\n</environment_details>"}]},
        ],
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    body.update(extra)
    return body
