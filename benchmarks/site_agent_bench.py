"""Site agent speed: its trainer against a bare MONAI loop, its inference against a bare sliding window.

``python -m benchmarks.site_agent_bench [--quick]`` writes ``benchmarks/results/site_agent.md``.

1. Training throughput (samples/s) of ``SiteTrainer.train_round`` (the agent's whole round minus
   validation: state loading, the lean loop, the state copy) against a bare MONAI loop on the
   same U-Net, data, batch size, optimiser and loader. Target: ratio >= 0.95.
2. 3D inference of one NIfTI volume through ``fedseg site infer``'s code path (read, orient,
   normalise, sliding window, invert, write the mask) against one bare
   ``sliding_window_inference`` call on the already-loaded, normalised tensor. Target: <= 1.1.

Runs alternate (agent, bare, agent, bare, ...) after a warm-up; the report gives the fastest run
of each and the median ratio of back-to-back pairs (robust on a shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data_specs.task_spec import TaskSpec, build_unet
from data_specs.wire import PersonalizationConfig, TrainConfig
from deploy.launcher.report import markdown_table, report_header, write_report

RESULT = Path(__file__).parent / "results" / "site_agent.md"
TRAIN_SPEC = TaskSpec(
    channels=(16, 32, 64, 128),
    strides=(2, 2, 2),
    num_res_units=2,
    out_channels=4,
    patch_size=(128, 128),
)
# MONAI's usual 3D U-Net size (the tutorials' spleen / BraTS networks).
INFER_SPEC = TaskSpec(
    spatial_dims=3,
    channels=(16, 32, 64, 128, 256),
    strides=(2, 2, 2, 2),
    num_res_units=2,
    out_channels=4,
    patch_size=(96, 96, 96),
)


class Blobs(Dataset):
    """In-memory 2D items with a few bright discs of classes 1..3 (same for both loops)."""

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[:size, :size]
        self.items = []
        for _ in range(n):
            image = rng.normal(0, 0.3, (size, size)).astype(np.float32)
            label = np.zeros((size, size), dtype=np.int64)
            for cls in (1, 2, 3):
                cy, cx, r = (
                    rng.integers(10, size - 10),
                    rng.integers(10, size - 10),
                    rng.integers(4, 12),
                )
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
                image[disc] += cls
                label[disc] = cls
            self.items.append(
                {"image": torch.from_numpy(image)[None], "label": torch.from_numpy(label)[None]}
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def bare_monai_round(data: Dataset, state: dict, config: TrainConfig) -> float:
    """The reference: a plain MONAI training loop. Returns seconds."""
    from monai.losses import DiceCELoss

    start = time.perf_counter()
    torch.manual_seed(config.seed)
    model = build_unet(TRAIN_SPEC)
    model.load_state_dict(state)
    model.train()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    loader = DataLoader(
        data,
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    for _ in range(config.local_epochs):
        for batch in loader:
            opt.zero_grad()
            loss = loss_fn(model(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def agent_round(data: Dataset, state: dict, config: TrainConfig) -> float:
    """The site agent's round (without validation). Returns seconds."""
    from site_agent.training.trainer import SiteTrainer

    start = time.perf_counter()
    trainer = SiteTrainer(TRAIN_SPEC, data, None, progress=False)
    trainer.train_round(state, config)
    return time.perf_counter() - start


def bench_training(repeats: int, n: int) -> dict[str, float]:
    data = Blobs(n, TRAIN_SPEC.patch_size[0])
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in build_unet(TRAIN_SPEC).state_dict().items()}
    config = TrainConfig(
        local_epochs=1,
        batch_size=8,
        lr=0.01,
        seed=1,
        personalization=PersonalizationConfig(method="none"),
    )
    agent_round(data, state, config.model_copy(update={"max_steps": 1}))  # warm-up
    bare_monai_round(data, state, config.model_copy(update={"max_steps": 1}))
    agent, bare = [], []
    for _ in range(repeats):
        agent.append(agent_round(data, state, config))
        bare.append(bare_monai_round(data, state, config))
    samples = n * config.local_epochs
    a, b = min(agent), min(bare)
    paired = statistics.median(b_ / a_ for a_, b_ in zip(agent, bare, strict=True))
    return {
        "samples": samples,
        "agent_s": a,
        "bare_s": b,
        "agent_sps": samples / a,
        "bare_sps": samples / b,
        "ratio": b / a,
        "paired_ratio": paired,
    }


class TrainedLike(torch.nn.Module):
    """The U-Net's full compute plus a term that makes its output look trained.

    A random U-Net predicts salt-and-pepper label maps whose gzip alone costs more than the
    rest of the path; a trained network predicts compact structures. Adding a strong vote for
    the class of each intensity band keeps every U-Net FLOP and gives such a mask.
    """

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.unet(x)
        bands = torch.cat(
            [x < 1.0, (x >= 1.0) & (x < 2.0), (x >= 2.0) & (x < 3.0), x >= 3.0], dim=1
        )
        return logits + 20.0 * bands.to(logits.dtype)


