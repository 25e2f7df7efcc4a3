"""The benchmark suite's outside and reference tables: configurations and reports (no training)."""

from __future__ import annotations

from typing import Any

from benchmarks.acdc_common import HOSPITALS
from benchmarks.outside_methods import METHODS
from benchmarks.suite.__main__ import configs_for
from benchmarks.suite.outside_report import outside_markdown, reference_lines
from benchmarks.suite.reference_runs import reference_config


def test_outside_table_has_one_config_per_held_out_hospital() -> None:
    configs = configs_for("outside", 12.0, None)
    assert [c.params["held_out"] for c in configs] == list(HOSPITALS)
    assert len({c.config_hash() for c in configs}) == len(HOSPITALS)
    assert {c.table for c in configs} == {"outside"}
    only = configs_for("outside", 12.0, ["loo_NOR"])
    assert [c.params["held_out"] for c in only] == ["NOR"]


def test_reference_config_hashes_the_script() -> None:
    a = reference_config("ref_fedavg", 40)
    b = reference_config("ref_fedavg", 41)
    assert a.train["sha256"] and a.config_hash() != b.config_hash()
    assert [c.method for c in configs_for("reference", 12.0, None)] == [
        "ref_fedavg",
        "ref_central",
        "fedseg_fedavg_iopfl",
        "fedseg_central",
    ]


def _fold(held_out: str, seed: int, dice: dict[str, float]) -> dict[str, Any]:
    return {
        "held_out": held_out,
        "seed": seed,
        "date": "2026-11-29 20:00 UTC",
        "config_hash": "abc",
        "config": {"rounds": 40, "params": {"alpha": 0.1, "adapt_steps": 60, "adapt_lr": 0.003}},
        "models": {m: {"dice": dice.get(m, 0.5)} for m in METHODS},
        "choice": "global",
        "choice_bn": "site",
        "message": "Falling back to the global model.",
        "federation_seconds": 600.0,
        "adapt_command_seconds": 30.0,
        "scans": 80,
    }


def test_outside_report_verdicts_follow_the_numbers() -> None:
    runs = [
        _fold("DCM", 0, {"global": 0.70, "safeguard": 0.68, "routed softmax": 0.75, "TENT": 0.72}),
        _fold("HCM", 0, {"global": 0.60, "safeguard": 0.66, "routed softmax": 0.66, "TENT": 0.60}),
    ]
    text = outside_markdown(runs)
    assert "(only 2 of 5 folds stored)" in text
    # worst safeguard - global = DCM's -2.0 points: the goal is missed
    assert "worst held-out hospital: **-2.0 points** (goal ≥ −1: **missed**)" in text
    # routed mean 0.705 vs TENT 0.66: met; routed - global mean = +5.5 points: met
    assert "routed ≥ TENT: **met**" in text
    assert "Routed − global, mean: +5.5 points" in text and "(goal ≥ +3: **met**)" in text


def test_outside_report_averages_seeds_per_fold() -> None:
    runs = [
        _fold("RV", 0, {"global": 0.40, "safeguard": 0.40}),
        _fold("RV", 1, {"global": 0.60, "safeguard": 0.60}),
    ]
    row = next(line for line in outside_markdown(runs).splitlines() if line.startswith("| RV |"))
    assert row.split(" | ")[1] == "0.500" and row.endswith("| 0,1 |")


