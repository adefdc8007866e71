"""rollups: the request log's running sums are written per batch and never drift from the log.

The reference is twofold: the aggregate recomputed from ``requests`` and what the per-row triggers
they replace (m012, m052, m053; dropped by m060) made of the same rows, one INSERT at a time.
"""

from __future__ import annotations

import math
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r1proxy.db import Database
from r1proxy.migrations import MIGRATIONS, applied, migrate
from r1proxy.reqlog import RequestLog
from r1proxy.rollups import INSERT, ROLLUPS, insert_requests, row_values

T0 = 86_400.0 * 20_000  # 2024-10-04, midnight UTC

_OFFSETS = st.one_of(
    st.sampled_from([0.0, 1.0, 3599.999, 3600.0, 86_399.5, 86_399.9996, 86_400.0, 90_000.25, 2 * 86_400.0 - 0.001]),
    st.floats(min_value=0, max_value=3 * 86_400.0, allow_nan=False),
)
_NUM = st.one_of(st.none(), st.integers(min_value=0, max_value=2_000_000))
_MONEY = st.one_of(st.none(), st.just(0.0), st.floats(min_value=0, max_value=5.0, allow_nan=False))

ROW = st.fixed_dictionaries({
    "ts": st.one_of(st.none(), _OFFSETS.map(lambda o: T0 + o)),
    "request_id": st.just("r"),
    "key_name": st.sampled_from([None, "", "ci", "dev"]),
    "alias": st.sampled_from([None, "", "r1", "v3"]),
    "upstream_model": st.sampled_from([None, "", "deepseek/r1", "deepseek/r1:free", "X:FREE"]),
    "cache": st.sampled_from([None, "HIT", "STALE", "COALESCED", "MISS", "BYPASS", "NONE", "hit"]),
    "tier": st.sampled_from([None, "", "memory", "disk", "semantic", "redis"]),
    "status": st.sampled_from([None, 200, 400, 404, 408, 429, 499, 500, 502]),
    "error_type": st.sampled_from([None, "", "upstream_timeout", "UPSTREAM_error", "client_closed", "bad_request"]),
    "latency_ms": st.one_of(st.none(), st.floats(min_value=0, max_value=1e5, allow_nan=False)),
    "ttfb_ms": st.one_of(st.none(), st.floats(min_value=0, max_value=1e5, allow_nan=False)),
    "prompt_tokens": _NUM, "completion_tokens": _NUM, "reasoning_tokens": _NUM,
    "cached_tokens": _NUM, "cache_write_tokens": _NUM,
    "cost": _MONEY, "cost_saved": _MONEY, "prefix_saved": _MONEY,
    "cost_source": st.sampled_from([None, "", "reported", "computed"]),
    "failed_attempts": st.one_of(st.none(), st.integers(min_value=0, max_value=4)),
})
BATCHES = st.lists(st.lists(ROW, min_size=0, max_size=12), min_size=1, max_size=5)


def _fresh(path: Path | str = ":memory:") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn)
    return conn


