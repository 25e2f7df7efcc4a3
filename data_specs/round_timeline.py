"""Where a site's round went: the per-phase timings a site reports with its update.

Durations are seconds measured with a monotonic clock on the site; the instants
(``received_at``, ``load_at``, ``train_at``, ``upload_at``) are Unix times on the site's clock, so that a timeline of all
sites can be drawn next to the aggregator's own timestamps (exact on one host; across hosts
as good as the clocks' agreement).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

_Seconds = Annotated[float, Field(ge=0.0, le=30 * 86400.0)]


class SiteTimeline(BaseModel):
    """One site's round, phase by phase. A phase not run in this process (resumed after a
    restart) or not run at all (validation skipped this round) is None.

    Args:
        received_at: Unix time the task arrived (the long poll returned). Example: ``1.7e9``.
        poll_wait_s: idle time between the end of the site's previous task and this one's
            arrival (waiting for the round to close and the next to open).
        download_s: downloading and verifying the global model (starts at ``received_at``).
        load_at: Unix time the datasets and the model began to be built (with the download,
            on a second thread, for a new task).
        load_s: building the datasets and the model (the data cache makes later rounds cheap).
        train_at: Unix time training began (after both the download and the load).
        train_s: local training (optimiser steps, personalisation).
        validate_s: validating the trained model on the local validation split.
        encode_s: encoding and writing the update to the work dir.
        upload_at: Unix time the upload started.
    """

    model_config = ConfigDict(extra="forbid")

    received_at: Annotated[float, Field(ge=0.0)] | None = None
    poll_wait_s: _Seconds | None = None
    download_s: _Seconds | None = None
    load_at: Annotated[float, Field(ge=0.0)] | None = None
    load_s: _Seconds | None = None
    train_at: Annotated[float, Field(ge=0.0)] | None = None
    train_s: _Seconds | None = None
    validate_s: _Seconds | None = None
    encode_s: _Seconds | None = None
    upload_at: Annotated[float, Field(ge=0.0)] | None = None

    def busy_s(self) -> float:
        """Seconds of measured work (download, load, train, validate, encode)."""
        parts = (self.download_s, self.load_s, self.train_s, self.validate_s, self.encode_s)
        return sum(p for p in parts if p is not None)
