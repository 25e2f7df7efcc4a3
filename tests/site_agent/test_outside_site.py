"""An outside site: adaptation-only manifests, ``fedseg site adapt`` failures, and inference
from the routing bundle alone (global, expert:<site>, routed as the safeguard chose)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest
import torch
from typer.testing import CliRunner

from data_specs.task_spec import build_unet
from data_specs.weights.routing_bundle import encode_routing_bundle, read_class_prior
from site_agent.cli import app
from site_agent.clinic.adapt import adapt_experiment
from site_agent.federation.workdir import WorkDir
from tests.site_agent.conftest import TINY, write_site

pytestmark = pytest.mark.slow  # real training, processes or servers: `make test` only

runner = CliRunner()


def outside_manifest(root: Path, n: int = 3) -> Path:
    """An outside site's manifest: no training, an ``adaptation`` list of images only."""
    path = write_site(root, n_train=n, n_val=0, n_test=0, seed=9, site_id="outside")
    data = json.loads(path.read_text())
    data["adaptation"] = [c["image"] for c in data.pop("training")]
    data.pop("validation", None)
    data.pop("test", None)
    path.write_text(json.dumps(data))
    return path


def bundle_bytes(class_prior: list[float] | None = None) -> bytes:
    experts = []
    for seed in range(3):
        torch.manual_seed(seed)
        experts.append({k: v.numpy() for k, v in build_unet(TINY).state_dict().items()})
    sources = [
        {"source": "global", "name": "global", "round": 2},
        {"source": "site", "name": "site-a", "round": 2},
        {"source": "site", "name": "site-b", "round": 2},
    ]
    return encode_routing_bundle(experts, sources, TINY, class_prior=class_prior)