def _with_triggers() -> sqlite3.Connection:
    """The schema just before m060: the rollups kept by one trigger run per inserted row."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    applied(conn)
    names = [fn.__name__ for fn in MIGRATIONS]
    for fn in MIGRATIONS[:names.index("m060_rollups_per_batch")]:
        fn(conn)
    return conn


def _same(got: Sequence[Sequence[Any]], want: Sequence[Sequence[Any]]) -> bool:
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        if len(g) != len(w):
            return False
        for a, b in zip(g, w, strict=True):
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9):
                    return False
            elif a != b:
                return False
    return True


def assert_rollups_match_log(conn: sqlite3.Connection) -> None:
    for r in ROLLUPS:
        got = conn.execute(r.select_sql()).fetchall()
        want = conn.execute(r.recompute_sql()).fetchall()
        assert _same(got, want), (r.table, got, want)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BATCHES, st.booleans())
def test_rollups_equal_the_log_and_the_old_triggers(batches: list[list[dict[str, Any]]], in_tx: bool) -> None:
    new, old = _fresh(), _with_triggers()
    try:
        for batch in batches:
            if in_tx:  # as the writer does: the batch inside its transaction
                new.execute("BEGIN")
            assert insert_requests(new, [row_values(r) for r in batch]) == len(batch)
            if in_tx:
                new.execute("COMMIT")
            for r in batch:  # the old way: one INSERT, three trigger runs
                old.execute(INSERT, row_values(r))
        assert_rollups_match_log(new)
        for r in ROLLUPS:
            got = new.execute(r.select_sql()).fetchall()
            # a row without ts made the old daily_totals trigger add a row with a NULL day (m060)
            want = [row for row in old.execute(r.select_sql()).fetchall() if row[0] is not None]
            assert _same(got, want), (r.table, got, want)
    finally:
        new.close()
        old.close()


def test_a_batch_is_a_few_multi_row_inserts_not_one_per_row() -> None:
    """The writer thread gives the GIL up on every statement step and takes it back after: an
    executemany stepped once per row; a multi-row INSERT steps once per chunk of rows. The rows keep
    their order (ids) and the rollups their sums, whatever the chunks."""
    conn = _fresh()
    steps: list[str] = []
    conn.set_trace_callback(steps.append)
    rows = [row_values({"ts": T0 + i, "request_id": f"r{i}", "cache": ("HIT", "MISS")[i % 2]}) for i in range(300)]
    assert insert_requests(conn, rows) == 300
    conn.set_trace_callback(None)
    assert len([s for s in steps if s.startswith("INSERT INTO requests ")]) <= 8
    assert [r for (r,) in conn.execute("SELECT request_id FROM requests ORDER BY id")] == [f"r{i}" for i in range(300)]
    assert insert_requests(conn, []) == 0
    assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (300,)
    assert_rollups_match_log(conn)


def test_the_edges_of_a_day_and_an_hour_fall_where_sqlite_puts_them() -> None:
    conn = _fresh()
    rows = [{"ts": T0 - 0.0004, "cache": "HIT"}, {"ts": T0 + 3599.9999, "cache": "HIT"}, {"ts": None, "cache": "HIT"}]
    insert_requests(conn, [row_values(r) for r in rows])
    assert conn.execute("SELECT day, requests FROM daily_totals").fetchall() == [("2024-10-04", 2)]
    assert conn.execute("SELECT hour, requests FROM requests_hourly ORDER BY hour").fetchall() == [
        (int(T0) - 3600, 1), (int(T0), 1)]
    assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (3,)
    assert_rollups_match_log(conn)


def test_a_failing_rollup_write_takes_the_batch_with_it() -> None:
    conn = _fresh()
    insert_requests(conn, [row_values({"ts": T0, "cache": "MISS"})])
    conn.execute("CREATE TRIGGER sabotage BEFORE INSERT ON requests_daily BEGIN SELECT RAISE(ABORT, 'boom'); END")
    with pytest.raises(sqlite3.IntegrityError):
        insert_requests(conn, [row_values({"ts": T0 + 86_400 * 5, "cache": "HIT"})])
    assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (1,)
    assert conn.execute("SELECT SUM(requests) FROM daily_totals").fetchone() == (1,)
    conn.execute("DROP TRIGGER sabotage")
    assert_rollups_match_log(conn)


def test_an_uncommitted_batch_leaves_nothing(tmp_path: Path) -> None:
    conn = _fresh(tmp_path / "r.db")
    insert_requests(conn, [row_values({"ts": T0, "cache": "HIT"})])
    conn.execute("BEGIN")
    insert_requests(conn, [row_values({"ts": T0 + 1, "cache": "MISS"})] * 3)
    conn.close()  # the process died before COMMIT
    conn = sqlite3.connect(tmp_path / "r.db")
    assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (1,)
    assert_rollups_match_log(conn)
    conn.close()


_WRITER = """
import sqlite3, sys
from r1proxy.migrations import migrate
from r1proxy.rollups import insert_requests, row_values
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
migrate(conn)
i = 0
while True:
    rows = [row_values({"ts": %r + i * 61.0 + j, "cache": ("HIT", "MISS", "STALE")[j %% 3], "alias": "r1",
                        "prompt_tokens": j, "cost": 0.001 * j}) for j in range(50)]
    insert_requests(conn, rows)
    i += 1
    if i == 3:
        print("ready", flush=True)
"""


def test_sigkill_between_or_inside_batches_keeps_the_rollups_consistent(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    child = subprocess.Popen([sys.executable, "-c", _WRITER % T0, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] >= 150
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] % 50 == 0
        assert_rollups_match_log(conn)
    finally:
        conn.close()


async def test_the_writer_puts_rows_and_rollups_in_one_transaction(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "r1proxy.db")
    try:
        log = RequestLog(db)
        log.record_many([{"ts": T0 + i, "cache": "HIT" if i % 2 else "MISS", "alias": "r1"} for i in range(5)])
        log.record({"ts": T0 + 7200, "cache": "STALE", "status": 502, "error_type": "upstream_timeout"})
        log.add_usage("ci", "2024-10-04", 1, 10, 0.0)
        log.record({"ts": T0 + 9, "cache": "COALESCED", "semantic_source": "v1:x"})
        await db.flush()
        assert db.write_errors == 0
        assert await db.fetchone("SELECT COUNT(*) FROM requests") == (7,)
        assert await db.fetchall("SELECT hour, cache, requests FROM requests_hourly ORDER BY hour, cache") == [
            (int(T0), "COALESCED", 1), (int(T0), "HIT", 2), (int(T0), "MISS", 3), (int(T0) + 7200, "STALE", 1)]
        assert await db.fetchone("SELECT requests, hits, upstream_errors FROM v_daily") == (7, 4, 1)
    finally:
        await db.close()
    conn = sqlite3.connect(tmp_path / "r1proxy.db")
    assert_rollups_match_log(conn)
    conn.close()


class _Racy(sqlite3.Connection):
    """Lets another process commit a request right after this connection's first read in a batch."""

    other: Path | None = None

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        cur = super().execute(sql, *args)
        if self.other is not None and sql.lstrip().upper().startswith("SELECT"):
            other, self.other = self.other, None
            rival = sqlite3.connect(other, timeout=0, isolation_level=None)
            try:
                insert_requests(rival, [row_values({"ts": T0 + 99, "cache": "MISS"})])
            except sqlite3.OperationalError:
                pass  # locked: this connection already holds the write lock, as it should
            finally:
                rival.close()
        return cur


def test_a_batch_holds_the_write_lock_before_it_reads(tmp_path: Path) -> None:
    """Two processes log into one file (server.workers): a batch must not read (a snapshot) before
    it writes, or another process's commit in between fails the whole batch (SQLITE_BUSY_SNAPSHOT)."""
    path = tmp_path / "r.db"
    _fresh(path).close()
    conn = sqlite3.connect(path, isolation_level=None, factory=_Racy)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.other = path
    insert_requests(conn, [row_values({"ts": T0 + i, "cache": "HIT"}) for i in range(3)])
    assert_rollups_match_log(conn)
    conn.close()
