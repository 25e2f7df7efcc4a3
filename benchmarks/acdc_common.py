"""Shared set-up of the Dice benchmarks: ACDC hospitals, the task spec, options and an in-process federation.

The ACDC benchmarks (``inside_bench``, ``outside_bench``, ``compression_bench``,
``round_overhead_bench``) treat the five diagnosis groups as five hospitals, split by patient
(``data_specs.sources.acdc``). Manifests are written to the benchmark's scratch folder and point into
the shared ACDC folder through ``data_root``: no scan is copied.

``InProcessFederation`` is the part of ``deploy.launcher.simulation.run_simulation`` that the outside
benchmark needs with two more knobs that ``SimulationConfig`` lacks: sites that share their
personal models (``SiteSettings.share_personal``) and an outside site granted the routing bundle.
It uses the same pieces (the aggregator app behind FastAPI's in-memory transport, real
``SiteAgent`` objects driven with ``step(wait_s=0)``).
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_specs.constants import NormKind, SplitName
from data_specs.sources.acdc import ACDC_GROUPS
from data_specs.task_spec import TaskSpec

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
HOSPITALS: tuple[str, ...] = ACDC_GROUPS  # DCM, HCM, MINF, NOR, RV: the manifests' order

# ACDC 2D at 128x128: slices of the cine volumes, 4 classes (background, RV, MYO, LV).
ACDC_SPEC = TaskSpec(
    spatial_dims=2,
    in_channels=1,
    out_channels=4,
    channels=(16, 32, 64, 128),
    strides=(2, 2, 2),
    num_res_units=1,
    norm=NormKind.BATCH,
    patch_size=(128, 128),
)
# Patients per split and hospital (20 each): 15 train, 5 test; no validation split, so rounds
# spend no time on per-round validation that these benchmarks never read.
TEST_FRAC = 0.25
VAL_FRAC = 0.0
EVAL_LINE = (
    "Dice: mean of RV, MYO and LV over each test slice's whole field of view (sliding window "
    "of 128×128 patches; the agent's `evaluate_segmentation`, as `fedseg site evaluate` "
    "does; a class absent from a slice is ignored there). Sites train on random 128×128 "
    "patches drawn over the whole slice, with flips, small rotations and intensity jitter."
)


SEED_CAVEAT = (
    "Seeds: runs are deterministic for a seed (site sampling, per-site training seeds and the "
    "aggregation order follow site names), and every setting here shares one seed, so the "
    "differences between settings are not run-to-run noise; they can still be specific to "
    "that seed (initial weights, batch order), which one seed cannot rule out."
)


def default_acdc_dir() -> Path:
    """``$FEDSEG_ACDC_DIR``, else ``../shared/data/acdc`` beside the repository."""
    env = os.environ.get("FEDSEG_ACDC_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "acdc"


def parse_args(name: str, doc: str | None, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options every benchmark takes: ``--quick``, ``--work-dir``, ``--acdc-dir``, ``--seed``."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc)
    parser.add_argument("--quick", action="store_true", help="tiny smoke setting (1-2 min)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "fedseg_bench" / name,
        help="scratch folder (recreated); never inside the repository's tracked tree",
    )
    parser.add_argument("--acdc-dir", type=Path, default=default_acdc_dir())
    parser.add_argument("--seed", type=int, default=0)
    # run_simulation plots per-round validation Dice; without a validation split the plot is
    # empty and matplotlib warns once per run.
    warnings.filterwarnings("ignore", message="No artists with labels found")
    return parser.parse_args(argv)


def command_line(name: str, argv: Sequence[str] | None = None) -> str:
    """The exact command that produced a report."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", f"benchmarks.{name}", *args])


