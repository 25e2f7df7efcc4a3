"""Ray failing to start is a one-line ``LaunchError``, whatever Ray raises (no Ray needed)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from deploy.launcher import ray_backend
from deploy.launcher.processes import LaunchError
from deploy.launcher.ray_backend import RayOptions, start_ray


@pytest.mark.parametrize(
    "error",
    [
        # What Ray 2.60 raises when its raylet misses the 30 s start-up wait (seen on a loaded
        # machine): a bare Exception, not one of the usual error types.
        Exception(
            "The current node timed out during startup. This could happen because some of the "
            "raylet failed to startup or the GCS has become overloaded.\nmore detail"
        ),
        ConnectionError("could not connect to ray://head:10001"),
    ],
)
def test_ray_that_does_not_start_is_a_one_line_launch_error(
    error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    def init(**_: Any) -> None:
        raise error

    fake = SimpleNamespace(is_initialized=lambda: False, init=init)
    monkeypatch.setattr(ray_backend, "import_ray", lambda: fake)
    with pytest.raises(LaunchError) as caught:
        start_ray(RayOptions())
    message = str(caught.value)
    assert message.startswith("cannot reach Ray at local: ")
    assert str(error).splitlines()[0] in message and "\n" not in message
