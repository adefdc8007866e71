"""Deterministic, varied, R1-like answers for the fake upstream (reasoning + markdown answer).

Real DeepSeek R1 output is an English chain of thought ("Okay, so the user wants…", "Hmm, wait…")
followed by a markdown answer with code blocks. ``r1_answer(seed)`` assembles such text from
sentence templates, a few hundred identifiers and code fragments, chosen by a PRNG seeded from
``seed``: the same seed gives the same text, different seeds give different text with the
redundancy of real answers (shared phrasing, different specifics). Compression figures on these
answers are an estimate: real answers repeat more of the user's code.
"""

from __future__ import annotations

import hashlib
import random

_FILES = ["cli.py", "clitool/commands.py", "clitool/config.py", "tests/test_cli.py", "setup.cfg",
          "pyproject.toml", "clitool/logging.py", "README.md", "clitool/runner.py", "clitool/plugins.py",
          "src/server.ts", "src/routes/api.ts", "package.json", "Makefile", "docs/usage.md"]
_THINGS = ["the argument parser", "the config loader", "the logging setup", "the exit code", "the test suite",
           "the retry loop", "the plugin registry", "the dry-run path", "the error handler", "the CLI entry point",
           "the cache layer", "the HTTP client", "the database session", "the JSON schema", "the build script",
           "the environment variables", "the default values", "the help text", "the subcommand table",
           "the output formatter", "the timeout handling", "the signal handler", "the version string"]
_VERBS = ["add", "refactor", "fix", "rename", "document", "test", "remove", "extend", "simplify", "validate",
          "move", "split", "wrap", "type-annotate", "deprecate", "log", "cache", "parallelise"]
_FLAGS = ["--verbose", "--quiet", "--dry-run", "--json", "--color", "--timeout", "--retries", "--output",
          "--config", "--profile", "--no-cache", "--force", "--jobs", "--since", "--limit"]
_NAMES = ["verbose", "quiet", "dry_run", "as_json", "color", "timeout", "retries", "output", "config_path",
          "profile", "use_cache", "force", "jobs", "since", "limit", "level", "handler", "runner", "payload",
          "session", "result", "records", "options", "context", "registry", "attempt", "deadline"]
_OPENERS = ["Okay, so the user wants me to {verb} {thing} in `{file}`.",
            "Alright, let's see. The task is to {verb} {thing}.",
            "Okay, the user is asking to {verb} the `{flag}` option.",
            "Let me start by understanding what {thing} does right now."]
_STEPS = ["First, I need to check how {thing} is wired in `{file}`.",
          "Looking at the file, `{name}` is passed straight to {thing}.",
          "Hmm, wait. If I change {thing}, the tests in `{file2}` might break.",
          "But maybe there's a simpler way: reuse `{name}` instead of adding a new variable.",
          "Alternatively, I could add `{flag}` to the parser and map it to `{name}`.",
          "So the plan is: {verb} {thing}, then update `{file2}`, then run the tests.",
          "Wait, the user said they use Python 3.{minor}, so `match` statements are {ok}.",
          "I should make sure `{name}` defaults to {default} so existing callers keep working.",
          "Let me think about edge cases: what if `{name}` is {default} and `{flag}` is also set?",
          "The logging level should go to DEBUG when `{flag}` is given, otherwise stay at {level}.",
          "Actually, {thing} already reads `{name}` from the environment, so I should respect that too.",
          "Now, how do I test this? A test that calls `main([\"{flag}\"])` and checks {thing}.",
          "Hmm, the existing code catches `{exc}` too broadly; I'll narrow it while I'm here.",
          "I need to read `{file2}` before editing it, to keep the same style."]
_ANSWER_HEADS = ["I'll {verb} {thing} by adding a `{flag}` option.", "Here is the change to `{file}`:",
                 "To {verb} {thing}, update `{file}` as follows:", "The fix is small: {verb} {thing}."]
_CODE = ['parser.add_argument("{flag}", action="store_true", help="{help}")',
         'logging.basicConfig(level=logging.DEBUG if args.{name} else logging.{level})',
         'if args.{name}:\n        log.debug("{help}: %s", {name2})',
         'def {name}_{name2}({name}: int = {default}) -> bool:\n    return {name} > 0',
         'result = handler(cfg, args)\n    if result != 0:\n        log.error("{help} failed with %d", result)',
         'with open(path, encoding="utf-8") as fh:\n        {name} = json.load(fh)',
         'for {name} in {name2}:\n        if not {name}:\n            continue',
         'raise SystemExit(f"{help}: {{{name}!r}}")']
_HELPS = ["print debug output", "show what would change", "write machine-readable output", "retry on errors",
          "skip the cache", "set the log level", "limit the number of items", "override the config file"]


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        verb=rng.choice(_VERBS), thing=rng.choice(_THINGS), file=rng.choice(_FILES), file2=rng.choice(_FILES),
        flag=rng.choice(_FLAGS), name=rng.choice(_NAMES), name2=rng.choice(_NAMES), minor=rng.randint(8, 13),
        ok=rng.choice(["fine", "not available", "allowed"]), default=rng.choice(["None", "False", "0", "3", "''"]),
        level=rng.choice(["INFO", "WARNING", "ERROR"]), exc=rng.choice(["Exception", "OSError", "ValueError"]),
        help=rng.choice(_HELPS))


def _reasoning(rng: random.Random, chars: int) -> str:
    out = [_fill(rng.choice(_OPENERS), rng)]
    size = len(out[0])
    while size < chars:
        para = " ".join(_fill(rng.choice(_STEPS), rng) for _ in range(rng.randint(2, 5)))
        out.append(para)
        size += len(para) + 2
    return "\n\n".join(out)[:chars]


def _content(rng: random.Random, chars: int) -> str:
    out = [_fill(rng.choice(_ANSWER_HEADS), rng)]
    size = len(out[0])
    while size < chars:
        kind = rng.random()
        if kind < 0.4:
            block = "```python\n" + "\n".join(_fill(rng.choice(_CODE), rng)
                                              for _ in range(rng.randint(2, 6))) + "\n```"
        elif kind < 0.7:
            block = "\n".join(f"- {_fill(rng.choice(_STEPS), rng)}" for _ in range(rng.randint(2, 4)))
        else:
            block = " ".join(_fill(rng.choice(_STEPS), rng) for _ in range(rng.randint(1, 3)))
        out.append(block)
        size += len(block) + 2
    return "\n\n".join(out)[:chars]


def r1_answer(seed: str, reasoning_chars: int = 0, content_chars: int = 0) -> tuple[str, str]:
    """(reasoning, content) for ``seed``. A size of 0 picks a varied realistic size (1-6 KB, 0.4-4 KB)."""
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    r_chars = reasoning_chars or int(rng.lognormvariate(7.8, 0.5))  # median ~2.4 KB
    c_chars = content_chars or int(rng.lognormvariate(7.0, 0.6))    # median ~1.1 KB
    return _reasoning(rng, min(r_chars, 16_000)), _content(rng, min(c_chars, 12_000))
