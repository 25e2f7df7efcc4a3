"""``poll_until``: looks until done, pauses the interval between looks, gives up with the last result."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from data_specs.polling import poll_until


class Ready(Exception):
    pass


def looks(results: list[str]) -> tuple[Callable[[], str], list[str]]:
    seen: list[str] = []
    source: Iterator[str] = iter(results)

    def attempt() -> str:
        seen.append(next(source))
        return seen[-1]

    return attempt, seen


def test_returns_the_first_done_result_pausing_between_looks() -> None:
    attempt, seen = looks(["open", "open", "closed", "never asked"])
    pauses: list[float] = []
    got = poll_until(
        attempt,
        lambda r: r == "closed",
        interval_s=0.25,
        timeout_s=60,
        give_up=lambda r: Ready(r),
        sleep=pauses.append,
    )
    assert got == "closed"
    assert seen == ["open", "open", "closed"]
    assert pauses == [0.25, 0.25]


def test_gives_up_with_the_last_result_once_expired() -> None:
    attempt, seen = looks([f"open {i}" for i in range(10)])
    pauses: list[float] = []
    with pytest.raises(Ready, match=r"^open 2$"):
        poll_until(
            attempt,
            lambda r: r == "closed",
            interval_s=1.0,
            expired=lambda: len(seen) >= 3,
            give_up=lambda r: Ready(r),
            sleep=pauses.append,
        )
    assert seen == ["open 0", "open 1", "open 2"]
    assert pauses == [1.0, 1.0]


def test_a_zero_timeout_looks_once_and_never_sleeps() -> None:
    attempt, seen = looks(["open", "closed"])
    pauses: list[float] = []
    with pytest.raises(Ready, match="open"):
        poll_until(
            attempt,
            lambda r: r == "closed",
            interval_s=1.0,
            timeout_s=0,
            expired=lambda: False,
            give_up=lambda r: Ready(r),
            sleep=pauses.append,
        )
    assert seen == ["open"] and pauses == []


def test_an_error_of_the_look_passes_through_at_once() -> None:
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        raise KeyError("refused")

    with pytest.raises(KeyError, match="refused"):
        poll_until(
            attempt, bool, interval_s=0.0, timeout_s=60, give_up=lambda r: Ready(r), sleep=print
        )
    assert calls == [1]


def test_a_done_first_look_returns_without_sleeping() -> None:
    pauses: list[float] = []
    got = poll_until(
        lambda: 7, lambda r: r == 7, interval_s=5.0, give_up=Ready, sleep=pauses.append
    )
    assert got == 7 and pauses == []