def test_reference_rows_sit_beside_ours() -> None:
    ref = {
        "config": {"method": "ref_fedavg", "rounds": 40},
        "date": "2026-11-29 20:00 UTC",
        "images_per_s": 120.0,
        "models": {
            "global": dict.fromkeys(HOSPITALS, 0.8),
            "personal": dict.fromkeys(HOSPITALS, 0.7),
        },
    }
    ours = {
        "FedAvg (global)": {
            "per_hospital": dict.fromkeys(HOSPITALS, 0.75),
            "mean": 0.75,
            "rounds": 40,
        }
    }
    lines = reference_lines([ref], ours)
    assert (
        "| reference FedAvg (global) | 0.800 | 0.800 | 0.800 | 0.800 | 0.800 | 0.800 | 40 | 120.0 |"
        in lines
    )
    assert (
        "| fedseg FedAvg (global), suite split | 0.750 | 0.750 | 0.750 | 0.750 | 0.750 | 0.750 "
        "| 40 | |" in lines
    )
    assert any(line.startswith("| reference IOP-FL (personal) |") for line in lines)
    assert reference_lines([], ours) == []
    same = {
        "config": {"method": "fedseg_fedavg_iopfl", "rounds": 40},
        "date": "2026-11-29 21:00 UTC",
        "models": {
            "global": {h: {"dice": 0.81} for h in HOSPITALS},
            "personal": {h: {"dice": 0.82} for h in HOSPITALS},
        },
    }
    lines = reference_lines([ref, same], ours)
    assert (
        "| fedseg FedAvg (global), same patients | 0.810 | 0.810 | 0.810 | 0.810 | 0.810 | 0.810 "
        "| 40 | |" in lines
    )
    assert not any("suite split" in line and "FedAvg" in line for line in lines)
    assert any(
        line.startswith("| fedseg IOP-FL (personal), same patients | 0.820") for line in lines
    )


def test_fedseg_runs_on_the_reference_split_carry_the_recipe() -> None:
    cfg = reference_config("fedseg_fedavg_iopfl", 40)
    assert cfg.split == {"scheme": "reference"} and cfg.train["lr_schedule"]
    assert cfg.params == {"alpha": 0.1}


def test_outside_report_says_when_folds_were_rescored() -> None:
    plain = _fold("NOR", 0, {"global": 0.7})
    assert "scored again" not in outside_markdown([plain])
    again = {**plain, "rescored": {"commit": "0123456789abcdef", "date": "2026-11-29 21:00 UTC"}}
    assert "at commit 0123456789ab (2026-11-29 21:00 UTC)" in outside_markdown([again])


def test_why_lines_come_from_the_curves_and_the_reference() -> None:
    from benchmarks.suite.why import why_lines

    def run(points: list[tuple[int, float]]) -> dict[str, Any]:
        return {"curves": {"all": [{"round": r, "dice": d} for r, d in points]}}

    rows = {
        "FedAvg (global)": {"mean": 0.75, "rounds": 40},
        "centralised (pooled)": {"mean": 0.85, "rounds": 40},
    }
    latest = {
        "fedavg_iopfl": [run([(10, 0.3), (20, 0.6), (30, 0.70), (40, 0.75)])],
        "central": [run([(10, 0.7), (20, 0.8), (30, 0.84), (40, 0.85)])],
    }
    ref = {
        "config": {"method": "ref_fedavg", "rounds": 40},
        "date": "d",
        "models": {"global": {"A": 0.7, "B": 0.8}},
    }
    text = "\n".join(why_lines(rows, latest, [ref]))
    assert "gained only 15.0 points from round 20 to 40" in text
    assert "20.0 points behind centralised at round 20 and 10.0 at round 40" in text
    assert (
        "same 40 rounds: FedAvg 0.750 against fedseg's 0.750 (other test patients): within" in text
    )
    ref["models"]["global"] = {"A": 0.8, "B": 0.82}
    assert ": 6.0 points ahead. Run fedseg on the script's own patients" in "\n".join(
        why_lines(rows, latest, [ref])
    )
    same = {
        "config": {"method": "fedseg_fedavg_iopfl", "rounds": 40},
        "date": "e",
        "models": {"global": {"A": {"dice": 0.80}, "B": {"dice": 0.81}}},
    }
    text = "\n".join(why_lines(rows, latest, [ref, same]))
    assert "fedseg's recipe on exactly those patients 0.805 (-0.5 points)" in text
    assert (
        "moved it by -5.5 points" in text and "is within 2 points of the reference (-0.5)" in text
    )
    same["models"]["global"] = {"A": {"dice": 0.70}, "B": {"dice": 0.71}}
    assert "the recipe is 10.5 points behind" in "\n".join(why_lines(rows, latest, [ref, same]))
    ablation = [
        {
            "config": {"method": m, "rounds": 12},
            "models": {"global": {"A": {"dice": d}}},
            "curves": {"all": [{"round": 6, "dice": d - 0.03}, {"round": 12, "dice": d}]},
        }
        for m, d in (("recipe", 0.76), ("no_norm", 0.78))
    ]
    text = "\n".join(why_lines(rows, latest, [ref], ablation))
    assert (
        "recipe 0.760; points against it: no_norm +2.0; one run's Dice moves by up to 3.0" in text
    )
    assert "No single factor of the recipe moves Dice by more than that noise." in text
    assert (
        why_lines(
            {
                **rows,
                "FedAvg (global)": {"mean": 0.9, "rounds": 40},
                "centralised (pooled)": {"mean": 0.9, "rounds": 40},
            },
            latest,
            [],
        )
        == []
    )


