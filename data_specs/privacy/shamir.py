"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 − 1).

A secret ``s`` becomes the constant term of a random polynomial ``f`` of degree ``t − 1``;
share ``j`` is ``(j, f(j))`` for ``j = 1..n``. Any ``t`` shares give ``s`` back by Lagrange
interpolation at 0; fewer reveal nothing about it. Secure aggregation shares each site's mask
seed and its mask key this way, so the server can remove the masks of a site that dropped out
(with the key) or of one that did not (with the seed) from ``t`` surviving sites' shares.

The coefficients come from :mod:`secrets` (the OS's randomness). A share travels as
``x`` plus the 66-byte big-endian ``y``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from data_specs.errors import PrivacyError

PRIME = 2**521 - 1  # a Mersenne prime: every 32-byte secret is a field element
SECRET_BYTES = 32
SHARE_BYTES = 66  # ceil(521 / 8)


def split(secret: bytes, *, threshold: int, holders: list[int]) -> dict[int, bytes]:
    """Shares of ``secret`` for ``holders`` (distinct x-coordinates ≥ 1), any ``threshold`` of which recover it.

    Args:
        secret: 32 bytes. Example: ``os.urandom(32)``.
        threshold: shares needed, ``1 ≤ threshold ≤ len(holders)``. Example: ``3``.
        holders: x-coordinates of the share holders. Example: ``[1, 2, 3, 4, 5]``.

    Returns:
        ``{x: y as 66 big-endian bytes}``.

    Raises:
        PrivacyError: wrong secret length, threshold out of range or bad holders.
    """
    if len(secret) != SECRET_BYTES:
        raise PrivacyError(f"a shared secret is {SECRET_BYTES} bytes, got {len(secret)}")
    if len(set(holders)) != len(holders) or any(x < 1 or x >= PRIME for x in holders):
        raise PrivacyError(f"share holders must be distinct integers >= 1, got {holders}")
    if not 1 <= threshold <= len(holders):
        raise PrivacyError(f"threshold must be in [1, {len(holders)}], got {threshold}")
    coefficients = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    shares = {}
    for x in holders:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


def combine(shares: Mapping[int, bytes], *, threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares ``{x: y}`` (Lagrange at 0).

    Raises:
        PrivacyError: fewer than ``threshold`` shares, or a malformed share.
    """
    if len(shares) < threshold:
        raise PrivacyError(f"{len(shares)} share(s) received, {threshold} needed to recover")
    points = sorted(shares.items())[:threshold]
    xs = [x for x, _ in points]
    ys = []
    for x, y in points:
        if len(y) != SHARE_BYTES or not 1 <= x < PRIME:
            raise PrivacyError(f"malformed share for x={x}")
        ys.append(int.from_bytes(y, "big"))
    secret = 0
    for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise PrivacyError("the shares do not combine to a 32-byte secret (inconsistent shares)")
    return secret.to_bytes(SECRET_BYTES, "big")
