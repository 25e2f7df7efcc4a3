"""No cyclic garbage collection while a service starts; its start-up objects frozen afterwards.

Starting the aggregator or a site agent creates hundreds of thousands of long-lived objects
(modules, classes, pydantic and SQLAlchemy schemas, FastAPI routes). Python's cyclic collector
walks all of them again and again while they are being made: about a tenth of a start-up's
CPU, for no garbage worth collecting. ``pause`` switches the collector off at the start of a
service's command; ``resume`` switches it back on once the service is ready, after moving every
object alive then into the permanent generation (``gc.freeze``), so that no later collection
walks them again either.

Reference counting frees ordinary garbage as usual while the collector is paused; only cycles
made during start-up wait for ``resume``. Both calls are cheap and may be repeated::

    pause()
    ...  # imports, settings, database, routes
    resume()
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Switch the cyclic garbage collector off until ``resume`` (no-op if it already is off)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Freeze the objects alive now and switch the collector back on, if ``pause`` switched it
    off (a collector someone else disabled stays off)."""
    global _paused
    if _paused:
        gc.freeze()
        gc.enable()
        _paused = False


def paused() -> bool:
    """Whether ``pause`` has switched the collector off and ``resume`` has not yet run."""
    return _paused
