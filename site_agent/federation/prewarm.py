"""Import the training stack (torch, MONAI) on a background thread while the agent waits.

A fresh agent enrolls and long-polls with light modules only; ``site_agent.federation.task_runner`` pulls
in torch and MONAI (seconds of CPU), which the first task needs. ``start_prewarm`` starts that
import on a daemon thread as soon as the agent has enrolled, so the first task finds it done
(or finishes it: the main thread's own ``import`` waits on the module lock and never imports
twice). It is started *after* the start-up checks and enrollment, whose own imports run on the
main thread, so the two threads never hold import locks the other needs.

An import error here is only logged: the main thread's import raises the same error, on the
first task, where the loop already handles it.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time

log = logging.getLogger(__name__)

PREWARM_MODULE = "site_agent.federation.task_runner"
"""What the first task imports (and, through it, torch, MONAI and the trainer)."""


def start_prewarm(module: str = PREWARM_MODULE) -> threading.Thread:
    """Import ``module`` on a daemon thread and return the thread (already started).

    Args:
        module: dotted module name. Default ``site_agent.federation.task_runner``.

    Returns:
        The started thread; ``join()`` it to wait for the import.
    """
    thread = threading.Thread(target=_import, args=(module,), name="fedseg-prewarm", daemon=True)
    thread.start()
    return thread


def _import(module: str) -> None:
    started = time.perf_counter()
    try:
        importlib.import_module(module)
    except Exception as exc:  # the first task's own import reports it where it is handled
        log.warning("pre-import of %s failed: %s: %s", module, type(exc).__name__, exc)
        return
    log.debug("pre-imported %s in %.2f s", module, time.perf_counter() - started)
