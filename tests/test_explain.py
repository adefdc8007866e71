""""Why did this miss?" — `r1proxy cache explain` names the first difference from the nearest stored
request, on the cases of the cache-effectiveness notes: a changed Current Time with masking off, a
changed `# Current Cost`, a different tool list, a changed temperature."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from r1proxy.appkeys import GATEWAY_KEY, STORE_KEY
from r1proxy.config import ROO_CURRENT_TIME
from r1proxy.explain import differences, explain, render
from r1proxy.migrations import migrate
from r1proxy.ops_explain import _SAME_MODEL, ExplainError, explain_body, explain_logged
from tests.conftest import LOCAL_KEY
from tests.roo import roo_body

AUTH = {"Authorization": f"Bearer {LOCAL_KEY}"}
TOOLS = [{"type": "function", "function": {"name": n, "description": n, "parameters": {"type": "object"}}}
         for n in ("read_file", "write_to_file", "attempt_completion")]


def env_body(cost: str = "$0.05", when: str = "2026-04-20T10:12:03+02:00", **kw: Any) -> dict[str, Any]:
    body = roo_body("Add a --verbose flag to cli.py", stream=False, **kw)
    body["messages"][1]["content"][1]["text"] = (
        f"<environment_details>\n# Current Time\n{when}\n\n# Current Cost\n{cost}\n\n"
        "# Current Mode\n<slug>code</slug>\n</environment_details>")
    return body


async def store(client: Any, *bodies: dict[str, Any]) -> None:
    for i, body in enumerate(bodies):
        r = await client.post("/chat/completions", json=body, headers={**AUTH, "X-Request-Id": f"req-{i}"})
        assert r.status == 200, await r.text()
        await r.read()
    client.app[GATEWAY_KEY].flush_accounting()  # the request log is written in batches
    await client.app[STORE_KEY].db.flush()


async def test_changed_current_time_with_masking_off(proxy: Any) -> None:
    client = await proxy(cache={"ignore_patterns": []})
    await store(client, env_body())
    report = await explain_body(_config(client), client.app[STORE_KEY].db,
                                json.dumps(env_body(when="2026-04-20T10:19:44+02:00")).encode())
    first = report["first_difference"]
    # R1's template merged the system prompt into the first user message: index 0
    assert first["field"] == "messages[0].content" and first["message_index"] == 0
    assert first["stored_line"] == "2026-04-20T10:12:03+02:00" and first["this_line"] == "2026-04-20T10:19:44+02:00"
    assert "# Current Time\n2026-04-20T10:" in first["this"]
    assert [(m["pattern"], m["configured"]) for m in first["masked_by"]] == [(ROO_CURRENT_TIME, False)]
    assert report["nearest"]["messages_in_common"] == 0 and len(report["differences"]) == 1
    text = render(report)
    assert "line" in text and "is NOT in cache.ignore_patterns" in text


async def test_changed_current_cost(proxy: Any) -> None:
    client = await proxy()
    await store(client, env_body())
    report = await explain_body(_config(client), client.app[STORE_KEY].db, json.dumps(env_body(cost="$0.07")).encode())
    first = report["first_difference"]
    assert first["field"] == "messages[0].content"
    assert (first["stored_line"], first["this_line"]) == ("$0.05", "$0.07")
    assert [(m["name"], m["configured"]) for m in first["masked_by"]] == [("Roo's # Current Cost section", False)]


async def test_different_tool_list(proxy: Any) -> None:
    client = await proxy()
    await store(client, env_body(tools=TOOLS))
    changed = env_body(tools=[*TOOLS[:2], {"type": "function", "function": {"name": "new_task", "parameters": {}}},
                              TOOLS[2]])
    report = await explain_body(_config(client), client.app[STORE_KEY].db, json.dumps(changed).encode())
    first = report["first_difference"]
    assert first["field"] == "tools" and first["tool_index"] == 2
    assert first["summary"] == "tools: 3 → 4 tools; added new_task"


async def test_changed_temperature(proxy: Any) -> None:
    client = await proxy()
    model = "deepseek/deepseek-r1"  # a pass-through id: no template overrides the client's temperature
    await store(client, env_body(model=model, temperature=0))
    report = await explain_body(_config(client), client.app[STORE_KEY].db,
                                json.dumps(env_body(model=model, temperature=0.2)).encode())
    first = report["first_difference"]
    assert first["field"] == "temperature" and (first["stored"], first["this"]) == ("0", "0.2")
    assert report["nearest"]["messages_in_common"] == report["messages"] == 2
    # with an R1 alias the template pins temperature: the same change is no difference at all
    await store(client, env_body(temperature=0))
    same = await explain_body(_config(client), client.app[STORE_KEY].db, json.dumps(env_body(temperature=0.2)).encode())
    assert same["stored_with_same_key"] is not None and "very key is stored" in render(same)


async def test_last_and_request_id_and_the_cli(proxy: Any, fake_server: Any, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from r1proxy.cli import main
    from tests.test_cli import write_config

    client = await proxy(cache={"ignore_patterns": []})
    await store(client, env_body(), env_body(when="2026-04-21T09:00:00+02:00"), env_body())  # MISS, MISS, HIT
    db = client.app[STORE_KEY].db
    last = await explain_logged(_config(client), db)
    assert last["request_id"] == "req-1" and last["first_difference"]["this_line"] == "2026-04-21T09:00:00+02:00"
    by_id = await explain_logged(_config(client), db, "req-0")
    assert by_id["first_difference"]["stored_line"] == "2026-04-21T09:00:00+02:00"
    with pytest.raises(ExplainError, match="no logged request 'nope'"):
        await explain_logged(_config(client), db, "nope")
    await client.close()
    cfg = write_config(tmp_path, fake_server.base_url)
    cfg.write_text(cfg.read_text() + "[cache]\nignore_patterns = []\n")

    def run(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        code = main(["--config", str(cfg), "cache", "explain", *argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, _ = await asyncio.to_thread(run, "--last")
    assert code == 0 and "first difference: messages[0].content (user), line" in out and "09:00:00" in out
    code, out, _ = await asyncio.to_thread(run, "--request-id", "req-0", "--json")
    assert code == 0 and json.loads(out)["first_difference"]["field"] == "messages[0].content"
    code, out, _ = await asyncio.to_thread(run, stdin=json.dumps(env_body(cost="$9.99")))
    assert code == 0 and "'$0.05' → '$9.99'" in out
    code, _, err = await asyncio.to_thread(run, stdin="{not json")
    assert code == 1 and "not a chat request" in err


def test_differences_without_a_database() -> None:
    a = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "$r1proxy": {"upstream": "openrouter"}}
    b = {**a, "messages": [*a["messages"], {"role": "assistant", "content": "yo"}, {"role": "user", "content": "q"}],
         "$r1proxy": {"upstream": "openrouter", "namespace": "team"}}
    d = differences(a, b)
    assert d[0]["summary"] == "messages[1] (assistant) is only in this request — a later turn of the same conversation"
    assert d[1]["field"] == "$r1proxy" and "cache partition" in d[1]["summary"]
    assert explain(a, [])["nearest"] is None


def _config(client: Any) -> Any:
    from r1proxy.appkeys import CONFIG_KEY

    return client.app[CONFIG_KEY]


def test_the_candidates_query_reads_the_model_index_in_order(tmp_path: Any) -> None:
    """The dashboard's "why" page runs it while serving: at 1M entries of one model, a sort of that
    model's entries took 2.3 s (and held the reader thread /stats and purge notices use)."""
    conn = sqlite3.connect(tmp_path / "r.db")
    migrate(conn)
    plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + _SAME_MODEL, ("m", 200))]
    conn.close()
    assert not any("TEMP B-TREE" in step for step in plan), plan
    assert all("INDEX" in step for step in plan if "cache_entries" in step), plan
