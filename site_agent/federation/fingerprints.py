"""The site's dataset fingerprint: computed from the manifest, cached, sent at start-up and on change.

What is sent is exactly ``data_specs.manifests.fingerprint.DatasetFingerprint`` (aggregates only), the
same JSON ``fedseg site fingerprint`` prints; the privacy guard checks it again on the wire.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pydantic import ValidationError

from data_specs.errors import DataSpecError
from data_specs.manifests.fingerprint import DatasetFingerprint, compute_fingerprint
from data_specs.manifests.manifest import load_manifest
from site_agent.errors import (
    AggregatorError,
    AggregatorUnavailableError,
    TLSVerificationError,
    TokenRevokedError,
)
from site_agent.federation.client import AggregatorClient
from site_agent.federation.workdir import WorkDir

log = logging.getLogger(__name__)
_CACHE = "fingerprint.json"


def manifest_fingerprint(manifest_path: Path, workdir: WorkDir | None = None) -> DatasetFingerprint:
    """The fingerprint of a manifest's training cases, cached in the work dir by manifest digest.

    Args:
        manifest_path: the site's ``dataset.json``. Example: ``Path("/data/heart/dataset.json")``.
        workdir: where to cache it; None computes it afresh. Default None.

    Raises:
        DataSpecError: the manifest does not load, a scan does not read, too few cases.
    """
    digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    cache = workdir.root / _CACHE if workdir is not None else None
    if cache is not None and cache.is_file():
        try:
            stored = json.loads(cache.read_text())
            if stored.get("manifest_sha256") == digest:
                return DatasetFingerprint.model_validate(stored["fingerprint"])
        except (ValueError, KeyError, TypeError, ValidationError, OSError):
            pass  # a damaged cache is recomputed
    fingerprint = compute_fingerprint(load_manifest(manifest_path))
    if workdir is not None and cache is not None:
        workdir.ensure()
        payload = {"manifest_sha256": digest, "fingerprint": fingerprint.model_dump(mode="json")}
        workdir.write_json(cache, payload)
    return fingerprint


class FingerprintSync:
    """Sends the fingerprint once at start-up, and again whenever the manifest file changes.

    Args:
        manifest: the manifest path; None disables the sync. Example: ``settings.manifest``.
        workdir: the site's work dir (cache).
        client: the aggregator client (token set).
    """

    def __init__(self, manifest: Path | None, workdir: WorkDir, client: AggregatorClient) -> None:
        self.manifest, self.workdir, self.client = manifest, workdir, client
        self._stamp: tuple[int, int] | None = None

    def sync(self) -> bool:
        """Send the fingerprint if the manifest changed since the last successful send.

        Returns:
            Whether a fingerprint was sent now.

        Raises:
            TokenRevokedError, TLSVerificationError: as for any call; other failures are
                logged and retried at the next call.
        """
        if self.manifest is None:
            return False
        try:
            stat = self.manifest.stat()
        except OSError:
            return False
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return False
        try:
            if not load_manifest(self.manifest).training:
                # An outside site holds unlabelled scans only: it has nothing to fingerprint.
                log.info("no labelled training cases: no dataset fingerprint to send")
                self._stamp = stamp
                return False
            fingerprint = manifest_fingerprint(self.manifest, self.workdir)
        except (DataSpecError, OSError) as exc:
            # The message may name a scan: keep it out of the log; the CLI shows it locally.
            log.warning(
                "no dataset fingerprint sent (%s); `fedseg site fingerprint` says why",
                type(exc).__name__,
            )
            self._stamp = stamp  # retried when the manifest changes
            return False
        try:
            self.client.send_fingerprint(fingerprint)
        except (TokenRevokedError, TLSVerificationError):
            raise
        except (AggregatorError, AggregatorUnavailableError) as exc:
            log.warning("the aggregator did not take the dataset fingerprint: %s", exc)
            return False
        self._stamp = stamp
        log.info("dataset fingerprint sent (%d training cases)", fingerprint.num_cases)
        return True