def synthetic_volume(shape: tuple[int, int, int]) -> np.ndarray:
    """Smooth blobs of three intensities on noise (a stand-in for organs)."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    vol = rng.normal(0, 0.2, shape).astype(np.float32)
    for level in (1.5, 2.5, 3.5):
        centre = rng.uniform(0.25, 0.75, 3) * np.array(shape)
        radius = rng.uniform(0.08, 0.18) * min(shape)
        vol[((grid - centre) ** 2).sum(-1) < radius**2] += level * 2
    return vol


def bench_inference(repeats: int, shape: tuple[int, int, int], folder: Path) -> dict[str, float]:
    from monai.inferers import sliding_window_inference

    from data_specs.imaging.transforms import prepare_scan
    from site_agent.clinic.inference import segment_scan, write_segmentation

    affine = np.diag([-1.2, 0.9, 2.0, 1.0])  # not RAS: the agent's path reorients and inverts
    scan = folder / "volume.nii.gz"
    nib.save(nib.Nifti1Image(synthetic_volume(shape), affine), scan)
    torch.manual_seed(0)
    model = TrainedLike(build_unet(INFER_SPEC)).eval()
    image = prepare_scan(scan, INFER_SPEC).image[None]
    timings: dict[str, list[float]] = {"agent": [], "bare": [], "write": [], "read": []}

    def agent() -> None:
        start = time.perf_counter()
        seg = segment_scan(model, INFER_SPEC, scan)
        written = time.perf_counter()
        write_segmentation(seg, folder / "mask.nii.gz")
        end = time.perf_counter()
        timings["agent"].append(end - start)
        timings["write"].append(end - written)

    def bare() -> None:
        start = time.perf_counter()
        with torch.inference_mode():
            sliding_window_inference(image, INFER_SPEC.patch_size, 4, model, overlap=0.25)
        timings["bare"].append(time.perf_counter() - start)

    def read() -> None:
        start = time.perf_counter()
        nib.load(scan).get_fdata(dtype=np.float32)
        timings["read"].append(time.perf_counter() - start)

    agent(), bare(), read()  # warm-up
    for values in timings.values():
        values.clear()
    for _ in range(repeats):
        agent()
        bare()
        read()
    best = {k: min(v) for k, v in timings.items()}
    in_memory = best["agent"] - best["write"] - best["read"]
    paired = statistics.median(
        a / b for a, b in zip(timings["agent"], timings["bare"], strict=True)
    )
    return {
        "agent_s": best["agent"],
        "bare_s": best["bare"],
        "write_s": best["write"],
        "read_s": best["read"],
        "in_memory_s": in_memory,
        "ratio": best["agent"] / best["bare"],
        "ratio_in_memory": in_memory / best["bare"],
        "paired_ratio": paired,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller inputs")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 9
    n = 32 if args.quick else 64
    shape = (96, 96, 64) if args.quick else (160, 160, 96)
    torch.set_num_threads(torch.get_num_threads())
    train = bench_training(repeats, n)
    print(
        f"training: agent {train['agent_sps']:.1f} samples/s, bare {train['bare_sps']:.1f}, ratio {train['ratio']:.3f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        infer = bench_inference(repeats, shape, Path(tmp))
    print(
        f"inference: agent {infer['agent_s']:.2f} s, bare {infer['bare_s']:.2f} s, ratio {infer['ratio']:.3f}"
    )
    command = "python -m benchmarks.site_agent_bench" + (" --quick" if args.quick else "")
    text = report_header("Site agent: training throughput and inference overhead", command)
    text += f"\n- torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n"
    text += (
        f"- Repeats: {repeats} alternating (agent, bare) pairs after a warm-up. Figures are the "
        "fastest run of each (the least disturbed on a shared machine); the paired ratio is "
        "the median over the pairs of the two runs made back to back.\n\n"
    )
    text += "## Training throughput (one local round, no validation)\n\n"
    text += (
        f"U-Net 2D channels {TRAIN_SPEC.channels}, res units {TRAIN_SPEC.num_res_units}, "
        f"patch {TRAIN_SPEC.patch_size}, 4 classes; {n} samples, batch 8, SGD momentum 0.9, "
        "DiceCE, DataLoader shuffle, num_workers 0.\n\n"
    )
    text += markdown_table(
        ["loop", "seconds", "samples/s"],
        [
            ["bare MONAI loop", train["bare_s"], train["bare_sps"]],
            ["SiteTrainer.train_round", train["agent_s"], train["agent_sps"]],
        ],
    )
    verdict = "meets" if train["ratio"] >= 0.95 else "misses"
    text += (
        f"\n\nRatio agent / bare: **{train['ratio']:.3f}** ({verdict} the target >= 0.95); "
        f"paired ratio {train['paired_ratio']:.3f}\n\n"
    )
    text += "## 3D inference of one volume\n\n"
    text += (
        f"Volume {shape} (NIfTI .nii.gz, not RAS), MONAI U-Net 3D channels "
        f"{INFER_SPEC.channels}, res units 2, patch {INFER_SPEC.patch_size}, sw_batch_size 4, "
        "overlap 0.25. Random weights plus a per-intensity-band vote (`TrainedLike`) so the "
        "mask is compact like a trained model's; both paths run the same network.\n\n"
    )
    text += markdown_table(
        ["path", "seconds", "ratio to bare"],
        [
            ["bare sliding_window_inference (normalised tensor in memory)", infer["bare_s"], 1.0],
            [
                "`fedseg site infer` path: read .nii.gz, orient, normalise, predict, label map, "
                "invert, write .nii.gz",
                infer["agent_s"],
                infer["ratio"],
            ],
            [
                "same path without the file read and the mask write (in-memory part)",
                infer["in_memory_s"],
                infer["ratio_in_memory"],
            ],
            ["of which: reading the .nii.gz (nibabel)", infer["read_s"], None],
            [
                "of which: writing the mask .nii.gz (data_specs.imaging.imageio)",
                infer["write_s"],
                None,
            ],
        ],
    )
    verdict = "meets" if infer["ratio"] <= 1.1 else "misses"
    text += f"\n\nRatio agent / bare: **{infer['ratio']:.3f}** ({verdict} the target <= 1.1); "
    text += (
        f"in-memory part: **{infer['ratio_in_memory']:.3f}**; paired ratio "
        f"{infer['paired_ratio']:.3f}.\n"
    )
    write_report(RESULT, text)
    print(f"report: {RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
