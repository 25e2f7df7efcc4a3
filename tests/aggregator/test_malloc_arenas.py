"""``serve`` limits glibc's malloc arenas: threads share two instead of one each.

Each check runs in a fresh interpreter (arenas, once made, stay for the life of a process) and
counts the arenas from glibc's own ``malloc_info`` report after eight threads allocated.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator.settings import AggregatorSettings

ROOT = Path(__file__).resolve().parents[2]

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="malloc arenas are glibc's",
)

_COUNT = """
import ctypes, json, re, sys, tempfile, threading
from aggregator.malloc_arenas import limit_malloc_arenas

limited = limit_malloc_arenas(int(sys.argv[1]))
barrier = threading.Barrier(8)
kept = []

def allocate():
    barrier.wait()  # all eight allocate while the others are alive
    kept.append([bytearray(1 << 16) for _ in range(8)])  # malloc'd by this thread

threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    stream = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    heaps = len(re.findall(rb'<heap nr="', open(out.name, "rb").read()))
print(json.dumps({"limited": limited, "arenas": heaps}))
"""


def _arenas(limit: int, **env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", _COUNT, str(limit)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@glibc_only
def test_two_arenas_serve_eight_allocating_threads() -> None:
    limited = _arenas(2)
    assert limited["limited"] is True
    assert limited["arenas"] == 2  # the main arena and one for every thread


@glibc_only
def test_without_the_limit_each_thread_gets_an_arena_of_its_own() -> None:
    default = _arenas(0)
    assert default["limited"] is False
    assert isinstance(default["arenas"], int) and default["arenas"] > 2


@glibc_only
def test_an_operators_malloc_arena_max_is_left_alone() -> None:
    theirs = _arenas(2, MALLOC_ARENA_MAX="3")
    assert theirs["limited"] is False
    assert theirs["arenas"] == 3


def test_the_setting_defaults_to_two_and_zero_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AggregatorSettings(admin_token="x" * 32).malloc_arenas == 2
    monkeypatch.setenv("FEDSEG_AGG_MALLOC_ARENAS", "0")
    assert AggregatorSettings(admin_token="x" * 32).malloc_arenas == 0