class BundleOnly:
    """The one call ``adapt_experiment`` makes to the aggregator, answered from memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def routing_bundle(self, experiment_id: str) -> bytes:
        assert experiment_id == "exp-1"
        return self.data


def _adapt_args(manifest: Path, work: Path) -> list[str]:
    return [
        "adapt",
        "--experiment",
        "exp-1",
        "--manifest",
        str(manifest),
        "--work-dir",
        str(work),
        "--aggregator-url",
        "http://127.0.0.1:9",  # nothing listens: a bad manifest must fail before any call
        "--allow-insecure-http",
        "--device",
        "cpu",
    ]


def _one_line_exit_1(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    # `fedseg site infer` and `adapt` say what they start before loading anything (a progress
    # line: "segmenting ...", "adapting ... ..."); the failure itself is one line.
    lines = [
        line
        for line in result.output.splitlines()
        if line.strip() and not line.startswith("segmenting ") and not line.endswith(" ...")
    ]
    assert len(lines) == 1, lines
    return lines[0]


def _edit(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    for key, value in changes.items():
        if value is None:
            data.pop(key)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("missing file", "expected a readable UTF-8 JSON file"),
        ("not json", "expected JSON"),
        ("no scans", "training"),
        ("empty adaptation", "adaptation"),
        ("labelled adaptation", "adaptation cases are unlabelled"),
        ("missing image", "expected a file, found nothing"),
        ("wrong channels", "channel"),
        ("escaping path", "a path inside"),
    ],
)
def test_adapt_refuses_a_bad_manifest_in_one_line_with_exit_1(
    tmp_path: Path, breakage: str, expected: str
) -> None:
    manifest = outside_manifest(tmp_path / "outside")
    images = json.loads(manifest.read_text())["adaptation"]
    if breakage == "missing file":
        manifest = tmp_path / "nowhere" / "dataset.json"
    elif breakage == "not json":
        manifest.write_text("{not json")
    elif breakage == "no scans":
        _edit(manifest, adaptation=None, training=[])
    elif breakage == "empty adaptation":
        _edit(manifest, adaptation=[])
    elif breakage == "labelled adaptation":
        _edit(manifest, adaptation=[{"image": images[0], "label": images[0]}])
    elif breakage == "missing image":
        _edit(manifest, adaptation=[*images, "images/gone.nii.gz"])
    elif breakage == "wrong channels":
        _edit(manifest, modality={"0": "MRI", "1": "T2"})
    elif breakage == "escaping path":
        _edit(manifest, adaptation=["../../etc/passwd"])
    line = _one_line_exit_1(runner.invoke(app, _adapt_args(manifest, tmp_path / "work")))
    assert line.startswith("error: ") and expected in line
    assert not (tmp_path / "work" / "routed").exists()


def test_the_bundle_class_prior_is_read_and_checked() -> None:
    from data_specs.errors import RoutingBundleError

    assert read_class_prior(bundle_bytes()) is None
    assert read_class_prior(bundle_bytes([3.0, 1.0])) == [0.75, 0.25]
    with pytest.raises(RoutingBundleError, match="class_prior must be 2"):
        bundle_bytes([1.0, 0.0, 0.0])


def test_an_outside_site_segments_with_the_bundle_alone_and_the_recorded_choice(
    tmp_path: Path,
) -> None:
    manifest = outside_manifest(tmp_path / "outside")
    work = WorkDir(tmp_path / "work")
    path, result = adapt_experiment(
        BundleOnly(bundle_bytes([0.9, 0.1])),  # type: ignore[arg-type]
        work,
        "exp-1",
        manifest,
        steps=3,
        seed=0,
    )
    record = json.loads(work.choice_path("exp-1").read_text())
    assert path.is_file() and work.routing_path("exp-1").is_file()
    assert record["choice"] == result.record.choice and record["message"]
    assert record["prior_source"] == "bundle" and record["class_prior"] == [0.9, 0.1]
    assert work.chosen_path("exp-1").is_file() == (record["choice"] != "routed")
    scan = tmp_path / "outside" / "images" / "case_tr_000.nii.gz"
    masks = {}
    for model in ("global", "expert:site-a", "expert:2", "routed"):
        out = tmp_path / f"{model.replace(':', '_')}.nii.gz"
        args = ["infer", str(scan), "-o", str(out), "--model", model, "--work-dir", str(work.root)]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert nib.load(out).shape == nib.load(scan).shape
        masks[model] = nib.load(out).get_fdata()
        if model == "routed":
            assert f"model: {record['choice']}, as `fedseg site adapt` chose" in res.output
    # Different experts of the bundle are different models.
    assert (masks["global"] != masks["expert:2"]).any() or (
        masks["global"] != masks["expert:site-a"]
    ).any()
    out = str(tmp_path / "x.nii.gz")
    args = ["infer", str(scan), "-o", out, "--model", "expert:nobody", "--work-dir", str(work.root)]
    bad = runner.invoke(app, args)
    line = _one_line_exit_1(bad)
    assert "global, site-a, site-b" in line


def test_the_routed_choice_falls_back_to_the_saved_plain_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import personalization.outside.safeguard as guard
    from personalization.outside import AdaptConfig
    from site_agent.clinic.models import load_model

    manifest = outside_manifest(tmp_path / "outside")
    work = WorkDir(tmp_path / "work")
    # A wrong prior (pure background) and a large step force the routed model to collapse:
    # the command must fall back, say so, and `--model routed` must then use the fallback.
    forced = guard.SafeAdaptConfig(
        adapt=AdaptConfig(steps=25, lr=0.5, share_weight=50.0, shape_weight=0.0, anchor_weight=0),
        check_every=1000,
    )
    real = guard.safe_adapt

    def collapsing(spec, experts, names, loader, config=None, class_prior=None):  # type: ignore[no-untyped-def]
        return real(spec, experts, names, loader, forced, class_prior=[1.0, 0.0])

    monkeypatch.setattr(guard, "safe_adapt", collapsing)
    _, result = adapt_experiment(
        BundleOnly(bundle_bytes()),  # type: ignore[arg-type]
        work,
        "exp-1",
        manifest,
    )
    record = json.loads(work.choice_path("exp-1").read_text())
    assert record["choice"] != "routed" and not record["routed_accepted"]
    assert "rejected" in record["message"] and "Falling back" in record["message"]
    model, _ = load_model(work, "routed", experiment_id="exp-1")
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), result.chosen(x), atol=1e-5)
        assert not torch.allclose(model(x), result.routed(x), atol=1e-3)