def fresh_dir(path: Path) -> Path:
    """Empty ``path`` (created)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


@dataclass(frozen=True)
class AcdcSites:
    """The five hospital manifests and their test-set sizes.

    Args:
        manifests: ``dataset.json`` paths in ``HOSPITALS`` order.
        test_frames: test frames per hospital (two per patient: ED and ES).
        train_frames: training frames per hospital.
    """

    manifests: list[Path]
    test_frames: dict[str, int]
    train_frames: dict[str, int]

    def by_name(self) -> dict[str, Path]:
        return dict(zip(HOSPITALS, self.manifests, strict=True))


def acdc_sites(
    acdc_dir: Path,
    out: Path,
    *,
    seed: int = 0,
    val_frac: float = VAL_FRAC,
    test_frac: float = TEST_FRAC,
    scheme: str = "seeded",
) -> AcdcSites:
    """Write the five ACDC hospital manifests under ``out`` (split by patient).

    ``--quick`` runs pass a small ``test_frac`` (one test patient) to keep evaluation short.
    ``scheme="reference"`` takes the reference script's patients instead of the seeded fractions
    (see ``reference_assignment``), so that fedseg and the script are scored on the same
    test patients.

    Raises:
        SystemExit: the ACDC folder is missing (with where it was looked for).
    """
    from data_specs.sources.acdc import acdc_manifests, write_manifests

    if not (acdc_dir / "frames.csv").is_file():
        raise SystemExit(
            f"ACDC not found at {acdc_dir} (expected frames.csv); pass --acdc-dir or set "
            "FEDSEG_ACDC_DIR"
        )
    if scheme not in ("seeded", "reference"):
        raise ValueError(f"expected split scheme 'seeded' or 'reference', found {scheme!r}")
    assignment = reference_assignment(acdc_dir) if scheme == "reference" else None
    manifests = acdc_manifests(
        acdc_dir, val_frac=val_frac, test_frac=test_frac, seed=seed, assignment=assignment
    )
    groups = [m.site_id.removeprefix("acdc_").upper() for m in manifests]
    if tuple(groups) != HOSPITALS:
        raise SystemExit(f"expected ACDC groups {HOSPITALS}, found {groups}")
    paths = write_manifests(manifests, out)
    return AcdcSites(
        manifests=paths,
        test_frames={g: len(m.test or []) for g, m in zip(HOSPITALS, manifests, strict=True)},
        train_frames={g: len(m.training) for g, m in zip(HOSPITALS, manifests, strict=True)},
    )


def reference_assignment(acdc_dir: Path) -> dict[str, SplitName]:
    """The reference script's patient split (``../shared/reference/acdc_reference.py``).

    Its rule, restated: one ``numpy.random.default_rng(0)`` drawn in group order; in each group
    the sorted patients are permuted, the first 14 train, the next 2 validate, the next 4 test.
    """
    import numpy as np

    from data_specs.sources.acdc import read_frames

    patients: dict[str, set[str]] = {}
    for _, patient, group in read_frames(acdc_dir):
        patients.setdefault(group, set()).add(patient)
    rng = np.random.default_rng(0)
    out: dict[str, SplitName] = {}
    for group in HOSPITALS:
        ordered = sorted(patients.get(group, ()))
        permuted = [ordered[i] for i in rng.permutation(len(ordered))]
        for i, patient in enumerate(permuted[:20]):
            out[patient] = (
                SplitName.TRAINING if i < 14 else SplitName.VALIDATION if i < 16 else SplitName.TEST
            )
    return out


def describe_test_sets(
    sites: AcdcSites, names: Iterable[str], evals: EvalSets | None = None
) -> str:
    """One line giving the test set of each hospital (patients, frames and slices)."""
    parts = []
    for g in names:
        n = sites.test_frames[g]
        slices = f", {evals.slices(g)} slices" if evals is not None else ""
        parts.append(f"{g} {n // 2} patients / {n} frames{slices}")
    return "Test set per hospital: " + "; ".join(parts) + "."


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """Mean of the finite values, None when there are none."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else None


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for prose; an em dash for None."""
    return "—" if value is None else f"{value:.{digits}f}"


def seconds_str(seconds: float) -> str:
    """``4.2 s``, ``83 s`` or ``4.2 min``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def final_global_file(result: Any) -> Path:
    """The last round's global model of a finished ``run_simulation``, in the aggregator's blob store.

    ``run_simulation`` with ``evaluate=False`` writes no ``global_final.safetensors``; the
    rounds API names the model each closed round produced (``model_sha256``) and the
    aggregator's content-addressed store (``<out>/aggregator/blobs``) holds it.
    """
    from aggregator.storage.blobs import BlobStore

    closed = [r for r in result.rounds if r["status"] == "closed" and r["model_sha256"]]
    if not closed:
        raise RuntimeError(f"experiment {result.experiment_id}: no closed round")
    last = max(closed, key=lambda r: (r["number"], r["attempt"]))
    return BlobStore(Path(result.out_dir) / "aggregator" / "blobs").require(last["model_sha256"])


def round_models(result: Any) -> dict[int, Path]:
    """Each round's global model file (blob store paths), by round number."""
    from aggregator.storage.blobs import BlobStore

    store = BlobStore(Path(result.out_dir) / "aggregator" / "blobs")
    return {
        r["number"]: store.require(r["model_sha256"])
        for r in result.rounds
        if r["status"] == "closed" and r["model_sha256"]
    }


class EvalSets:
    """Each hospital's test split as whole slices, loaded once and reused for every model.

    What ``fedseg site evaluate`` (``run_evaluate``) scores: whole slices (216–256 × 256 on
    ACDC) by sliding window over 128×128 patches, with the agent's ``evaluate_segmentation``
    (MONAI Dice of RV, MYO, LV; a class absent from a slice is ignored there). The scans are
    read once here instead of once per model and site.

    Args:
        manifests: hospital name -> manifest path.
        spec: the task spec.
    """

    def __init__(self, manifests: Mapping[str, Path], spec: TaskSpec) -> None:
        from data_specs.imaging.datasets import build_dataset
        from data_specs.manifests.manifest import load_manifest

        self.spec = spec
        self.data = {
            name: build_dataset(load_manifest(p), spec, "test", train=False, seed=0, fit="none")
            for name, p in manifests.items()
        }

    def slices(self, name: str) -> int:
        return len(self.data[name])  # type: ignore[arg-type]

    def dice(self, model: Any, name: str) -> float | None:
        """Mean foreground Dice of ``model`` on hospital ``name``'s test slices."""
        from site_agent.training.evaluation import evaluate_segmentation

        value = evaluate_segmentation(model, self.data[name], self.spec).mean_dice
        return value if math.isfinite(value) else None


