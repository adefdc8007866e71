"""Deterministic Roo-Code-shaped request bodies (docs/protocol.md A.6).

``roo_body()`` builds the body Roo Code sends on the second turn of a task with native tools:
a long system prompt (padded so the whole body is ``target_bytes``), the first user turn with
``<task>`` and ``<environment_details>`` (including the ``# Current Time`` section the proxy
masks), an assistant ``read_file`` tool call, its tool result, and the next user turn; plus
``tools``, ``tool_choice`` and ``parallel_tool_calls``. The same arguments always give the same
bytes. ``nonce`` goes into the task text, so distinct nonces are distinct cache keys.
``tool_result_bytes`` grows the tool result (the file Roo read), e.g. to an 8 MB context.
"""

from __future__ import annotations

import json
from typing import Any

NONCE_PLACEHOLDER = "@@NONCE@@"  # replaced by a per-request id (unique bodies)
DEFAULT_BYTES = 20_480
MODEL = "deepseek/deepseek-r1"

_SECTIONS = [
    ("TOOL USE", "You have access to a set of tools that are executed upon the user's approval. You must use "
     "exactly one tool per message, and every assistant message must include a tool call. You use tools "
     "step-by-step to accomplish a given task, with each tool use informed by the result of the previous "
     "tool use."),
    ("Tool Use Guidelines", "1. Assess what information you already have and what information you need to "
     "proceed with the task. 2. Choose the most appropriate tool based on the task and the tool "
     "descriptions provided. 3. If multiple actions are needed, use one tool at a time per message to "
     "accomplish the task iteratively. 4. After each tool use, the user will respond with the result of "
     "that tool use. This result will provide you with the necessary information to continue your task."),
    ("CAPABILITIES", "- You have access to tools that let you execute CLI commands on the user's computer, "
     "list files, view source code definitions, regex search, read and write files, and ask follow-up "
     "questions. These tools help you effectively accomplish a wide range of tasks, such as writing code, "
     "making edits or improvements to existing files, understanding the current state of a project, "
     "performing system operations, and much more."),
    ("MODES", "- These are the currently available modes: * \"Code\" mode (code) - Use this mode when you "
     "need to write, modify, or refactor code. * \"Architect\" mode (architect) - Use this mode when you "
     "need to plan, design, or strategize before implementation. * \"Ask\" mode (ask) - Use this mode when "
     "you need explanations, documentation, or answers to technical questions. * \"Debug\" mode (debug) - "
     "Use this mode when you're troubleshooting issues, investigating errors, or diagnosing problems."),
    ("RULES", "- The project base directory is: /home/dev/projects/clitool - All file paths must be relative "
     "to this directory. However, commands may change directories in terminals, so respect working "
     "directory specified by the response to execute_command. - You cannot `cd` into a different directory "
     "to complete a task. You are stuck operating from '/home/dev/projects/clitool', so be sure to pass in "
     "the correct 'path' parameter when using tools that require a path. - Do not use the ~ character or "
     "$HOME to refer to the home directory. - When making changes to code, always consider the context in "
     "which the code is being used. Ensure that your changes are compatible with the existing codebase and "
     "that they follow the project's coding standards and best practices."),
    ("SYSTEM INFORMATION", "Operating System: Linux 6.8 Default Shell: /bin/bash Home Directory: /home/dev "
     "Current Workspace Directory: /home/dev/projects/clitool The Current Workspace Directory is the "
     "active VS Code project directory, and is therefore the default directory for all tool operations."),
    ("OBJECTIVE", "You accomplish a given task iteratively, breaking it down into clear steps and working "
     "through them methodically. 1. Analyze the user's task and set clear, achievable goals to accomplish "
     "it. Prioritize these goals in a logical order. 2. Work through these goals sequentially, utilizing "
     "available tools one at a time as necessary. 3. Remember, you have extensive capabilities with access "
     "to a wide range of tools that can be used in powerful and clever ways as necessary to accomplish "
     "each goal. 4. Once you've completed the user's task, you must use the attempt_completion tool to "
     "present the result of the task to the user."),
]

_TOOLS = [
    ("read_file", "Request to read the contents of one or more files. The tool outputs line-numbered "
     "content (e.g. \"1 | const x = 1\") for easy reference when creating diffs or discussing code.",
     {"path": "string"}),
    ("apply_diff", "Request to apply PRECISE, TARGETED modifications to an existing file by searching for "
     "specific sections of content and replacing them.", {"path": "string", "diff": "string"}),
    ("execute_command", "Request to execute a CLI command on the system. Use this when you need to perform "
     "system operations or run specific commands to accomplish any step in the user's task.",
     {"command": "string", "cwd": "string"}),
    ("attempt_completion", "After each tool use, the user will respond with the result of that tool use. "
     "Once you've received the results of tool uses and can confirm that the task is complete, use this "
     "tool to present the result of your work to the user.", {"result": "string"}),
]

