"""The guides match the code: every researcher route has a curl example, every setting a line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from aggregator.api.app import create_app
from aggregator.settings import AggregatorSettings
from site_agent.cli import app as site_app
from site_agent.settings import SiteSettings

pytestmark = pytest.mark.slow  # real training, processes or servers: `make test` only

DOCS = Path(__file__).resolve().parents[2] / "docs"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Routes only site agents call, and FastAPI's own pages: documented as a table, not with curl.
SITE_ONLY = {
    ("POST", "/api/v1/sites/enroll"),
    ("GET", "/api/v1/tasks/next"),
    ("GET", "/api/v1/tasks/{task_id}/model"),
    ("PUT", "/api/v1/tasks/{task_id}/update"),
    ("POST", "/api/v1/tasks/{task_id}/failure"),
    ("PUT", "/api/v1/tasks/{task_id}/personal"),
    ("GET", "/api/v1/experiments/{experiment_id}/routing-bundle"),
    ("PUT", "/api/v1/sites/me/fingerprint"),
    ("GET", "/api/v1/tasks/{task_id}/secagg/keys"),
    ("GET", "/api/v1/tasks/{task_id}/secagg/inbox"),
    ("GET", "/api/v1/tasks/{task_id}/secagg/unmask"),
    ("POST", "/api/v1/tasks/{task_id}/secagg/keys"),
    ("POST", "/api/v1/tasks/{task_id}/secagg/shares"),
    ("POST", "/api/v1/tasks/{task_id}/secagg/unmask"),
    ("PUT", "/api/v1/tasks/{task_id}/secagg/masked"),
    ("GET", "/api/v1/invitations"),
    ("POST", "/api/v1/invitations/{experiment_id}/approve"),
    ("POST", "/api/v1/invitations/{experiment_id}/decline"),
    ("PUT", "/api/v1/sites/me/consent-policy"),
}


def app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route in the aggregator's OpenAPI schema."""
    settings = AggregatorSettings(data_dir=tmp_path, dev=True, orchestrator_enabled=False)
    paths = create_app(settings).openapi()["paths"]
    return {(method.upper(), path) for path, ops in paths.items() for method in ops}


def curl_calls(markdown: str) -> set[tuple[str, str]]:
    """(method, path) of every curl command that calls ``$FEDSEG``, continuation lines joined."""
    text = markdown.replace("\\\n", " ")
    calls = set()
    for line in text.splitlines():
        if "curl" not in line or "$FEDSEG/" not in line:
            continue
        path = re.search(r"\$FEDSEG(/[^\"'\s?]*)", line).group(1)  # type: ignore[union-attr]
        explicit = re.search(r"-X\s+([A-Z]+)", line)
        posts = re.search(r"\s(-d|--data)\s", line)
        method = explicit.group(1) if explicit else "POST" if posts else "GET"
        calls.add((method, path))
    return calls


def _matches(template: str, path: str) -> bool:
    pattern = re.sub(r"\\\{[a-z_]+\\\}", r"[^/]+", re.escape(template))
    return re.fullmatch(pattern, path) is not None


def test_every_researcher_and_admin_route_has_a_curl_example(tmp_path: Path) -> None:
    routes = app_routes(tmp_path)
    assert routes >= SITE_ONLY, f"site routes changed: {SITE_ONLY - routes}"
    calls = curl_calls((DOCS / "researcher.md").read_text())
    missing = {
        r for r in routes - SITE_ONLY if not any(m == r[0] and _matches(r[1], p) for m, p in calls)
    }
    assert not missing, f"routes without a curl example in docs/researcher.md: {sorted(missing)}"
    unknown = {c for c in calls if not any(m == c[0] and _matches(t, c[1]) for m, t in routes)}
    assert not unknown, f"curl examples of routes the aggregator does not have: {sorted(unknown)}"


def test_site_routes_are_listed_for_reference() -> None:
    text = (DOCS / "researcher.md").read_text()
    for method, path in SITE_ONLY:
        shown = re.sub(r"\{[a-z_]+\}", "{id}", path)
        assert f"`{method} {shown}" in text, f"{method} {shown}"


@pytest.mark.parametrize("guide", ["hospital-it.md"])
def test_every_site_setting_is_documented(guide: str) -> None:
    text = (DOCS / guide).read_text()
    missing = [f for f in SiteSettings.model_fields if f"FEDSEG_SITE_{f.upper()}" not in text]
    assert not missing, f"{guide} does not document {missing}"


def test_env_example_mentions_every_service_setting() -> None:
    text = (DEPLOY / ".env.example").read_text()
    names = [f"FEDSEG_AGG_{f.upper()}" for f in AggregatorSettings.model_fields]
    names += [f"FEDSEG_SITE_{f.upper()}" for f in SiteSettings.model_fields]
    assert [n for n in names if n not in text] == []


def test_clinician_guide_covers_every_infer_option() -> None:
    infer = typer.main.get_command(site_app).commands["infer"]  # type: ignore[attr-defined]
    text = (DOCS / "clinician.md").read_text()
    for param in infer.params:
        if param.opts[0].startswith("-"):
            assert any(f"`{o}`" in text for o in param.opts), f"clinician.md lacks {param.opts}"
    for kind in ("global", "personal", "routed"):
        assert f"**`{kind}`**" in text
    assert "DICOM" in text and "--png" in text


def _heredoc(markdown: str, opener: str, end: str) -> str:
    start = markdown.index(opener) + len(opener)
    return markdown[start : markdown.index(f"\n{end}\n", start)]


def test_researcher_examples_are_valid(tmp_path: Path) -> None:
    from data_specs.researcher.experiments import ExperimentCreate
    from data_specs.task_spec import expected_tensors
    from data_specs.weights.bundle import decode_bundle

    text = (DOCS / "researcher.md").read_text()
    body = _heredoc(text, "cat > experiment.json <<'JSON'\n", "JSON")
    experiment = ExperimentCreate.model_validate_json(body)
    (tmp_path / "experiment.json").write_text(body)
    snippet = _heredoc(text, "python - <<'PY'\n", "PY")
    proc = subprocess.run(
        [sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    bundle = decode_bundle((tmp_path / "initial.safetensors").read_bytes())
    assert bundle.meta.spec_hash == experiment.spec.spec_hash() and bundle.meta.round == 0
    assert {k: (v.shape, str(v.dtype)) for k, v in bundle.tensors.items()} == expected_tensors(
        experiment.spec
    )
