"""The exact partition: a near-duplicate may only differ in the final user text, which must be free prose."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from r1proxy.cache.keys import KEY_VERSION, SLOT, KeyMaker
from r1proxy.cache.semantic.partition import Refusal, Split, split
from r1proxy.config import ROO_CURRENT_TIME
from tests.roo import roo_body
from tests.semantic_corpus import ENHANCE

KEYS = KeyMaker([ROO_CURRENT_TIME])


def part(body: dict[str, Any], **kw: Any) -> Split:
    s = split(KEYS, "openrouter", body, **kw)
    assert isinstance(s, Split), s
    return s


def refusal(body: dict[str, Any]) -> str:
    s = split(KEYS, "openrouter", body)
    assert isinstance(s, Refusal), s
    return s.reason


def test_reworded_first_turns_share_a_partition_and_only_the_task_text_is_compared() -> None:
    a = part(roo_body("Add a --verbose flag to cli.py", when="2026-04-20T10:00:00Z"))
    b = part(roo_body("add a verbose option to cli.py", when="2026-04-21T18:30:00Z", stream=False))
    assert a.partition == b.partition
    assert (a.text, b.text) == ("Add a --verbose flag to cli.py", "add a verbose option to cli.py")


def test_the_partition_key_is_never_a_cache_key() -> None:
    body = roo_body()
    s = part(body)
    key, _ = KEYS.cache_key("openrouter", body)
    assert key.startswith(KEY_VERSION + ":") and not s.partition.startswith(KEY_VERSION + ":")
    assert s.partition != key


@pytest.mark.parametrize("change", [
    lambda b: b.update(model="other-model"),
    lambda b: b.update(temperature=0.7),
    lambda b: b.update(tools=[{"type": "function", "function": {"name": "read_file"}}]),
    lambda b: b["messages"][0].update(content="You are Roo, a different system prompt."),
    lambda b: b["messages"][1]["content"][1].update(
        text="<environment_details>\n# VSCode Open Tabs\nmain.py\n</environment_details>"),
    lambda b: b["messages"].insert(1, {"role": "user", "content": "an earlier turn"}),
])
def test_everything_but_the_text_is_part_of_the_partition(change: Any) -> None:
    base = roo_body("Add a --verbose flag to cli.py")
    other = copy.deepcopy(base)
    change(other)
    assert part(base).partition != part(other).partition


def test_namespace_and_share_partition_separate_too() -> None:
    body = roo_body()
    assert part(body).partition != part(body, namespace="team-b").partition
    assert part(body).partition != part(body, share="key:alice").partition


def test_enhance_prompt_compares_the_draft_not_roos_instruction() -> None:
    a = part({"model": "m", "messages": [{"role": "user", "content": ENHANCE + "add dark mode"}]})
    b = part({"model": "m", "messages": [{"role": "user", "content": ENHANCE + "add a dark mode"}]})
    assert a.partition == b.partition and a.text == "add dark mode"


def test_a_turn_answering_a_tool_call_is_not_eligible() -> None:
    body = roo_body()
    body["messages"] += [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "file contents"},
        {"role": "user", "content": [{"type": "text", "text": "Now add tests"}]},
    ]
    assert refusal(body) == "turn answers a tool call"
    body["messages"] = body["messages"][:-1]
    assert refusal(body) == "final message is not a user message"


@pytest.mark.parametrize("text", [
    "Fix this:\n```python\nx = 1\n```",
    "Apply this:\n--- a/cli.py\n+++ b/cli.py\n@@ -1 +1 @@\n-x\n+y",
    "<<<<<<< SEARCH\nold\n=======\nnew\n>>>>>>> REPLACE",
    "Look at <file_content path=\"cli.py\">x</file_content>",
    "x" * 2001,
])
def test_code_diffs_files_and_long_texts_are_not_eligible(text: str) -> None:
    assert refusal(roo_body(text))


def test_images_and_texts_without_free_prose_are_not_eligible() -> None:
    body = roo_body()
    body["messages"][1]["content"].append({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}})
    assert "non-text" in refusal(body)
    env_only = roo_body()
    env_only["messages"][1]["content"] = env_only["messages"][1]["content"][1:]
    assert refusal(env_only) == "no free text"


def test_the_slot_stands_in_the_canonical_form() -> None:
    # the partition is the canonical form of the body with the text replaced, hashed by KeyMaker
    body = roo_body("Add a --verbose flag to cli.py")
    slotted = copy.deepcopy(body)
    slotted["messages"][1]["content"][0]["text"] = f"<task>\n{SLOT}\n</task>"
    assert part(body).partition == KEYS.semantic_key("openrouter", slotted)
