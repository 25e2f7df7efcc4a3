"""The synthetic cases of the outside benchmark: a strongly shifted hospital, and RGB photographs.

- ``shift``: three synthetic hospitals train; an outside hospital with a strong shift
  (``data_specs.sources.synth.strong_shift``: another intensity curve, contrast inversion, heavy blur,
  a coarse acquisition resolution) adapts.
- ``rgb``: 2D RGB photographs with binary masks (``fedseg data synth --rgb``): one institution
  trains, a second one (another colour cast, scanner and resolution) adapts, as in the report
  that opened issue 13.

Each seed draws new data, a new federation and new adaptations. The outside hospital adapts
from a manifest that holds only an ``adaptation`` list of images (what the guides tell an
outside site to write), through ``fedseg site adapt``'s own code; Dice is computed afterwards on
all of its cases with their labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from benchmarks.outside_methods import MethodScores, score_methods

Case = Literal["shift", "rgb"]


@dataclass(frozen=True)
class SynthSetting:
    """Data, federation and adaptation budget of a synthetic case."""

    sites: int
    cases: int
    size: int
    classes: int
    rounds: int
    max_steps: int
    adapt_steps: int = 60
    adapt_lr: float = 3e-3
    batch_size: int = 8
    lr: float = 3e-3


SETTINGS: dict[Case, SynthSetting] = {
    "shift": SynthSetting(sites=3, cases=24, size=48, classes=3, rounds=8, max_steps=30),
    "rgb": SynthSetting(sites=1, cases=30, size=48, classes=1, rounds=8, max_steps=30),
}
QUICK: dict[Case, SynthSetting] = {
    "shift": SynthSetting(
        sites=2, cases=6, size=32, classes=2, rounds=1, max_steps=2, adapt_steps=4
    ),
    "rgb": SynthSetting(sites=1, cases=6, size=32, classes=1, rounds=1, max_steps=2, adapt_steps=4),
}


def case_spec(case: Case, setting: SynthSetting) -> Any:
    from data_specs.constants import NormKind
    from data_specs.task_spec import TaskSpec

    return TaskSpec(
        spatial_dims=2,
        in_channels=3 if case == "rgb" else 1,
        out_channels=setting.classes + 1,
        channels=(8, 16, 32),
        strides=(2, 2),
        num_res_units=1,
        norm=NormKind.BATCH,
        patch_size=(setting.size, setting.size),
    )


def _outside_manifests(path: Path, work: Path) -> tuple[Path, Path]:
    """(every case labelled under test, for Dice; an adaptation-only manifest, images only)."""
    from data_specs.manifests.manifest import CaseEntry, load_manifest, save_manifest

    m = load_manifest(path)
    cases = [c for s in m.declared_splits() for c in m.iter_cases(s)]
    labelled = m.model_copy(update={"training": [], "validation": None, "test": cases})
    images = [CaseEntry(image=c.image) for c in cases]
    unlabelled = m.model_copy(
        update={"training": [], "validation": None, "test": None, "adaptation": images}
    )
    out = []
    for name, manifest in (("labelled", labelled), ("unlabelled", unlabelled)):
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        manifest.data_root = str(path.parent.resolve())
        save_manifest(manifest, folder / "dataset.json")
        out.append(folder / "dataset.json")
    return out[0], out[1]


def run_case(case: Case, setting: SynthSetting, seed: int, work: Path) -> MethodScores:
    """One seed of a synthetic case: data, federation, outside adaptation, every method."""
    import torch

    from benchmarks.acdc_common import EvalSets, InProcessFederation, Stopwatch
    from data_specs.constants import OptimizerName, PersonalizationMethod
    from data_specs.researcher.experiments import ExperimentCreate
    from data_specs.sources.synth import synthesize
    from data_specs.weights.routing_bundle import read_class_prior
    from data_specs.wire import PersonalizationConfig, TrainConfig
    from personalization.outside import decode_routing_bundle
    from site_agent.clinic.adapt import adapt_experiment, adaptation_manifest, unlabelled_scans

    spec = case_spec(case, setting)
    paths = synthesize(
        work / "data",
        sites=setting.sites,
        cases=setting.cases,
        dims=2,
        seed=seed,
        size=setting.size,
        classes=setting.classes,
        outside=1,
        overwrite=True,
        rgb=case == "rgb",
        outside_shift=case == "shift",
    )
    inside = {f"site_{i + 1}": p for i, p in enumerate(paths[: setting.sites])}
    labelled, unlabelled = _outside_manifests(paths[-1], work / "outside")
    with InProcessFederation(work / "fed") as fed:
        for name, path in inside.items():
            fed.add_site(name, path, share_personal=True)
        body = ExperimentCreate(
            name=f"outside-{case}-seed{seed}",
            spec=spec,
            rounds=setting.rounds,
            fraction=1.0,
            min_sites=len(inside),
            sites=[fed.site_ids[n] for n in inside],
            train=TrainConfig(
                local_epochs=1,
                batch_size=setting.batch_size,
                lr=setting.lr,
                optimizer=OptimizerName.ADAM,
                max_steps=setting.max_steps,
                personalization=PersonalizationConfig(
                    method=PersonalizationMethod.IOPFL, alpha=0.1
                ),
            ),
            round_deadline_s=24 * 3600,
            seed=seed,
        )
        with Stopwatch() as fed_sw:
            exp = fed.run(body, list(inside))
        if exp.status != "completed":
            raise SystemExit(f"{case} federation (seed {seed}) ended {exp.status}")
        agent = fed.add_site("outside", unlabelled)  # validates the adaptation-only manifest
        fed.researcher.grant(exp.id, fed.site_ids["outside"])
        with Stopwatch() as cmd_sw:
            _, result = adapt_experiment(
                agent.client,
                agent.workdir,
                exp.id,
                unlabelled,
                steps=setting.adapt_steps,
                lr=setting.adapt_lr,
                seed=seed,
            )
        data = agent.client.routing_bundle(exp.id)
    bundle = decode_routing_bundle(data)
    experts = [{k: torch.from_numpy(v.copy()) for k, v in e.items()} for e in bundle.experts]
    scans = unlabelled_scans(adaptation_manifest(unlabelled), bundle.spec, seed=seed)
    evals = EvalSets({"outside": labelled}, spec)
    scores = score_methods(
        f"{case} seed {seed}",
        bundle.spec,
        experts,
        [s.name for s in bundle.sources],
        scans,
        lambda model: evals.dice(model, "outside"),
        steps=setting.adapt_steps,
        lr=setting.adapt_lr,
        seed=seed,
        class_prior=read_class_prior(data),
        softmax_result=result,
    )
    scores.extra.update(
        federation_seconds=round(fed_sw.seconds, 1),
        adapt_command_seconds=round(cmd_sw.seconds, 1),
        test_cases=evals.slices("outside"),
    )
    return scores
