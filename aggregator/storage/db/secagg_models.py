"""Tables of secure aggregation: each site's protocol steps in a round, and the round's running sum.

No row or blob holds a site's update: a masked vector is added to the round's running sum on
arrival and the previous sum's blob is deleted, so only masked sums (never a single unmasked
update) are ever on disk.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from aggregator.storage.db.models import SHA_LEN, Base


class SecAggEntry(Base):
    """One site's part in one round attempt: its public keys, relayed shares, unmask answer."""

    __tablename__ = "secagg_entries"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), primary_key=True)
    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id"), index=True)
    site_index: Mapped[int]
    c_public: Mapped[str] = mapped_column(String(64))
    s_public: Mapped[str] = mapped_column(String(64))
    shares: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # recipient index -> hex
    masked: Mapped[bool] = mapped_column(default=False)
    unmask: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # seed_shares / key_shares


class SecAggSum(Base):
    """The running sum of a round's masked vectors and when unmasking began."""

    __tablename__ = "secagg_sums"

    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id"), primary_key=True)
    sum_sha256: Mapped[str] = mapped_column(String(SHA_LEN))
    uploads: Mapped[int] = mapped_column(default=0)
    unmask_started_at: Mapped[datetime | None]
