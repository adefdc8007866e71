"""r1proxy.pacing: FIFO queueing under rpm/max_parallel, cool-down, daily exhaustion; virtual time only."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from r1proxy.pacing import PacerExhausted, PacerTimeout, UpstreamPacer


class VirtualTime:
    """A clock plus a sleep that never really waits: ``advance()`` moves time sleeper by sleeper."""

    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + max(0.0, seconds), next(self._seq), fut))
        await fut

    async def settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        end = self.t + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= end:
            at, _, fut = heapq.heappop(self._sleepers)
            if fut.done():  # cancelled sleeper
                continue
            self.t = max(self.t, at)
            fut.set_result(None)
            await self.settle()
        self.t = end
        await self.settle()


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime()


@asynccontextmanager
async def slot(p: UpstreamPacer, max_wait_s: float | None = None) -> AsyncIterator[None]:
    """Hold a pacer slot for the block, as a flight attempt does (acquire … release)."""
    await p.acquire(max_wait_s)
    try:
        yield
    finally:
        p.release()


def pacer(vt: VirtualTime, **kw: int) -> UpstreamPacer:
    return UpstreamPacer(now=vt, sleep=vt.sleep, **kw)


async def test_unlimited_never_waits(vt: VirtualTime) -> None:
    p = pacer(vt)
    for _ in range(100):
        async with slot(p, 0):
            pass
    assert p.in_flight == 0 and p.queued == 0


async def test_max_parallel_queues_fifo(vt: VirtualTime) -> None:
    p = pacer(vt, max_parallel=2)
    order: list[int] = []
    release = asyncio.Event()

    async def job(i: int) -> None:
        async with slot(p):
            order.append(i)
            await release.wait()

    tasks = [asyncio.create_task(job(i)) for i in range(5)]
    await vt.settle()
    assert order == [0, 1] and p.in_flight == 2 and p.queued == 3
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4] and p.in_flight == 0


async def test_rpm_sliding_window_holds(vt: VirtualTime) -> None:
    """200 callers at once against rpm=20: never more than 20 grants in any 60 s window, and the pacer
    still delivers ≥ 95 % of the allowed rate (it doesn't over-throttle)."""
    p = pacer(vt, rpm=20)
    grants: list[float] = []

    async def job() -> None:
        async with slot(p, max_wait_s=3600):
            grants.append(vt())

    tasks = [asyncio.create_task(job()) for _ in range(200)]
    await vt.advance(600)
    await asyncio.gather(*tasks)
    assert len(grants) == 200 and grants == sorted(grants)
    for i, t in enumerate(grants):
        assert sum(1 for g in grants[i:] if g < t + 60) <= 20
    span = grants[-1] - grants[0]
    achieved = (len(grants) - 20) / span * 60  # rate after the first full window
    assert achieved >= 0.95 * 20


async def test_rpm_and_parallel_together(vt: VirtualTime) -> None:
    p = pacer(vt, rpm=6, max_parallel=1)
    starts: list[float] = []

    async def job() -> None:
        async with slot(p):
            starts.append(vt())
            await vt.sleep(1)
            assert p.in_flight == 1

    tasks = [asyncio.create_task(job()) for _ in range(8)]
    await vt.advance(200)
    await asyncio.gather(*tasks)
    assert starts[:6] == [0, 1, 2, 3, 4, 5]
    assert starts[6] == pytest.approx(60) and starts[7] == pytest.approx(61)


async def test_no_barging_past_the_queue(vt: VirtualTime) -> None:
    """A caller arriving just after a release must not overtake one that was already queued."""
    p = pacer(vt, max_parallel=1)
    await p.acquire()
    queued = asyncio.create_task(p.acquire())
    await vt.settle()
    p.release()
    newcomer = asyncio.create_task(p.acquire())
    await vt.settle()
    assert queued.done() and not newcomer.done() and p.queued == 1
    p.release()
    await vt.settle()
    assert newcomer.done()


async def test_timeout_leaves_queue_clean(vt: VirtualTime) -> None:
    p = pacer(vt, rpm=1)
    await p.acquire()
    p.release()
    waiter = asyncio.create_task(p.acquire(max_wait_s=10))
    await vt.advance(10)
    with pytest.raises(PacerTimeout) as exc:
        await waiter
    assert exc.value.waiting_for == "rpm" and exc.value.waited_s == pytest.approx(10)
    assert exc.value.retry_after == pytest.approx(50)
    assert p.queued == 0
    later = asyncio.create_task(p.acquire(max_wait_s=100))
    await vt.advance(50)
    await later
    assert vt() == pytest.approx(60)


async def test_timeout_behind_the_queue_head(vt: VirtualTime) -> None:
    p = pacer(vt, max_parallel=1)
    await p.acquire()
    head = asyncio.create_task(p.acquire(max_wait_s=100))
    behind = asyncio.create_task(p.acquire(max_wait_s=5))
    await vt.advance(5)
    with pytest.raises(PacerTimeout) as exc:
        await behind
    assert exc.value.waiting_for in ("queue", "parallel") and p.queued == 1
    p.release()
    await vt.settle()
    assert head.done() and p.in_flight == 1


async def test_cancelled_waiter_does_not_block_the_next(vt: VirtualTime) -> None:
    p = pacer(vt, max_parallel=1)
    await p.acquire()
    first = asyncio.create_task(p.acquire())
    second = asyncio.create_task(p.acquire())
    await vt.settle()
    first.cancel()
    await vt.settle()
    p.release()
    await vt.settle()
    assert second.done() and p.in_flight == 1 and p.queued == 0


async def test_cool_down_delays_queued_requests(vt: VirtualTime) -> None:
    p = pacer(vt, max_parallel=4)
    p.cool_down(7)
    p.cool_down(2)  # never shortens
    assert p.cooling_until == 7 and p.wait_estimate() == 7
    got: list[float] = []

    async def job() -> None:
        async with slot(p, max_wait_s=60):
            got.append(vt())

    tasks = [asyncio.create_task(job()) for _ in range(3)]
    await vt.advance(3)
    assert got == []
    p.cool_down(10)  # a second 429 meanwhile extends it
    await vt.advance(20)
    await asyncio.gather(*tasks)
    assert got == [13, 13, 13]


async def test_cool_down_longer_than_max_wait_times_out(vt: VirtualTime) -> None:
    p = pacer(vt)
    p.cool_down(30)
    task = asyncio.create_task(p.acquire(max_wait_s=5))
    await vt.advance(5)
    with pytest.raises(PacerTimeout) as exc:
        await task
    assert exc.value.waiting_for == "cooldown" and exc.value.retry_after == pytest.approx(25)


async def test_daily_exhausted_fails_fast(vt: VirtualTime) -> None:
    p = pacer(vt, max_parallel=1)
    await p.acquire()
    queued = asyncio.create_task(p.acquire(max_wait_s=100))
    await vt.settle()
    p.mark_daily_exhausted(3600)
    await vt.settle()
    with pytest.raises(PacerExhausted):
        await queued  # queued callers fail too, not just new ones
    with pytest.raises(PacerExhausted) as exc:
        await p.acquire(max_wait_s=100)
    assert exc.value.retry_after == pytest.approx(3600) and p.queued == 0
    await vt.advance(3600)
    p.release()
    async with slot(p, 0):
        pass


async def test_real_clock_short_run() -> None:
    """With the real clock: max_parallel holds under concurrency, rpm gates the 4th call."""
    p = UpstreamPacer(rpm=3, max_parallel=2, window_s=0.3)
    peak = 0
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def job() -> None:
        nonlocal peak
        async with slot(p, max_wait_s=2):
            peak = max(peak, p.in_flight)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(job() for _ in range(4)))
    assert peak == 2
    assert 0.25 <= loop.time() - t0 < 2
