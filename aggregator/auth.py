"""Bearer tokens: random, shown once, stored only as sha256 hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token() -> str:
    """A fresh random token (``secrets.token_urlsafe(32)``, 43 characters)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The sha256 (hex) a token is stored as."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tokens_match(given: str, expected: str) -> bool:
    """Constant-time comparison of two tokens (or two token hashes)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def parse_bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None if absent or malformed."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 512:
        return None
    return token
