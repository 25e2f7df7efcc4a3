"""The outside-hospital walk-through of docs/hospital-it.md, run command by command.

The manifest and the ``fedseg`` lines are read from the guide itself (the blocks after the
``outside-manifest`` and ``outside-walkthrough`` markers); only the host names, folders, the
experiment id and the class names of this tiny task are substituted. If the guide changes a
command so that it no longer works, this test fails.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import nibabel as nib
import pytest
from typer.testing import CliRunner

from deploy.cli import app as fedseg
from tests.site_agent.conftest import TINY, write_site
from tests.site_agent.federation import live_aggregator
from tests.site_agent.test_federation_e2e import TRAIN, agent_settings

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "hospital-it.md"
runner = CliRunner()


def guide_block(marker: str) -> str:
    """The fenced block that follows ``<!-- marker -->`` in the guide."""
    text = GUIDE.read_text()
    found = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)```", text, re.S)
    assert found, f"docs/hospital-it.md lost its {marker} block"
    return found.group(1)


def guide_commands() -> list[str]:
    """The ``fedseg ...`` command lines of the walk-through, continuation lines joined."""
    joined = guide_block("outside-walkthrough").replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("fedseg ")]


def test_the_guide_walks_through_enrol_validate_adapt_and_infer() -> None:
    commands = [" ".join(c.split()[:3]) for c in guide_commands()]
    assert commands[:4] == [
        "fedseg site enroll",
        "fedseg data validate",
        "fedseg site adapt",
        "fedseg site infer",
    ]
    models = [c.split("--model ")[1].split()[0] for c in guide_commands() if "--model" in c]
    assert models == ["routed", "global", "expert:hospital-a"]
    assert "grants" in GUIDE.read_text().split("<!-- outside-walkthrough -->")[0][-4000:]


@pytest.mark.slow
def test_the_outside_walkthrough_runs_as_written(tmp_path: Path) -> None:
    from site_agent.federation.loop import SiteAgent

    with live_aggregator(tmp_path / "agg") as agg:
        # A federation of one hospital ("hospital-a") that shares its personal model.
        write_site(tmp_path / "hospital-a" / "data", n_train=4, n_val=1, n_test=0)
        inside_id, token = agg.add_site("hospital-a")
        settings = agent_settings(tmp_path / "hospital-a", agg.url, token, share_personal=True)
        with SiteAgent(settings) as agent:
            agent.prepare()  # enroll with the hospital's standing consent first
            exp_id = agg.create_experiment(TINY, rounds=1, sites=[inside_id], train=TRAIN)
            agent.run(once=True)
        agg.wait_for(exp_id, "completed")

        # The outside hospital's scans, named as in the guide's manifest.
        scans = tmp_path / "scans" / "outside"
        source = write_site(tmp_path / "src", n_train=3, n_val=0, n_test=0, seed=4).parent
        manifest = json.loads(guide_block("outside-manifest"))
        manifest["labels"] = {"0": "background", "1": "square"}  # the tiny task's classes
        for i, rel in enumerate(manifest["adaptation"]):
            (scans / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / "images" / f"case_tr_{i:03d}.nii.gz", scans / rel)
        (scans / "dataset.json").write_text(json.dumps(manifest))
        outside_id, enrollment = agg.add_site("hospital-z")

        work, results = tmp_path / "work", tmp_path / "results"
        results.mkdir()
        swaps = {
            "https://fedseg.example.org:8443": agg.url,
            "/var/lib/fedseg": str(work),
            "/scans/outside": str(scans),
            "/results": str(results),
            "EXP_ID": exp_id,
        }
        env = {"FEDSEG_SITE_ENROLLMENT_TOKEN": enrollment}
        for command in guide_commands():
            for old, new in swaps.items():
                command = command.replace(old, new)
            args = shlex.split(command)[1:]
            if "--aggregator-url" in args:
                args.append("--allow-insecure-http")  # the test aggregator speaks plain http
            if args[:2] == ["site", "adapt"]:
                # Step 3, the researcher's grant, happens here (researcher.md's curl call).
                agg.researcher.post(
                    f"/api/v1/experiments/{exp_id}/grants", json={"site_id": outside_id}
                ).raise_for_status()
            result = runner.invoke(fedseg, args, env=env)
            assert result.exit_code == 0, f"{command}\n{result.output}"
            if args[:2] == ["site", "adapt"]:
                assert "choice: " in result.output
        for name in ("scan_001_mask", "scan_001_global", "scan_001_a"):
            mask = nib.load(results / f"{name}.nii.gz")
            assert mask.shape == nib.load(scans / "images" / "scan_001.nii.gz").shape
        assert (work / "adapted" / f"{exp_id}.json").is_file()
