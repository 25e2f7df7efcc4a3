"""Client-level DP with real site agents against a real aggregator: the batch-norm statistics
stay at the site, the upload is the clipped difference with adaptive clipping's bit, and the
clip norm moves between rounds."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest

from data_specs.constants import HEADER_METRICS
from data_specs.weights.bundle import decode_bundle
from data_specs.weights.unet_layout import statistic_keys_of
from site_agent.federation.loop import SiteAgent
from site_agent.federation.retry import Backoff
from site_agent.federation.task_runner import TaskOutcome
from site_agent.federation.uploads.dp_statistics import load_statistics
from site_agent.federation.workdir import WorkDir
from tests.site_agent.conftest import TINY, write_site
from tests.site_agent.federation import live_aggregator
from tests.site_agent.test_federation_e2e import TRAIN, Recorder, agent_settings, run_agents

pytestmark = pytest.mark.slow

C = 0.05  # far below a round of Adam at lr 0.01: every update is clipped, every bit is 0
DP = {
    "clip_norm": C,
    "noise_multiplier": 1.0,
    "adaptive": {"target_quantile": 0.5, "learning_rate": 0.2, "bit_share": 0.5},
}


def test_dp_site_keeps_statistics_clips_and_reports_its_bit(tmp_path) -> None:
    stats = set(statistic_keys_of(TINY))
    assert stats
    with live_aggregator(tmp_path / "agg") as agg:
        root = tmp_path / "hospital"
        write_site(root / "data", n_train=4, n_val=1, n_test=1)
        site_id, token = agg.add_site("hospital")
        recorder = Recorder()
        http = httpx.Client(base_url=agg.url, event_hooks={"request": [recorder]}, timeout=30)
        agent = SiteAgent(
            agent_settings(root, agg.url, token), http=http, backoff=Backoff(0.05, 0.2, 5)
        )
        agent.prepare()
        train = {**TRAIN, "personalization": {"method": "none"}}
        experiment_id = agg.create_experiment(
            TINY, rounds=2, sites=[site_id], train=train, privacy={"dp": DP}
        )
        results = run_agents([agent], max_tasks=2)
        assert [r.outcomes for r in results] == [[TaskOutcome.ACCEPTED] * 2], results
        agg.wait_for(experiment_id, "completed")
        rounds = agg.rounds(experiment_id)
        assert set(agg.experiment(experiment_id)["local_keys"]) == stats

    uploads = [(h, b) for m, p, h, b in recorder.requests if m == "PUT" and p.endswith("/update")]
    assert len(uploads) == 2
    norms = []
    for headers, body in uploads:
        tensors = decode_bundle(body).tensors
        for key in stats:  # the statistics never leave: zeros in their place
            assert not np.any(tensors[key]), key
        shared = (v.astype(np.float64) for k, v in tensors.items() if k not in stats)
        norms.append(math.sqrt(sum(float(np.sum(v**2)) for v in shared)))
        assert json.loads(headers[HEADER_METRICS.lower()])["dp_unclipped"] is False
    # round 1 clipped to C; round 2 to C·exp(−η(b̄ − γ)) from the noisy count of zero bits
    clips = [r["privacy"]["clip_norm"] for r in rounds]
    assert clips[0] == C and clips[1] != C
    assert norms == [pytest.approx(c, rel=1e-3) for c in clips]
    # the site kept its own statistics, estimated by its training (not the initial 0 / 1)
    own = load_statistics(WorkDir(root / "work"), experiment_id)
    assert own is not None and set(own) == stats
    var = next(k for k in stats if k.endswith("running_var"))
    assert not np.allclose(own[var], 1.0)
