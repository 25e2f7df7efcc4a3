"""The machine-speed line the timing benchmarks print (``benchmarks/machine_speed.py``)."""

from __future__ import annotations

import math

import pytest

from benchmarks import machine_speed
from benchmarks.machine_speed import Speed, measure, speed_line


def test_measure_gives_plausible_figures_for_this_machine() -> None:
    speed = measure(loops=2_000, repeats=2, hash_mib=1, pings=200)
    assert math.isfinite(speed.python_loop_us) and 0.01 < speed.python_loop_us < 100
    assert math.isfinite(speed.sha256_mb_s) and 10 < speed.sha256_mb_s < 100_000
    assert math.isfinite(speed.ping_us) and 0.05 < speed.ping_us < 10_000
    assert speed.python_loop_best_us <= speed.python_loop_us
    assert speed.sha256_best_mb_s >= speed.sha256_mb_s
    assert speed.ping_best_us <= speed.ping_us


def test_a_slower_hash_shows_as_fewer_mb_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hash made 5 ms slower every time shows in the mean and in the best."""
    real = machine_speed.hashlib.sha256

    class Slow:
        def __init__(self, data: bytes) -> None:
            self.inner = real(data)

        def digest(self) -> bytes:
            machine_speed.time.sleep(0.005)
            return self.inner.digest()

    fast = measure(loops=100, repeats=2, hash_mib=1)
    monkeypatch.setattr(machine_speed.hashlib, "sha256", Slow)
    slow = measure(loops=100, repeats=2, hash_mib=1)
    assert slow.sha256_mb_s < fast.sha256_mb_s and slow.sha256_best_mb_s < fast.sha256_best_mb_s
    assert slow.sha256_best_mb_s < 1.05 / 0.005  # 1 MiB took more than 5 ms


def test_the_line_carries_both_measurements() -> None:
    line = speed_line(
        Speed(1.39, 0.97, 205.4, 306.0, 4.04, 3.66), Speed(1.62, 1.01, 101.0, 150.2, 6.31, 5.9)
    )
    assert "1.39 (0.97) / 1.62 (1.01) µs" in line and "205 (306) / 101 (150) MB/s" in line
    assert "ping 4.0 (3.7) / 6.3 (5.9) µs" in line
