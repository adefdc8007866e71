"""The CLI on a real database: check-config, cache ls/show/purge/vacuum/backup/path, logs, stats, errors."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from r1proxy.cli import EXIT_CONFIG, main
from tests.conftest import UPSTREAM_KEY


def write_config(tmp_path: Path, base_url: str) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\nport = 1\n'
                   f'[upstreams.openrouter]\nbase_url = "{base_url}"\n')
    return cfg


async def fill(proxy: Any) -> None:
    client = await proxy()
    for text in ("first question", "second question", "first question"):
        r = await client.post("/chat/completions", json={"model": "deepseek-r1", "stream": False,
                                                         "messages": [{"role": "user", "content": text}]})
        assert r.status == 200
    await client.close()  # flushes the writer and the request log


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


async def test_cache_commands_on_a_real_database(proxy: Any, fake_server: Any, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    await fill(proxy)
    cfg = str(write_config(tmp_path, fake_server.base_url))

    code, out, _ = await asyncio.to_thread(run, capsys, "--config", cfg, "cache", "path")
    assert code == 0 and out.strip() == str(tmp_path / "state" / "r1proxy.db")

    code, out, _ = await asyncio.to_thread(run, capsys, "--config", cfg, "cache", "ls")
    assert code == 0 and len(out.strip().splitlines()) == 2 and "Answer to: first question" in out
    key = next(line.split()[0] for line in out.splitlines() if "first question" in line)

    code, out, _ = await asyncio.to_thread(run, capsys, "--config", cfg, "cache", "show", key)
    shown = json.loads(out)
    assert code == 0 and shown["key"] == key
    assert shown["request"]["messages"][0]["content"] == "first question"  # the canonical request
    assert shown["completion"]["choices"][0]["message"]["content"].startswith("Answer to: first question")

    code, out, _ = await asyncio.to_thread(run, capsys, "--config", cfg, "logs", "-n", "5")
    assert code == 0 and len(out.strip().splitlines()) == 3 and " HIT " in out and UPSTREAM_KEY not in out

    code, out, _ = await asyncio.to_thread(run, capsys, "--config", cfg, "stats", "--json")
    stats = json.loads(out)
    assert code == 0 and stats["today"]["requests"] == 3 and stats["today"]["hits"] == 1
    assert stats["disk"]["entries"] == 2 and stats["server"] == "down"

    backup = tmp_path / "backup.db"
    code, out, _ = await asyncio.to_thread(run, capsys, "--config", cfg, "cache", "backup", str(backup))
    assert code == 0 and sqlite3.connect(backup).execute("SELECT COUNT(*) FROM cache_entries").fetchone()[0] == 2
    code, _, err = await asyncio.to_thread(run, capsys, "--config", cfg, "cache", "backup", str(backup))
    assert code == 1 and "already exists" in err and "\n" not in err.strip()

    code, out, _ = await asyncio.to_thread(run, capsys, "--config", cfg, "cache", "purge", "--older-than", "1d")
    assert code == 0 and "purged 0" in out
    code, out, _ = await asyncio.to_thread(run, capsys, "--config", cfg, "cache", "purge", "--all")
    assert code == 0 and "purged 2" in out
    code, out, _ = await asyncio.to_thread(run, capsys, "--config", cfg, "cache", "vacuum")
    assert code == 0 and "vacuumed" in out


@pytest.mark.parametrize("argv,needle", [
    (["cache", "purge"], "needs --model, --older-than or --all"),
    (["cache", "show", "r1:nope"], "no cache entry"),
    (["cache", "purge", "--older-than", "soon"], "duration"),
])
async def test_cli_errors_are_one_line(proxy: Any, fake_server: Any, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    await fill(proxy)
    cfg = str(write_config(tmp_path, fake_server.base_url))
    code, _, err = await asyncio.to_thread(run, capsys, "--config", cfg, *argv)
    assert code != 0 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_no_database_yet_and_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:1/api/v1")
    code, _, err = run(capsys, "--config", str(cfg), "stats")
    assert code == 1 and "no database" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[cache]\nttl = true\n")
    code, _, err = run(capsys, "--config", str(bad), "check-config")
    assert code == EXIT_CONFIG and "cache.ttl" in err and str(bad) in err
    code, _, err = run(capsys, "--config", str(tmp_path / "missing.toml"), "check-config")
    assert code == EXIT_CONFIG and "no such config file" in err


def test_check_config_redacts_the_upstream_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", UPSTREAM_KEY)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[keys]]\nname = "roo"\nkey = "local-secret-key"\n')
    code, out, _ = run(capsys, "--config", str(cfg), "check-config")
    doc = json.loads(out)
    assert code == 0 and doc["upstreams"]["openrouter"]["api_key"] == "(set)"
    assert UPSTREAM_KEY not in out and "local-secret-key" not in out


@pytest.mark.parametrize("log_prompts", [False, True])
async def test_prompts_reach_the_request_log_only_when_asked(proxy: Any, fake_server: Any, tmp_path: Path,
                                                             log_prompts: bool) -> None:
    client = await proxy(server={"log_prompts": log_prompts})
    for raw in (json.dumps({"model": "deepseek-r1", "messages": [{"role": "user", "content": "secret plan"}]}),
                "[1, 2]", "not json"):
        r = await client.post("/chat/completions", data=raw, headers={"Content-Type": "application/json"})
        await r.read()
    await client.close()
    rows = sqlite3.connect(tmp_path / "state" / "r1proxy.db").execute(
        "SELECT status, prompt FROM requests ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [200, 400, 400]
    assert [r[1] for r in rows] == (["secret plan", None, None] if log_prompts else [None, None, None])
