"""Ray failing to start is a one-line ``LaunchError``, whatever Ray raises, and a second simulation
for another Ray is refused (no Ray needed)."""

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


def test_a_second_simulation_for_another_ray_is_refused_not_run_on_the_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = {"up": False, "inits": 0}

    def init(**_: Any) -> None:
        state["up"], state["inits"] = True, state["inits"] + 1

    fake = SimpleNamespace(is_initialized=lambda: state["up"], init=init)
    monkeypatch.setattr(ray_backend, "import_ray", lambda: fake)
    monkeypatch.setattr(ray_backend, "_started_for", [])
    assert start_ray(RayOptions()) is fake  # an embedded Ray for a first simulation
    assert start_ray(RayOptions()) is fake and state["inits"] == 1  # the same one again
    with pytest.raises(LaunchError) as caught:  # a notebook's next run, for a cluster
        start_ray(RayOptions(address="10.0.0.5:6379"))
    message = str(caught.value)
    assert "already connected to an embedded local Ray, not to 10.0.0.5:6379" in message
    assert "a process of its own" in message and state["inits"] == 1
    state["up"] = False  # after ray.shutdown(): the cluster is reached
    assert start_ray(RayOptions(address="10.0.0.5:6379")) is fake and state["inits"] == 2
    assert start_ray(RayOptions(address="10.0.0.5:6379")) is fake