def site_model(site_work: Path, kind: str, experiment_id: str, weights: Path | None = None) -> Any:
    """A site's model through the agent's own loader (``site_agent.clinic.models.load_model``).

    Args:
        site_work: the site's work dir (its records give the task spec).
        kind: ``global`` or ``personal``.
        experiment_id: the experiment.
        weights: a global-model file (e.g. ``final_global_file``). Default None.
    """
    from site_agent.clinic.models import load_model
    from site_agent.federation.workdir import WorkDir

    model, _ = load_model(WorkDir(site_work), kind, experiment_id=experiment_id, weights=weights)  # type: ignore[arg-type]
    return model


def simulation_dice(
    result: Any, names: Sequence[str], tests: EvalSets, *, personal: bool
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Final global (and personal) test Dice of each site of a ``run_simulation`` result.

    Site ``i`` of the simulation is hospital ``names[i]``; the global model is the last
    round's, read from the aggregator's store.
    """
    out = Path(result.out_dir)
    final = final_global_file(result)
    g: dict[str, float | None] = {}
    p: dict[str, float | None] = {}
    for i, name in enumerate(names):
        work = out / "sites" / f"site_{i}"
        g[name] = tests.dice(site_model(work, "global", result.experiment_id, final), name)
        if personal:
            p[name] = tests.dice(site_model(work, "personal", result.experiment_id), name)
    return g, p


class InProcessFederation:
    """The aggregator app in this process plus real site agents over its in-memory transport.

    Use as a context manager; ``add_site`` enrolls agents, ``run`` drives an experiment to its
    end (sites train one after another, as in ``run_simulation``).

    Args:
        out: scratch folder (recreated): ``aggregator/`` and ``sites/<name>/``.
        device: where the site agents train (``cpu`` or ``cuda``). Default ``cpu``.
    """

    def __init__(self, out: Path, device: str = "cpu") -> None:
        self.out = fresh_dir(out)
        self.device = device
        self._tc: Any = None
        self.researcher: Any = None
        self.agents: dict[str, Any] = {}
        self.site_ids: dict[str, str] = {}

    def __enter__(self) -> InProcessFederation:
        from fastapi.testclient import TestClient
        from pydantic import SecretStr

        from aggregator.api.app import create_app
        from aggregator.settings import AggregatorSettings
        from deploy.console.researcher_client import ResearcherClient

        admin = secrets.token_urlsafe(32)
        settings = AggregatorSettings(
            data_dir=self.out / "aggregator",
            admin_token=SecretStr(admin),
            orchestrator_interval_s=0.1,
            log_level="WARNING",
            max_long_poll_s=5.0,
        )
        self._tc = TestClient(create_app(settings)).__enter__()
        self.researcher = ResearcherClient(self._tc)
        self.researcher.create_researcher(admin, "benchmark")
        return self

    def __exit__(self, *exc: object) -> None:
        for agent in self.agents.values():
            agent.close()
        self._tc.__exit__(*exc)

    def add_site(self, name: str, manifest: Path, *, share_personal: bool = False) -> Any:
        """Register ``name``, build its ``SiteAgent`` and enroll it; returns the agent."""
        import httpx
        from pydantic import SecretStr

        from site_agent.federation.loop import SiteAgent
        from site_agent.settings import SiteSettings

        reg = self.researcher.register_site(name)
        settings = SiteSettings.load(
            aggregator_url="http://testserver",
            allow_insecure_http=True,
            manifest=manifest,
            work_dir=self.out / "sites" / name,
            device=self.device,
            poll_wait_s=1,
            share_personal=share_personal,
            enrollment_token=SecretStr(reg.enrollment_token),
            accept_experiments=["*"],  # benchmark hospitals consent to every experiment
        )
        http = httpx.Client(transport=self._tc._transport, base_url="http://testserver")
        agent = SiteAgent(settings, http=http)
        agent.prepare()
        self.agents[name] = agent
        self.site_ids[name] = reg.id
        return agent

    def run(self, body: Any, names: Sequence[str]) -> Any:
        """Create and start the experiment, give the named agents turns until it ends."""
        exp = self.researcher.create_experiment(body)
        self.researcher.start(exp.id)
        agents = [self.agents[n] for n in names]
        while True:
            worked = False
            for agent in agents:
                worked |= agent.step(wait_s=0) is not None
            exp = self.researcher.experiment(exp.id)
            if exp.status in ("completed", "failed", "aborted"):
                return exp
            if not worked:
                time.sleep(0.1)


class Stopwatch:
    """``with Stopwatch() as sw: ...``; then ``sw.seconds``."""

    def __enter__(self) -> Stopwatch:
        self._t = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t
