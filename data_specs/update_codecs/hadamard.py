"""Structured random rotation: random sign flips then a fast Walsh–Hadamard transform.

``R = H·D / √b`` with ``D`` a diagonal of random ±1 (from the seed) and ``H`` the ``b × b``
Sylvester–Hadamard matrix (``b`` a power of two). ``R`` is orthogonal (``Rᵀ R = I``), so it
preserves norms and is inverted by ``Rᵀ = D·H / √b``. Rotating before quantising spreads a
tensor's energy evenly over coordinates, which shrinks the min–max range and the quantisation
error (Konečný et al. 2016, Suresh et al. 2017).

Vectors are rotated in blocks of ``b`` (the rows of a 2-D array), so a tensor is padded to a
multiple of ``b`` rather than to one huge power of two; each block costs ``b log₂ b`` additions.
"""

from __future__ import annotations

import numpy as np


def is_power_of_two(n: int) -> bool:
    """``True`` for 1, 2, 4, 8, ..."""
    return n >= 1 and n & (n - 1) == 0


def next_power_of_two(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``). Example: ``1000 -> 1024``."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def fwht(x: np.ndarray) -> np.ndarray:
    """Unnormalised fast Walsh–Hadamard transform along the last axis (a new array).

    ``fwht(fwht(x)) == b · x`` for a last axis of length ``b``.

    Args:
        x: array whose last axis has a power-of-two length. Example: ``np.ones((3, 8))``.

    Returns:
        ``x @ H`` with ``H`` the Sylvester–Hadamard matrix, in ``x``'s float dtype.
    """
    b = x.shape[-1]
    if not is_power_of_two(b):
        raise ValueError(f"fwht needs a power-of-two last axis, got length {b}")
    y = np.array(x, dtype=np.result_type(x.dtype, np.float32), copy=True).reshape(-1, b)
    rows = y.shape[0]
    scratch = np.empty((rows, b // 2), dtype=y.dtype)
    h = 1
    while h < b:
        # Butterflies of span h: pairs (a, c) -> (a + c, a - c), all blocks at once.
        pairs = y.reshape(rows, b // (2 * h), 2, h)
        a, c = pairs[:, :, 0, :], pairs[:, :, 1, :]
        tmp = scratch.reshape(rows, b // (2 * h), h)
        np.copyto(tmp, a)
        a += c
        np.subtract(tmp, c, out=c)
        h *= 2
    return y.reshape(x.shape)


def random_signs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Independent ±1 (float32) of the given shape."""
    return np.where(rng.integers(0, 2, size=shape, dtype=np.uint8) == 1, 1.0, -1.0).astype(
        np.float32
    )


def rotate(blocks: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """``R x = H (D x) / √b`` for every row of ``blocks``.

    Args:
        blocks: ``(rows, b)`` with ``b`` a power of two. Example: ``x.reshape(-1, 1024)``.
        signs: ±1 of the same shape (``D`` per row), from :func:`random_signs`.

    Returns:
        The rotated rows (a new array); row norms are preserved.
    """
    y = fwht(blocks * signs)
    y *= y.dtype.type(1.0 / np.sqrt(blocks.shape[-1]))
    return y


def unrotate(blocks: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """``Rᵀ y = D (H y) / √b``: the inverse of :func:`rotate` with the same signs."""
    y = fwht(blocks)
    y *= y.dtype.type(1.0 / np.sqrt(blocks.shape[-1]))
    y *= signs
    return y
