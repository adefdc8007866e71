"""The semantic tier end to end without the gateway: corpus accuracy at the shipped threshold, probe/find/remember,
config, and nothing loaded while it is off."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from typing import Any

import pytest

from r1proxy.cache.keys import KeyMaker
from r1proxy.cache.semantic import guards
from r1proxy.cache.semantic.partition import Split, split
from r1proxy.config import ROO_CURRENT_TIME, ConfigError, SemanticConfig, build_config
from tests.roo import roo_body
from tests.semantic_corpus import ALL, pairs
from tests.semantic_model import encoder


def test_the_corpus_is_big_enough_and_labelled_both_ways() -> None:
    ps = list(pairs())
    kinds = Counter(p.category for p in ps)
    assert len(ps) >= 300
    assert kinds["paraphrase"] >= 150 and len(ps) - kinds["paraphrase"] >= 150
    for kind in ("polarity", "number", "unit", "path", "identifier", "flag", "language", "direction", "named"):
        assert kinds[kind] >= 2, kind
    assert {p.shape for p in ps} == {"task", "enhance"}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_the_shipped_threshold_serves_no_near_miss_of_the_corpus(path: Any) -> None:
    enc = encoder()
    keys = KeyMaker([ROO_CURRENT_TIME])
    threshold = SemanticConfig().threshold
    vectors: dict[str, object] = {}
    wrong, served, paraphrases = [], 0, 0
    for p in pairs(path):
        a, b = split(keys, "openrouter", p.source()), split(keys, "openrouter", p.new())
        assert isinstance(a, Split) and isinstance(b, Split) and a.partition == b.partition, p
        for t in (a.text, b.text):
            if t not in vectors:
                vectors[t] = enc.embed(t)
        sim = float(vectors[a.text] @ vectors[b.text])  # type: ignore[operator]
        ok = guards.check(b.text, a.text, sim, threshold).ok
        if ok and not p.hit:
            wrong.append((p.category, p.source_text, p.new_text, round(sim, 4)))
        served += ok and p.hit
        paraphrases += p.hit
    assert wrong == []
    assert served / paraphrases > 0.7  # docs/BENCHMARKS.md: 0.78-0.84 measured


async def test_probe_find_remember() -> None:
    from r1proxy.cache.semantic.store import VectorStore
    from r1proxy.cache.semantic.tier import SemanticTier
    encoder()
    tier = SemanticTier(KeyMaker([ROO_CURRENT_TIME]), VectorStore(None))
    first = await tier.probe("openrouter", roo_body("Add a --verbose flag to cli.py"))
    assert first.usable and first.refused == ""
    assert (await tier.find(first)).match is None  # nothing indexed yet
    tier.remember(first, "r1:source")
    again = await tier.probe("openrouter", roo_body("add a --verbose flag to cli.py please", when="tomorrow"))
    found = await tier.find(again)
    assert found.match is not None and found.match.key == "r1:source" and found.match.similarity >= 0.95
    assert found.match.source_text == "Add a --verbose flag to cli.py"
    flipped = await tier.probe("openrouter", roo_body("Remove the --verbose flag from cli.py"))
    assert (await tier.find(flipped)).match is None
    other = await tier.probe("openrouter", roo_body("Add a --verbose flag to cli.py", model="another"))
    assert (await tier.find(other)).match is None  # another partition
    tool_turn = roo_body()
    tool_turn["messages"].append({"role": "tool", "tool_call_id": "x", "content": "ok"})
    probe = await tier.probe("openrouter", tool_turn)
    assert not probe.usable and probe.refused
    tier.remember(probe, "r1:never")  # not usable: nothing indexed
    tier.forget("r1:source")
    assert (await tier.find(again)).match is None


def test_config_defaults_and_validation() -> None:
    cfg = build_config({}, env={})
    assert cfg.cache.semantic == SemanticConfig(enabled=False, threshold=0.95, keys=(), model_dir="",
                                                max_ram_mb=64.0, candidates=5)
    on = build_config({"cache": {"semantic": {"enabled": True, "threshold": 0.97, "keys": ["roo"]}}}, env={})
    assert on.cache.semantic.enabled and on.cache.semantic.threshold == 0.97 and on.cache.semantic.keys == ("roo",)
    with pytest.raises(ConfigError, match=r"cache\.semantic\.threshold"):
        build_config({"cache": {"semantic": {"threshold": 1.5}}}, env={})
    with pytest.raises(ConfigError, match=r"cache\.semantic\.nope"):
        build_config({"cache": {"semantic": {"nope": 1}}}, env={})


def test_off_by_default_imports_nothing_of_the_tier() -> None:
    code = textwrap.dedent("""
        import sys
        from r1proxy.app import create_app
        from r1proxy.config import build_config
        create_app(build_config({}, env={}))
        heavy = [m for m in ("numpy", "tokenizers", "safetensors", "r1proxy.cache.semantic.encoder")
                 if m in sys.modules]
        print(",".join(heavy))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


async def test_the_model_loads_and_runs_off_the_event_loop() -> None:
    import threading

    from r1proxy.cache.semantic.encoder import Encoder, load_encoder
    from r1proxy.cache.semantic.store import VectorStore
    from r1proxy.cache.semantic.tier import SemanticTier
    encoder()
    seen: list[str] = []

    def load(model_dir: str) -> Encoder:  # the real loader, noting which thread asked for it
        seen.append(threading.current_thread().name)
        return load_encoder(model_dir)

    tier = SemanticTier(KeyMaker([ROO_CURRENT_TIME]), VectorStore(None), encoder=load)
    probe = await tier.probe("openrouter", roo_body("Add a --verbose flag to cli.py"))
    assert probe.usable
    assert seen and threading.main_thread().name not in seen
