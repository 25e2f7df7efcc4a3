"""Privacy maths beyond "only weights leave": secure aggregation and client-level DP.

Pure modules, no torch: ``ring`` (fixed-point quantisation into Z_2^k), ``shamir`` (secret
sharing), ``masks`` (X25519 agreement, ChaCha20 mask streams, share encryption),
``secagg_site`` / ``secagg_server`` (the four protocol steps), ``dp`` (clipping, noise,
adaptive clipping), ``accountant`` ((ε, δ) from ``dp-accounting``) and ``config`` (the
experiment options).
"""

from __future__ import annotations

from data_specs.privacy.config import DPConfig, DPMode, PrivacyConfig, SecAggConfig

__all__ = ["DPConfig", "DPMode", "PrivacyConfig", "SecAggConfig"]
