"""A real site agent whose "training" is a fixed wait: the workload of the Flower peer harness.

``python -m benchmarks.sleep_site --train-seconds 2.0`` reads its settings from the
``FEDSEG_SITE_*`` environment as ``fedseg site run`` does and runs the real agent loop (long
poll, download and verify the global model, write and upload the update, restart-safe state);
only ``SiteTrainer`` is replaced: the trainer adds Gaussian noise (std 0.001) to every weight
and sleeps so that noise + sleep take exactly the given seconds, as the Flower harness's
ClientApp does. It reports ``train_seconds`` and no validation.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from data_specs.wire import SiteMetrics, TaskAssignment, TrainConfig

if TYPE_CHECKING:
    from site_agent.training.trainer import TrainResult


class SleepTrainer:
    """``SiteTrainer``'s ``train_round`` and ``close``, with a fixed-length wait as training.

    Args:
        seconds: the length of one round's "training". Example: ``2.0``.
        num_samples: sample count reported with the update. Default 100.
    """

    val_data = None

    def __init__(self, seconds: float, num_samples: int = 100) -> None:
        self.seconds = seconds
        self.num_samples = num_samples

    def train_round(
        self,
        global_state: Mapping[str, Any],
        config: TrainConfig,
        *,
        local_keys: Sequence[str] = (),
        personal_state: Mapping[str, Any] | None = None,
        tag: str = "run",
        round_: int = 1,
        total_rounds: int | None = None,
    ) -> TrainResult:
        """Perturb the weights, then wait until ``seconds`` have passed since the call."""
        import numpy as np
        import torch

        from site_agent.training.trainer import TrainResult

        start = time.perf_counter()
        gen = torch.Generator().manual_seed(config.seed)
        state: dict[str, torch.Tensor] = {}
        for key, value in global_state.items():
            tensor = torch.from_numpy(np.array(value))
            if tensor.is_floating_point():
                tensor = tensor + 0.001 * torch.randn(tensor.shape, generator=gen)
            state[key] = tensor
        remaining = self.seconds - (time.perf_counter() - start)
        if remaining > 0:
            time.sleep(remaining)
        seconds = time.perf_counter() - start
        metrics = SiteMetrics(train_seconds=seconds)
        return TrainResult(state, self.num_samples, metrics, steps=1)

    def close(self) -> None:
        """Nothing to flush."""


def main(argv: list[str] | None = None) -> None:
    from data_specs import startup_gc
    from site_agent.lean_start import skip_unused_imports

    skip_unused_imports()  # as ``fedseg site run`` starts
    startup_gc.pause()  # until enrolled: SiteAgent.run resumes it
    from site_agent.federation.loop import SiteAgent
    from site_agent.settings import SiteSettings
    from site_agent.training.threads import apply_site_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-seconds", type=float, default=2.0)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.WARNING))
    settings = SiteSettings.load(None)
    apply_site_threads()

    def factory(task: TaskAssignment) -> Any:
        return SleepTrainer(args.train_seconds)

    try:
        # The wait needs the task runner only (torch), not MONAI nor torch's compiler.
        prewarm = ("site_agent.federation.task_runner",)
        with SiteAgent(settings, trainer_factory=factory, validate=False, prewarm=prewarm) as agent:
            agent.run()
    finally:
        startup_gc.resume()


if __name__ == "__main__":
    main()
