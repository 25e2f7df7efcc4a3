"""Augmentation of whole batches on the device: flips, quarter turns and intensity jitter.

Used when a task resizes whole slices to the patch size (``TaskSpec.fit = resize``): items are
then all of one shape, so the random transforms run once per batch as a handful of tensor ops
instead of a MONAI chain per item in the loader (which costs as much as a training step on a
2-core CPU). Each sample still draws its own transform.
"""

from __future__ import annotations

import torch


class BatchAugment:
    """Per-sample random flips along each spatial axis, quarter turns in the first plane when it is
    square, and intensity scale and shift, applied to a whole batch.

    Args:
        spatial_dims: 2 or 3. Example: ``2``.
        seed: seed of the generator. Default 0.
        rotate: allow quarter turns (only applied to square planes). Default True.
        intensity: largest relative intensity scale and shift (p=0.5 each). Default 0.1.
    """

    def __init__(
        self, spatial_dims: int, *, seed: int = 0, rotate: bool = True, intensity: float = 0.1
    ) -> None:
        self.spatial_dims = spatial_dims
        self.rotate = rotate
        self.intensity = intensity
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment ``images (B, C, *spatial)`` and ``labels (B, 1, *spatial)`` together."""
        n = images.shape[0]
        g = self.generator
        flips = torch.randint(0, 2, (n, self.spatial_dims), generator=g).bool()
        square = images.shape[2] == images.shape[3]
        turns = (
            torch.randint(0, 4, (n,), generator=g)
            if self.rotate and square
            else torch.zeros(n, dtype=torch.long)
        )
        # Group the samples by their transform: at most 2**dims * 4 tensor ops per batch.
        codes = turns * (1 << self.spatial_dims)
        for d in range(self.spatial_dims):
            codes += flips[:, d].long() << d
        out_x, out_y = images.clone(), labels.clone()
        for code in codes.unique().tolist():
            if code == 0:
                continue
            idx = (codes == code).nonzero().flatten().to(images.device)
            x, y = images.index_select(0, idx), labels.index_select(0, idx)
            dims = [2 + d for d in range(self.spatial_dims) if code >> d & 1]
            if dims:
                x, y = x.flip(dims), y.flip(dims)
            k = code >> self.spatial_dims
            if k:
                x, y = torch.rot90(x, k, (2, 3)), torch.rot90(y, k, (2, 3))
            out_x[idx], out_y[idx] = x, y
        if self.intensity > 0:
            shape = (n,) + (1,) * (images.ndim - 1)
            scale = torch.where(
                torch.rand(shape, generator=g) < 0.5,
                1 + (torch.rand(shape, generator=g) * 2 - 1) * self.intensity,
                torch.ones(shape),
            )
            shift = torch.where(
                torch.rand(shape, generator=g) < 0.5,
                (torch.rand(shape, generator=g) * 2 - 1) * self.intensity,
                torch.zeros(shape),
            )
            out_x = out_x * scale.to(images.device) + shift.to(images.device)
        return out_x, out_y
