"""The labelled near-duplicate corpus (tests/data/semantic_corpus.txt) as pairs of Roo request bodies.

``pairs()`` yields one ``Pair`` per labelled line: the cached request (``source``) and the new
one (``new``), both built as Roo Code sends them (first turn with ``<task>`` and a different
``# Current Time``, or the enhance-prompt call), ``hit`` True for a rewording with the same
answer and False for a near miss, ``category`` saying which kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.roo import roo_body

CORPUS = Path(__file__).parent / "data" / "semantic_corpus.txt"
HOLDOUT = Path(__file__).parent / "data" / "semantic_holdout.txt"
HOLDOUT2 = Path(__file__).parent / "data" / "semantic_holdout2.txt"
ALL = (CORPUS, HOLDOUT, HOLDOUT2)
ENHANCE = ("Generate an enhanced version of this prompt (reply with only the enhanced prompt - no conversation, "
           "explanations, lead-in, bullet points, placeholders, or surrounding quotes):\n\n")
TOOLS = [{"type": "function", "function": {"name": n, "description": f"Roo's {n} tool", "strict": True,
                                           "parameters": {"type": "object", "properties": {}}}}
         for n in ("read_file", "write_to_file", "apply_diff", "execute_command", "attempt_completion")]


@dataclass(frozen=True, slots=True)
class Pair:
    shape: str  # "task" or "enhance"
    source_text: str
    new_text: str
    hit: bool
    category: str  # "paraphrase" or the near-miss kind

    def source(self) -> dict[str, Any]:
        return body(self.shape, self.source_text, when="2026-04-20T10:12:03+02:00", stream=True)

    def new(self) -> dict[str, Any]:
        return body(self.shape, self.new_text, when="2026-04-21T16:40:55+02:00", stream=False)


def body(shape: str, text: str, *, when: str, stream: bool) -> dict[str, Any]:
    if shape == "enhance":  # completePrompt(): one user message, no stream field
        return {"model": "deepseek-r1", "temperature": 0,
                "messages": [{"role": "user", "content": ENHANCE + text}]}
    return roo_body(text, when=when, stream=stream, tools=TOOLS, tool_choice="auto", parallel_tool_calls=True)


def pairs(path: Path = CORPUS) -> Iterator[Pair]:
    shape, source = "", ""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        mark, _, rest = line.partition(" ")
        if mark == "=":
            shape, _, source = rest.partition(": ")
            assert shape in ("task", "enhance"), f"line {n}: unknown shape {shape!r}"
        elif mark == "+":
            yield Pair(shape, source, rest, True, "paraphrase")
        elif mark == "-":
            category, _, text = rest.partition(": ")
            yield Pair(shape, source, text, False, category)
        else:
            raise ValueError(f"{path}:{n}: a line starts with '=', '+', '-' or '#'")
