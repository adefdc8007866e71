"""6. LiteLLM side by side (``--vs-litellm``): its start, hit rows and miss rows."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

import aiohttp

from bench.common import Settings
from bench.hits import HitTarget, hit_rounds, hit_rows
from bench.probes import miss_probe, miss_rows
from bench.procs import BenchError, Server, Servers, free_port, rss_kib
from bench.report import Report, Row
from bench.targets import Hit, warm_hit

# -- 6. LiteLLM ----------------------------------------------------------------------------

LITELLM_INSTALL = ("pip install litellm==1.110.2 plus its proxy dependencies (the [proxy] extra does not "
                   "resolve on every registry; see perf-anchors 'Surprises'), then put `litellm` on PATH or "
                   "set LITELLM_BIN")


def litellm_bin() -> str | None:
    env = os.environ.get("LITELLM_BIN")
    if env and Path(env).exists():
        return env
    local = Path(sys.executable).parent / "litellm"
    if local.exists():
        return str(local)
    return shutil.which("litellm")


def start_litellm(servers: Servers, binary: str, upstream_port: int) -> Server:
    port = free_port()
    cfg = servers.workdir / "litellm.yaml"
    cfg.write_text(f"""model_list:
  - model_name: deepseek/deepseek-r1
    litellm_params:
      model: openai/deepseek/deepseek-r1
      api_base: http://127.0.0.1:{upstream_port}/api/v1
      api_key: sk-or-bench-dummy
litellm_settings:
  cache: true
  cache_params:
    type: local
    max_messages: null
""")
    env_extra = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": "bench"}
    servers.env.update(env_extra)
    try:
        return servers.start("litellm", [binary, "--config", str(cfg), "--port", str(port), "--host",
                                         "127.0.0.1", "--num_workers", "1"], port,
                             "/health/liveliness", timeout=120.0)
    finally:
        for k in env_extra:
            servers.env.pop(k, None)


MAX_MESSAGES_NOTE = ("LiteLLM's cache skips any request with more than 4 messages by default (max_messages=4 in "
                     "litellm/caching/caching.py), so it caches nothing for Roo Code from the second turn on; "
                     "this run sets cache_params.max_messages: null so its hits can be measured at all.")


def litellm_rows(s: Settings, wrk: str, servers: Servers, report: Report, slow: Server, ceiling: Server | None,
                 files: dict[str, Path], body: bytes, body_stream: bytes) -> None:
    print("  " + MAX_MESSAGES_NOTE)
    report.notes.append(MAX_MESSAGES_NOTE)
    binary = litellm_bin()
    if binary is None:
        msg = f"LiteLLM skipped: not installed. To include it: {LITELLM_INSTALL}."
        print("  " + msg)
        report.notes.append(msg)
        return
    try:
        ll = start_litellm(servers, binary, slow.port)
    except BenchError as e:
        report.notes.append(f"LiteLLM skipped: it did not start ({e}).")
        print(f"  LiteLLM did not start: {e}")
        return
    path = "/v1/chat/completions"
    hits: dict[str, Hit] = {}
    for key, b in (("memory", body), ("stream", body_stream)):
        try:
            hits[key] = warm_hit(ll, path, b, slow, None, f"LiteLLM {key} hit", header_check=False)
        except BenchError as e:
            report.litellm.append(Row(f"LiteLLM {key} hit", "aborted", note=str(e)))
    routes = []
    for key in hits:
        f = servers.workdir / f"litellm-hit-{key}.bin"
        f.write_bytes(hits[key].body)
        routes += ["--route", f"/{key}={f}:{hits[key].content_type}"]
    if routes:
        cport = free_port()
        ll_ceiling = servers.start("ceiling-litellm", [sys.executable, "-m", "bench.ceiling", "--port", str(cport),
                                                       *routes], cport, "/nothing")
        targets = [HitTarget(k, f"LiteLLM {k} hit", ll.port, path, files["json" if k == "memory" else "stream"],
                             f"/{k}") for k in hits]
        samples = hit_rounds(wrk, s, targets, ll_ceiling, [slow], report)
        sub = Report()
        for t in targets:
            mine, ceil = samples[t.key]
            hit_rows(sub, t.key, t.label, mine, ceil, None, None)
        report.litellm.extend(sub.rows)
        report.rounds_detail.extend(sub.rounds_detail)
    try:
        m = asyncio.run(miss_probe(s, ll.port, slow.port, f"llmiss{time.time_ns()}", path))
        miss_rows(report, m, s, "LiteLLM", report.litellm)
    except (BenchError, aiohttp.ClientError, TimeoutError) as e:
        report.litellm.append(Row("LiteLLM miss overhead", "aborted", note=str(e)))
    report.litellm.append(Row("LiteLLM RSS after the load, MiB", f"{rss_kib(ll.pid) / 1024:.1f}"))
