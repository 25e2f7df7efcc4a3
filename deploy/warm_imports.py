"""What the site agent imports at run time, for deploy/slim_venv.sh to precompile (image build).

The images run with a read-only root filesystem, so Python cannot write ``.pyc`` files there:
a module without a precompiled file is compiled in memory at every start. Precompiling every
module of the venv costs about 180 MB in the site image; most of it (sympy's and torch's
unused corners, scipy's other subpackages) never runs. This script does what a training round
does with the third-party libraries (imports, a U-Net step with Adam and SGD, a TensorBoard
event, the metrics, the image readers) and prints the source file of every module it loaded
from the venv, one per line, for ``python -m compileall -i -``.

It imports no fedseg module, so the venv's layers do not depend on the project's code. Modules
it misses still work; they are compiled in memory when imported. Standard library and the
site image's dependencies only. Usage: ``python warm_imports.py PREFIX``.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import warnings

MODULES = (
    "cryptography.x509",
    "highdicom",
    "httpx",
    "libjpeg",
    "monai.data",
    "monai.inferers",
    "monai.losses",
    "monai.metrics",
    "monai.networks.nets",
    "monai.transforms",
    "nibabel",
    "numpy",
    "openjpeg",
    "PIL.Image",
    "pydantic",
    "pydantic_settings",
    "pydicom",
    "pydicom.pixels",
    "rich.console",
    "safetensors.numpy",
    "safetensors.torch",
    "scipy.ndimage",
    "torch",
    "torch.utils.tensorboard",
    "tqdm",
    "typer",
    "yaml",
)


def exercise() -> None:
    """A tiny training step and event file: pulls in what torch imports lazily (dynamo, sympy)."""
    import torch
    from monai.losses import DiceCELoss
    from monai.metrics import DiceMetric, HausdorffDistanceMetric
    from monai.networks.nets import UNet
    from torch.utils.tensorboard import SummaryWriter

    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,))
    x = torch.randn(2, 1, 16, 16)
    y = torch.randint(0, 2, (2, 1, 16, 16))
    for opt in (torch.optim.Adam(net.parameters()), torch.optim.SGD(net.parameters(), lr=0.1)):
        loss = DiceCELoss(to_onehot_y=True, softmax=True)(net(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = torch.nn.functional.one_hot(net(x).argmax(1), 2).permute(0, 3, 1, 2)
    target = torch.nn.functional.one_hot(y[:, 0], 2).permute(0, 3, 1, 2)
    DiceMetric()(pred, target)
    HausdorffDistanceMetric(percentile=95)(pred, target)
    with tempfile.TemporaryDirectory() as folder, SummaryWriter(folder) as writer:
        writer.add_scalar("loss", float(loss.detach()), 0)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: warm_imports.py PREFIX", file=sys.stderr)
        return 2
    prefix = argv[0].rstrip("/") + "/"
    warnings.simplefilter("ignore")  # libraries' deprecation notices would clutter the build log
    for name in MODULES:
        importlib.import_module(name)
    exercise()
    files = {
        getattr(m, "__file__", None) or "" for m in list(sys.modules.values()) if m is not None
    }
    for path in sorted(f for f in files if f.startswith(prefix) and f.endswith(".py")):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
