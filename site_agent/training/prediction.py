"""The network's class scores on a prepared scan, the one way training's input fit is undone.

``fit = patch``: MONAI's ``sliding_window_inference`` at the patch size over the scan's grid.
``fit = resize``: each slice (a 2D task) or the volume (3D) is resized to the patch size by area
averaging, as training resized it, and the softmax scores are resized back (bilinear or
trilinear) before any arg-max, so the label map has the prepared grid's size and smooth borders.
Both run under bf16 autocast when the precision setting allows it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from data_specs.constants import InputFit, Precision
from data_specs.task_spec import TaskSpec
from site_agent.training.precision import autocast, memory_format, use_bf16

_CHUNK = 32  # slices per forward pass in resize mode


def predict_scores(
    model: nn.Module,
    spec: TaskSpec,
    image: torch.Tensor,
    *,
    sliced: bool,
    device: str | torch.device = "cpu",
    precision: Precision | str = Precision.AUTO,
    sw_batch_size: int = 4,
    overlap: float = 0.25,
) -> torch.Tensor:
    """Class scores ``(K, *spatial)`` (float32, on the CPU) for a prepared image.

    Args:
        model: a network of ``spec``; it is put in eval mode on ``device``.
        spec: the task spec (fit mode, patch size, dims).
        image: ``(C, *spatial)`` in the network's frame (``PreparedScan.image``).
        sliced: a 2D task on a volume: the last axis holds the slices.
        device: where to run. Default ``"cpu"``.
        precision: ``auto``, ``fp32`` or ``bf16``. Default ``auto``.
        sw_batch_size: windows per forward pass (patch mode). Default 4.
        overlap: sliding-window overlap (patch mode). Default 0.25.

    Returns:
        Logits (patch mode) or softmax probabilities (resize mode); take the arg-max over the
        first axis for labels.
    """
    batch = image.permute(3, 0, 1, 2) if sliced else image[None]
    model = model.to(device).eval()
    bf16 = use_bf16(precision, device)
    batch = batch.to(device, torch.float32)
    with torch.inference_mode():
        if spec.fit == InputFit.RESIZE:
            scores = _resized(model, spec, batch, bf16, device)
        else:
            scores = _sliding(model, spec, batch, bf16, device, sw_batch_size, overlap)
    scores = scores.float().cpu()
    return scores.permute(1, 2, 3, 0) if sliced else scores[0]


def _sliding(
    model: nn.Module,
    spec: TaskSpec,
    batch: torch.Tensor,
    bf16: bool,
    device: str | torch.device,
    sw_batch_size: int,
    overlap: float,
) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    fmt = memory_format(spec.spatial_dims, True)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with autocast(bf16, device):
            return model(x.contiguous(memory_format=fmt)).float()

    return torch.as_tensor(
        sliding_window_inference(batch, spec.patch_size, sw_batch_size, forward, overlap=overlap)
    )


def _resized(
    model: nn.Module, spec: TaskSpec, batch: torch.Tensor, bf16: bool, device: str | torch.device
) -> torch.Tensor:
    size = tuple(batch.shape[2:])
    patch = tuple(spec.patch_size)
    mode = "bilinear" if spec.spatial_dims == 2 else "trilinear"
    fmt = memory_format(spec.spatial_dims, True)
    out = []
    for start in range(0, batch.shape[0], _CHUNK):
        x = batch[start : start + _CHUNK]
        if size != patch:
            x = F.interpolate(x, size=patch, mode="area")
        with autocast(bf16, device):
            logits = model(x.contiguous(memory_format=fmt))
        probs = torch.softmax(logits.float(), dim=1)
        if size != patch:
            probs = F.interpolate(probs, size=size, mode=mode, align_corners=False)
        out.append(probs)
    return torch.cat(out)
