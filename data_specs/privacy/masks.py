"""Key agreement, mask streams and share encryption for secure aggregation (``cryptography``).

- Every site makes two fresh X25519 key pairs per round: ``c`` encrypts the secret shares it
  sends to other sites (the server relays ciphertexts it cannot read), ``s`` agrees the
  pairwise mask seeds.
- A pairwise seed is HKDF-SHA256 of the X25519 shared secret, bound to the round context
  (experiment, round, attempt) and to the ordered pair, so seeds never repeat across rounds.
- A mask is the ChaCha20 keystream of a 32-byte seed read as ring elements: both ends of a pair
  expand the same seed to the same mask; the server, once it recovers a seed, does too.
- Shares travel under ChaCha20-Poly1305 keyed by the ``c`` agreement, with the sender, the
  recipient and the round context as associated data, so a relayed share cannot be replayed
  into another pair or round.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from data_specs.errors import PrivacyError

KEY_BYTES = 32
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair as raw 32-byte strings."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        key = X25519PrivateKey.generate()
        return cls.from_private(key.private_bytes(_RAW, _RAW_PRIV, serialization.NoEncryption()))

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        """The pair of a raw private key (the server rebuilds a dropped site's this way)."""
        try:
            key = X25519PrivateKey.from_private_bytes(private)
        except ValueError as exc:
            raise PrivacyError(f"not a 32-byte X25519 private key: {exc}") from exc
        return cls(private, key.public_key().public_bytes(_RAW, _RAW_PUB))


def agree(private: bytes, peer_public: bytes, *, info: bytes) -> bytes:
    """A 32-byte key both ends derive: HKDF-SHA256 of the X25519 shared secret, bound to ``info``.

    Raises:
        PrivacyError: a malformed key, or a low-order peer key (all-zero shared secret).
    """
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError as exc:
        raise PrivacyError(f"key agreement failed: {exc}") from exc
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def pair_info(context: bytes, purpose: str, a: int, b: int) -> bytes:
    """HKDF ``info`` of one unordered site pair in one round: the lower index first."""
    lo, hi = min(a, b), max(a, b)
    return b"fedseg-secagg\0" + context + f"\0{purpose}\0{lo}\0{hi}".encode()


def mask_stream(seed: bytes, size: int, bits: int) -> np.ndarray:
    """``size`` pseudo-random ring elements (uint32 or uint64) from a 32-byte seed (ChaCha20)."""
    if len(seed) != KEY_BYTES:
        raise PrivacyError(f"a mask seed is {KEY_BYTES} bytes, got {len(seed)}")
    width = bits // 8
    encryptor = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    raw = encryptor.update(bytes(size * width))
    return np.frombuffer(raw, dtype="<u4" if bits == 32 else "<u8").astype(
        np.uint32 if bits == 32 else np.uint64, copy=False
    )


def seal(key: bytes, plaintext: bytes, *, associated: bytes) -> bytes:
    """ChaCha20-Poly1305 encryption with a random 12-byte nonce in front."""
    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, *, associated: bytes) -> bytes:
    """Inverse of :func:`seal`.

    Raises:
        PrivacyError: wrong key, tampered ciphertext or associated data.
    """
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:12], sealed[12:], associated)
    except (InvalidTag, ValueError) as exc:
        raise PrivacyError("an encrypted share does not authenticate") from exc
