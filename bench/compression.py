"""5. Compression of the stored entries, and what a zstd dictionary gains."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from pathlib import Path

import zstandard

from bench.report import Report, Row

# -- 5. compression ------------------------------------------------------------------------

def compression_rows(db: Path, report: Report) -> None:
    if not db.exists():
        report.compression.append(Row("stored entries", "aborted", verdict="aborted",
                                      note=f"no database at {db}"))
        return
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        try:
            n, stored, raw = conn.execute("SELECT COUNT(*), COALESCE(SUM(stored_bytes), 0), "
                                          "COALESCE(SUM(raw_bytes), 0) FROM cache_entries").fetchone()
            blobs = conn.execute("SELECT body, request FROM cache_entries ORDER BY key").fetchall()
        except sqlite3.Error as e:
            report.compression.append(Row("stored entries", "aborted", verdict="aborted", note=str(e)))
            return
    if not n:
        report.compression.append(Row("stored entries", "0", verdict="aborted",
                                      note="no rows in cache_entries: misses were not stored"))
        return
    report.compression.append(Row("entries; stored / raw bytes (cache_entries sums)", f"{n:,}",
                                  f"{stored:,} / {raw:,}", f"{raw / stored:.2f}× smaller" if stored else "",
                                  note="stored = zstd body + zstd canonical request"))
    d = zstandard.ZstdDecompressor()
    bodies = [d.decompress(b) for b, _ in blobs if b]
    requests = [d.decompress(r) for _, r in blobs if r]
    b_stored = sum(len(b) for b, _ in blobs if b)
    r_stored = sum(len(r) for _, r in blobs if r)
    if bodies:
        raw_b = sum(map(len, bodies))
        report.compression.append(Row("answers (completion JSON): stored / raw bytes", f"{b_stored:,}",
                                      f"{raw_b:,}", f"{raw_b / b_stored:.2f}× smaller",
                                      note=f"mean raw answer {raw_b // len(bodies):,} B"))
    if requests:
        raw_r = sum(map(len, requests))
        report.compression.append(Row("canonical requests: stored / raw bytes", f"{r_stored:,}", f"{raw_r:,}",
                                      f"{raw_r / r_stored:.2f}× smaller"))
    for what, samples in (("answers", bodies), ("requests", requests)):
        row = dictionary_gain(what, samples)
        if row is not None:
            report.compression.append(row)


def dictionary_gain(what: str, samples: list[bytes], dict_size: int = 112_640) -> Row | None:
    """Train on 80% of the samples (shuffled, fixed seed), compare level-3 sizes on the other 20%."""
    if len(samples) < 50:
        return Row(f"zstd dictionary on {what}", "skipped", note=f"only {len(samples)} samples (need 50)")
    rng = random.Random(7)
    order = list(range(len(samples)))
    rng.shuffle(order)
    cut = int(len(order) * 0.8)
    train = [samples[i] for i in order[:cut]]
    held = [samples[i] for i in order[cut:]]
    size = min(dict_size, max(4096, sum(map(len, train)) // 10))
    try:
        t0 = time.perf_counter()
        zdict = zstandard.train_dictionary(size, list[bytes | bytearray | memoryview](train))
        train_s = time.perf_counter() - t0
    except zstandard.ZstdError as e:
        return Row(f"zstd dictionary on {what}", "failed", note=str(e))
    plain = zstandard.ZstdCompressor(level=3)
    with_dict = zstandard.ZstdCompressor(level=3, dict_data=zdict)
    raw = sum(map(len, held))
    a = sum(len(plain.compress(x)) for x in held)
    b = sum(len(with_dict.compress(x)) for x in held)
    return Row(f"zstd level 3 on held-out {what}: without / with a {len(zdict.as_bytes()) // 1024} KiB dictionary",
               f"{raw / a:.2f}× / {raw / b:.2f}×", f"{a:,} / {b:,} B", f"{a / b:.2f}× smaller with",
               note=f"trained on {len(train):,}, tested on {len(held):,} ({train_s:.1f} s to train)")