def _ablation_run(method: str, epochs: int, dice: float, last_move: float) -> dict[str, Any]:
    return {
        "config": {"method": method, "rounds": epochs},
        "config_hash": f"{method}{epochs}",
        "date": "2026-11-29 22:00 UTC",
        "seed": 0,
        "images_per_second": 100.0,
        "models": {"global": {h: {"dice": dice} for h in HOSPITALS}},
        "curves": {"all": [{"round": 1, "dice": dice - last_move}, {"round": 2, "dice": dice}]},
    }


def test_ablation_compares_each_variant_with_the_recipe_at_its_own_epochs() -> None:
    from benchmarks.suite.report import ablation_markdown

    text = ablation_markdown(
        [
            _ablation_run("recipe", 12, 0.70, 0.01),
            _ablation_run("no_norm", 12, 0.75, 0.03),
            _ablation_run("recipe", 4, 0.30, 0.10),
            _ablation_run("no_norm", 4, 0.40, 0.02),
        ]
    )
    assert "| no_norm |" in text and "| 12 | 0 | 0.750 | +5.0 |" in text
    assert "| 4 | 0 | 0.400 | +10.0 |" in text
    assert "- 12 epochs: up to 3.0 points (no_norm)" in text
    assert "- 4 epochs: up to 10.0 points (recipe)" in text


def test_dp_methods_build_the_privacy_their_parameters_name() -> None:
    from benchmarks.suite.acdc_runs import INSIDE_METHODS, privacy_of
    from data_specs.privacy.accountant import epsilon

    rest, privacy = privacy_of(INSIDE_METHODS["fedavg_dp8"][1], 40)
    assert rest == {}
    dp = privacy.dp
    assert dp.epsilon_budget == 8.0 and dp.adaptive is not None
    assert dp.adaptive.target_quantile == 0.5 and dp.clip_norm == 1.0
    # the smallest noise that keeps all 40 rounds within ε = 8 (q = 1)
    assert epsilon(dp.noise_multiplier, 1.0, 40, 1e-5) <= 8.0
    assert epsilon(dp.noise_multiplier * 0.98, 1.0, 40, 1e-5) > 8.0
    _, clip_only = privacy_of(INSIDE_METHODS["fedavg_clip"][1], 40)
    assert clip_only.dp.noise_multiplier == 1e-3 and clip_only.dp.epsilon_budget is None
    assert privacy_of(INSIDE_METHODS["ditto"][1], 40) == ({"ditto_lambda": 0.1}, None)


def test_dp_rows_report_what_the_rounds_api_spent() -> None:
    from benchmarks.suite.report import privacy_lines

    run = {
        "seed": 0,
        "config": {"rounds": 40},
        "privacy": {
            "epsilon_total": 7.9995,
            "delta": 1e-5,
            "noise_multiplier": 4.0332,
            "clip_norm": 2.5,
        },
    }
    lines = privacy_lines({"fedavg_dp8": [run], "fedavg_iopfl": [{"seed": 0}]})
    assert lines[0] == "## Client-level differential privacy"
    assert len([x for x in lines if x.startswith("- ")]) == 1
    assert "ε = 8.00 (δ = 1e-05) after 40 rounds" in lines[2] and "C = 2.500" in lines[2]
    assert privacy_lines({"fedavg_iopfl": [{"seed": 0}]}) == []
