"""Import the model-building stack (torch, MONAI's U-Net) in the background at start-up.

The aggregator needs torch only when an experiment is created (its spec's tensor layout and
initial weights come from building the U-Net). Imported on demand, that first request waits
for torch and MONAI; imported on a daemon thread while the service starts, it does not.
"""

from __future__ import annotations

import importlib
import logging
import threading

log = logging.getLogger("aggregator.warmup")

MODULES = ("torch", "monai.networks.nets", "data_specs.task_spec", "personalization.state_dict")


def _import_all() -> None:
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # the request that needs it raises it properly
            log.debug("warm-up import of %s failed", name)
            return


def warm_model_stack() -> threading.Thread:
    """Start importing ``MODULES`` on a daemon thread; returns the thread."""
    thread = threading.Thread(target=_import_all, name="aggregator-warmup", daemon=True)
    thread.start()
    return thread
