"""Semantic tier benchmark: accuracy on the labelled corpus, embedding latency, search at scale.

    python -m bench.semantic                 # all three parts
    python -m bench.semantic --only corpus   # precision / recall / false hits per threshold

corpus:  every pair of tests/data/semantic_corpus.txt (the guards were tuned on it) and of
         tests/data/semantic_holdout.txt (written after, see its header) as two Roo request bodies, through the real
         partition split, the numpy encoder and the guards; per threshold: predicted hits, precision,
         recall and false hits, for cosine alone and with the guards (what r1proxy serves).
latency: the encoder on the corpus texts (<= 64 tokens), one text per call; p50/p90, with a
         reference (a 384x384 float32 matmul loop) measured in the same run.
search:  N vectors in one partition of a real r1proxy database: cold (read from SQLite) and warm
         (in RAM) search p50, against a same-run reference (numpy dot of the same matrix).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from r1proxy.cache.keys import KeyMaker
from r1proxy.cache.semantic import guards
from r1proxy.cache.semantic.encoder import load_encoder
from r1proxy.cache.semantic.partition import Split, split
from r1proxy.config import ROO_CURRENT_TIME
from tests.semantic_corpus import ALL, CORPUS, pairs

THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98)


def corpus(thresholds: tuple[float, ...] = THRESHOLDS, path: Path = CORPUS) -> list[dict[str, Any]]:
    keys = KeyMaker([ROO_CURRENT_TIME])
    enc = load_encoder()
    scored: list[tuple[Any, float]] = []
    for p in pairs(path):
        a, b = split(keys, "openrouter", p.source()), split(keys, "openrouter", p.new())
        assert isinstance(a, Split) and isinstance(b, Split), (p, a, b)
        assert a.partition == b.partition, f"partition differs for {p}"
        scored.append((p, float(enc.embed(a.text) @ enc.embed(b.text))))
    positives = sum(1 for p, _ in scored if p.hit)
    rows = []
    for t in thresholds:
        for mode in ("cosine only", "guarded"):
            tp = fp = 0
            wrong: list[str] = []
            for p, sim in scored:
                served = guards.check(p.new_text, p.source_text, sim, t).ok if mode == "guarded" else sim >= t
                if served and p.hit:
                    tp += 1
                elif served:
                    fp += 1
                    wrong.append(f"{p.category}: {p.source_text!r} ~ {p.new_text!r} ({sim:.3f})")
            served_n = tp + fp
            rows.append({"threshold": t, "mode": mode, "served": served_n, "tp": tp, "fp": fp,
                         "precision": tp / served_n if served_n else 1.0, "recall": tp / positives,
                         "false_hit_rate": fp / served_n if served_n else 0.0, "wrong": wrong})
    print(f"corpus {path.name}: {len(scored)} pairs ({positives} paraphrases, {len(scored) - positives} near misses)")
    print(f"{'threshold':>9} {'mode':<12} {'served':>6} {'precision':>9} {'recall':>7} {'false hits':>10} "
          f"{'wrong/served':>12}")
    for r in rows:
        print(f"{r['threshold']:>9.2f} {r['mode']:<12} {r['served']:>6} {r['precision']:>9.3f} {r['recall']:>7.3f} "
              f"{r['fp']:>10} {r['false_hit_rate']:>11.1%}")
    refused: dict[str, int] = {}
    for p, sim in scored:
        if p.hit:
            v = guards.check(p.new_text, p.source_text, sim, 0.95)
            if not v.ok:
                refused[v.rule] = refused.get(v.rule, 0) + 1
    print("paraphrases refused at 0.95, by rule:", refused)
    return rows


def latency(reps: int = 3) -> dict[str, float]:
    import numpy as np
    enc = load_encoder()
    texts = sorted({p.new_text for p in pairs()} | {p.source_text for p in pairs()})
    texts = [t for t in texts if enc.token_count(t) <= 64]
    enc.embed(texts[0])
    times = []
    for _ in range(reps):
        for t in texts:
            t0 = time.perf_counter()
            enc.embed(t)
            times.append(time.perf_counter() - t0)
    m = np.random.default_rng(0).standard_normal((384, 384)).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((32, 384)).astype(np.float32)
    ref = []
    for _ in range(200):
        t0 = time.perf_counter()
        x @ m
        ref.append(time.perf_counter() - t0)
    buckets = {}
    for target in (32, 64):  # corpus sentences joined up to the target length
        long_texts, i = [], 0
        while len(long_texts) < 40:
            t = texts[i % len(texts)]
            while enc.token_count(t) < target:
                i += 1
                t = f"{t} {texts[i % len(texts)]}"
            long_texts.append(t)
            i += 1
        bt = []
        for t in long_texts:
            t0 = time.perf_counter()
            enc.embed(t)
            bt.append(time.perf_counter() - t0)
        buckets[target] = statistics.median(bt) * 1e3
    tokens = [enc.token_count(t) for t in texts]
    out = {"texts": len(texts), "tokens_p50": statistics.median(tokens), "tokens_max": max(tokens),
           "p50_ms": statistics.median(times) * 1e3, "p90_ms": sorted(times)[int(0.9 * len(times))] * 1e3,
           "min_ms": min(times) * 1e3, "ref_matmul_us": statistics.median(ref) * 1e6,
           "p50_32_ms": buckets[32], "p50_64_ms": buckets[64]}
    print(f"latency: {out['texts']} texts, {out['tokens_p50']:.0f} tokens p50 (max {out['tokens_max']}): "
          f"p50 {out['p50_ms']:.1f} ms, p90 {out['p90_ms']:.1f} ms, min {out['min_ms']:.1f} ms "
          f"(reference 32x384 @ 384x384 matmul: {out['ref_matmul_us']:.0f} us; "
          f"embedding = {out['p50_ms'] * 1e3 / out['ref_matmul_us']:.0f}x reference); "
          f"32-64 tokens: p50 {out['p50_32_ms']:.1f} ms; 64-80 tokens: p50 {out['p50_64_ms']:.1f} ms")
    return out


async def _search(n: int) -> dict[str, float]:
    import numpy as np

    from r1proxy.cache.semantic.store import VectorStore
    from r1proxy.db import Database
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as d:
        db = await Database.open(Path(d) / "r1proxy.db")
        try:
            rows = [(f"r1:{i:032x}", "r1p:bench", f"text {i}", vecs[i].astype("<f4").tobytes(), 0.0)
                    for i in range(n)]
            t0 = time.perf_counter()
            db.submit_many("INSERT INTO semantic_vectors (key, partition, text, vector, created_at) "
                           "VALUES (?, ?, ?, ?, ?)", rows)
            await db.flush()
            insert_s = time.perf_counter() - t0
            cold, warm, ref = [], [], []
            q = vecs[n // 2]
            for _ in range(3):
                store = VectorStore(db, max_ram_bytes=1 << 30)
                t0 = time.perf_counter()
                found = await store.search("r1p:bench", q, floor=0.95)
                cold.append(time.perf_counter() - t0)
                assert found and found[0].key == f"r1:{n // 2:032x}"
            for _ in range(20):
                t0 = time.perf_counter()
                await store.search("r1p:bench", q, floor=0.95)
                warm.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                vecs @ q
                ref.append(time.perf_counter() - t0)
        finally:
            await db.close()
    out = {"n": n, "insert_s": insert_s, "cold_ms": statistics.median(cold) * 1e3,
           "warm_ms": statistics.median(warm) * 1e3, "ref_ms": statistics.median(ref) * 1e3,
           "ram_mb": store.ram_bytes / 2**20}
    print(f"search: {n:,} vectors in one partition: insert {insert_s:.1f} s; cold search (load from SQLite) "
          f"p50 {out['cold_ms']:.0f} ms; warm search p50 {out['warm_ms']:.1f} ms "
          f"(reference bare numpy dot: {out['ref_ms']:.1f} ms, ratio {out['warm_ms'] / out['ref_ms']:.2f}); "
          f"RAM {out['ram_mb']:.0f} MiB")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("corpus", "latency", "search"))
    ap.add_argument("--entries", type=int, default=100_000, help="vectors for the search part")
    ap.add_argument("--wrong", action="store_true", help="list the near misses served, per threshold")
    args = ap.parse_args(argv)
    if args.only in (None, "corpus"):
        for path in ALL:
            rows = corpus(path=path)
            if args.wrong:
                for r in rows:
                    if r["mode"] == "guarded" and r["wrong"]:
                        print(f"  wrong at {r['threshold']:.2f}:", *r["wrong"], sep="\n    ")
    if args.only in (None, "latency"):
        latency()
    if args.only in (None, "search"):
        asyncio.run(_search(args.entries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