_CLI_PY = '''import argparse
import logging
import sys

from clitool import commands, config

log = logging.getLogger("clitool")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clitool", description="Manage clitool projects.")
    parser.add_argument("--config", default=config.DEFAULT_PATH, help="config file")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create a new project")
    init.add_argument("name")
    run = sub.add_parser("run", help="run a task")
    run.add_argument("task")
    run.add_argument("--dry-run", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config.load(args.config)
    handler = getattr(commands, args.command)
    return handler(cfg, args)


if __name__ == "__main__":
    sys.exit(main())
'''


def _system_prompt(size: int) -> str:
    head = ("You are Roo, a highly skilled software engineer with extensive knowledge in many programming "
            "languages, frameworks, design patterns, and best practices.\n\n")
    parts = [head]
    n = 0
    while sum(map(len, parts)) < size:
        title, text = _SECTIONS[n % len(_SECTIONS)]
        parts.append(f"====\n\n{title}\n\n{text}\n\n")
        n += 1
    return "".join(parts)[:max(0, size)]


def _environment(minute: int, visible: str) -> str:
    return ("<environment_details>\n# VSCode Visible Files\n" + visible + "\n\n# VSCode Open Tabs\n"
            "cli.py,clitool/commands.py,clitool/config.py\n\n# Current Time\n"
            f"2026-04-20T10:{minute:02d}:03+02:00\n\n# Current Cost\n$0.00\n\n# Current Mode\n"
            "<slug>code</slug>\n<name>Code</name>\n<model>deepseek/deepseek-r1</model>\n"
            "</environment_details>")


def _tool(name: str, description: str, params: dict[str, str]) -> dict[str, Any]:
    props = {k: {"type": t, "description": f"The {k.replace('_', ' ')}"} for k, t in params.items()}
    return {"type": "function", "function": {
        "name": name, "description": description, "strict": True,
        "parameters": {"type": "object", "properties": props, "required": list(params),
                       "additionalProperties": False}}}


def _file_listing(size: int) -> str:
    """Line-numbered file content as read_file returns it, ``size`` characters (at least the file)."""
    lines = _CLI_PY.splitlines()
    out: list[str] = []
    total = 0
    i = 0
    while True:
        line = f"{i + 1} | {lines[i % len(lines)]}\n"
        if total + len(line) > size and i >= len(lines):
            break
        out.append(line)
        total += len(line)
        i += 1
    return "".join(out)


def roo_doc(*, task: str = "Add a --verbose flag to cli.py", stream: bool = False, nonce: str = "",
            system_bytes: int = 18_000, tool_result_bytes: int = 0, minute: int = 12) -> dict[str, Any]:
    """The body as a dict (see the module docstring); ``system_bytes`` sizes the system prompt."""
    task_text = f"{task} ({nonce})" if nonce else task
    return {
        "model": MODEL,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": _system_prompt(system_bytes)},
            {"role": "user", "content": [
                {"type": "text", "text": f"<task>\n{task_text}\n</task>"},
                {"type": "text", "text": _environment(minute, "cli.py")}]},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_0_1a2b", "type": "function",
                 "function": {"name": "read_file", "arguments": "{\"path\":\"cli.py\"}"}}]},
            {"role": "tool", "tool_call_id": "call_0_1a2b", "content": _file_listing(tool_result_bytes)},
            {"role": "user", "content": [{"type": "text", "text": _environment(minute + 1, "cli.py")}]},
        ],
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
        "tools": [_tool(*t) for t in _TOOLS],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
    }


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def roo_body(*, target_bytes: int = DEFAULT_BYTES, task: str = "Add a --verbose flag to cli.py",
             stream: bool = False, nonce: str = "", tool_result_bytes: int = 0) -> bytes:
    """The body, its system prompt padded so the encoding is exactly ``target_bytes`` long (when it can be).

    The size includes ``nonce``: a body built with ``nonce=NONCE_PLACEHOLDER`` whose placeholder is
    later replaced by another id changes size by the difference in length (a few bytes).
    """
    kw: dict[str, Any] = {"task": task, "stream": stream, "nonce": nonce, "tool_result_bytes": tool_result_bytes}
    base = len(encode(roo_doc(system_bytes=0, **kw)))
    system = max(0, target_bytes - base)
    body = encode(roo_doc(system_bytes=system, **kw))
    # JSON escaping of newlines makes each system character up to 2 bytes: shrink until it fits
    while len(body) > target_bytes and system > 0:
        system -= len(body) - target_bytes
        body = encode(roo_doc(system_bytes=max(0, system), **kw))
    return body


def large_body(target_bytes: int = 8 * 1024 * 1024, *, stream: bool = False) -> bytes:
    """A Roo body of about ``target_bytes`` whose bulk is a huge read_file result (a long conversation)."""
    listing = max(0, target_bytes - DEFAULT_BYTES)
    body = roo_body(target_bytes=target_bytes, stream=stream, tool_result_bytes=listing)
    for _ in range(3):  # JSON escaping makes the listing ~5% longer than its characters: converge
        if len(body) <= target_bytes:
            break
        listing -= int((len(body) - target_bytes) * 0.96) + 64
        body = roo_body(target_bytes=target_bytes, stream=stream, tool_result_bytes=max(0, listing))
    return body
