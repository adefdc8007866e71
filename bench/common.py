"""Constants and run settings shared by the benchmark modules."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "post.lua"
DOC = ROOT / "docs" / "BENCHMARKS.md"
UPSTREAM_DELAY = 0.3
# ~2.6 KB of answer text: what the streamed-hit target is about (perf-anchors: hits of 2.3-3.7 KB)
REASONING_CHARS = 1300
ANSWER_CHARS = 1300
MIB = 1024 * 1024


# -- settings ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    rounds: int
    duration: float           # seconds per wrk run
    miss_n: int               # streaming misses per rep per side
    miss_reps: int
    large_n: int              # 8 MB hits per side
    fill_n: int               # distinct misses for the RSS-after-load / compression corpus
    starts: int               # starts for the time-to-healthy median
    vs_litellm: bool
    quick: bool
    scale: int = 0            # entries for the --scale run (0: not run)
    workers: int = 0          # server.workers for the --workers run (0: not run)

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> Settings:
        if a.quick:
            base = cls(rounds=3, duration=1.0, miss_n=10, miss_reps=2, large_n=10, fill_n=1000, starts=5,
                       vs_litellm=a.vs_litellm, quick=True)
        else:
            base = cls(rounds=5, duration=5.0, miss_n=20, miss_reps=2, large_n=20, fill_n=10_000, starts=5,
                       vs_litellm=a.vs_litellm, quick=False)
        rounds = a.rounds if a.rounds is not None else base.rounds
        duration = a.duration if a.duration is not None else base.duration
        if rounds < 1 or duration <= 0:
            raise SystemExit("bench: --rounds must be >= 1 and --duration > 0")
        return cls(rounds=rounds, duration=duration, miss_n=base.miss_n, miss_reps=base.miss_reps,
                   large_n=base.large_n, fill_n=base.fill_n, starts=base.starts, vs_litellm=a.vs_litellm,
                   quick=base.quick, scale=a.scale or 0, workers=a.workers or 0)
