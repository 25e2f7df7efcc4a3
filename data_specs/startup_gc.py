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

``resume`` also raises the collector's thresholds for the service's life (``SERVICE_THRESHOLDS``).
A service's requests make objects by the thousand that reference counting frees, and cycles
are rare. With Python's defaults (700, 10, 10) the aggregator's collector ran about 15 times a
second while a thousand sites enrolled and took their first round, found almost nothing to free,
and held the event loop up to a tenth of a second at a full collection: 1.5 CPU seconds over
the enrolment and three rounds, 0.40–0.48 s of the first round. With these thresholds: 0.5 CPU
seconds and 0.12–0.22 s (``benchmarks/results/scale.md``, section S).
"""

from __future__ import annotations

import gc

# A young collection after 10,000 new objects instead of 700; middle and full collections
# as often as before relative to it (Python's 10 and 10).
SERVICE_THRESHOLDS = (10_000, 10, 10)

_paused = False


def pause() -> None:
    """Switch the cyclic garbage collector off until ``resume`` (no-op if it already is off)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Freeze the objects alive now, set ``SERVICE_THRESHOLDS`` and switch the collector back
    on, if ``pause`` switched it off (a collector someone else disabled stays off, with its
    thresholds)."""
    global _paused
    if _paused:
        gc.freeze()
        gc.set_threshold(*SERVICE_THRESHOLDS)
        gc.enable()
        _paused = False


def paused() -> bool:
    """Whether ``pause`` has switched the collector off and ``resume`` has not yet run."""
    return _paused
