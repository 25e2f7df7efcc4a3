"""Augmented views for the consistency term: flips, 90° rotations and noise, with their inverse.

A prediction on the augmented view is mapped back to the original frame (``View.invert``)
before it is compared with the prediction on the scan itself. Randomness comes only from the
``torch.Generator`` passed in, so a seed fixes every view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class View:
    """One geometric + intensity change of a batch ``(B, C, *spatial)``.

    Args:
        flip_dims: tensor dims flipped (spatial dims only, >= 2). Example: ``(2,)``.
        rot_k: quarter turns in ``rot_plane``; 0 for none. Example: ``1``.
        rot_plane: the two tensor dims of the rotation plane. Example: ``(2, 3)``.
        noise: additive noise of the image's shape, or ``None``.
    """

    flip_dims: tuple[int, ...] = ()
    rot_k: int = 0
    rot_plane: tuple[int, int] = (2, 3)
    noise: torch.Tensor | None = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The augmented image: flip, then rotate, then add noise."""
        if self.flip_dims:
            x = torch.flip(x, self.flip_dims)
        if self.rot_k:
            x = torch.rot90(x, self.rot_k, self.rot_plane)
        if self.noise is not None:
            x = x + self.noise.to(x)
        return x

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """Map a dense prediction on the augmented view back to the original frame."""
        if self.rot_k:
            y = torch.rot90(y, -self.rot_k, self.rot_plane)
        if self.flip_dims:
            y = torch.flip(y, self.flip_dims)
        return y


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator, device=generator.device).item())


def random_view(x: torch.Tensor, generator: torch.Generator, noise_std: float = 0.1) -> View:
    """Draw a random view for batch ``x``.

    Each spatial axis is flipped with probability 1/2; a quarter-turn count k in {0..3} is drawn
    for one plane, chosen among planes whose two sides are equal (an anisotropic 3D patch is
    only rotated in-plane; none is drawn if no plane is square); Gaussian noise has standard
    deviation ``noise_std`` times each image's own standard deviation.

    Args:
        x: images ``(B, C, *spatial)``.
        generator: source of all randomness. Example: ``torch.Generator().manual_seed(0)``.
        noise_std: relative noise level; ``0`` for none. Default ``0.1``.

    Returns:
        The view (call ``apply`` on ``x``, ``invert`` on predictions).
    """
    spatial = list(range(2, x.dim()))
    flips = tuple(d for d in spatial if _randint(2, generator))
    planes = [
        (a, b) for i, a in enumerate(spatial) for b in spatial[i + 1 :] if x.shape[a] == x.shape[b]
    ]
    rot_k, plane = 0, (2, 3)
    if planes:
        plane = planes[_randint(len(planes), generator)]
        rot_k = _randint(4, generator)
    noise = None
    if noise_std > 0:
        scale = x.detach().flatten(1).std(dim=1).clamp_min(1e-6)
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        draw = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
        noise = draw.to(x.device) * (noise_std * scale).reshape(shape)
    return View(flip_dims=flips, rot_k=rot_k, rot_plane=plane, noise=noise)
