"""API tokens: with a tokens file, predict, invocations and explain need a bearer token for the model's team (401
without or with an unknown one, 403 for another team's model; refused requests never reach the prediction log);
/health and /ready stay open, /metrics takes its own token; `serve` warns when it binds beyond loopback without
tokens. Real uvicorn on a loopback port, real HTTP, a real MLflow registry (SQLite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mlplatform.lib.api_tokens import (
    TokenFileError,
    bearer_token,
    exposure_warning,
    load_tokens,
    may_score,
    team_of,
    token_digest,
)
from mlplatform.lib.prediction_log import read_prediction_log
from mlplatform.lib.tracking import CHAMPION, Tracker
from mlplatform.lib.training import build_pipeline, split_xy
from mlplatform.serving.app import ServingConfig, create_app
from mlplatform.serving.replay import send
from mlplatform.specs import load_specs
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.test_serving import LiveServer, free_port, wait_until

FRAUD_TOKEN = "fraud-team-token-0123456789"
ADS_TOKEN = "ads-team-token-abcdefghijklmnop"
ADMIN_TOKEN = "platform-admin-token-zyxwvutsrq"
METRICS_TOKEN = "prometheus-scraper-token-42424242"
RECORD = {"id": 1, "x1": 1.0, "x2": 0.5, "color": "red"}


@dataclass
class Teams:
    home: Path
    specs_dir: Path
    tokens_file: Path


@pytest.fixture(scope="module")
def teams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Teams]:
    """Two models of two teams (``fraud_model`` owned by team:fraud, ``ads_model`` by ads), one champion each."""
    root = tmp_path_factory.mktemp("tokens")
    home, specs_dir = root / "home", root / "specs"
    specs_dir.mkdir()
    for name, owner in (("fraud_model", "team:fraud"), ("ads_model", "ads")):
        (specs_dir / f"{name}.yaml").write_text(textwrap.dedent(TOY_SPEC).replace("name: toy", f"name: {name}")
                                                + f"owner: '{owner}'\n")
    rows = toy_rows()
    rows.to_csv(specs_dir / "toy.csv", index=False)
    tracker = Tracker.under(home / "mlflow")
    for spec in load_specs(specs_dir):
        x, y = split_xy(rows, spec)
        tracker.log_trained_model(spec.name, f"{spec.name}-1", build_pipeline(spec).fit(x, y), x.head(5), {}, {}, {},
                                  {}, {"gates": "passed"})
        tracker.set_alias(spec.name, CHAMPION, "1")
    tokens_file = root / "secrets" / "tokens.yaml"
    tokens_file.parent.mkdir()
    tokens_file.write_text(textwrap.dedent(f"""
        tokens:
          "{token_digest(FRAUD_TOKEN)}": [fraud]
          "{token_digest(ADS_TOKEN)}": ads
          "{ADMIN_TOKEN}": "*"
        metrics:
          - "{token_digest(METRICS_TOKEN)}"
    """))
    yield Teams(home, specs_dir, tokens_file)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_tokens_file_grants_teams_by_digest_or_plain_token_and_names_what_is_wrong(tmp_path):
    file = tmp_path / "tokens.json"  # JSON is YAML too
    file.write_text(f'{{"tokens": {{"{token_digest(FRAUD_TOKEN)}": ["fraud", "risk"], "{ADMIN_TOKEN}": "*"}}}}')
    tokens = load_tokens(file)
    assert tokens.teams_for(FRAUD_TOKEN) == {"fraud", "risk"} and tokens.teams_for(ADMIN_TOKEN) == {"*"}
    assert tokens.teams_for(FRAUD_TOKEN + "x") is None and tokens.teams_for("") is None
    assert tokens.teams_for(token_digest(FRAUD_TOKEN)) is None  # the digest itself is no token
    assert not tokens.metrics_protected and tokens.may_read_metrics(None)
    assert may_score(frozenset({"fraud"}), "fraud") and not may_score(frozenset({"fraud"}), "ads")
    assert may_score(frozenset({"*"}), None) and not may_score(frozenset({"fraud"}), None)
    assert bearer_token("bearer  abc ") == "abc" and bearer_token("Basic abc") is None and bearer_token(None) is None

    for text, key, words in (
            ("tokens: {short: fraud}\n", "tokens.short...", "too short to be a secret"),
            ("tokens: {'sha256:abc': fraud}\n", "tokens.sha256:abc...", "not a SHA-256 digest"),
            (f"tokens: {{'{ADMIN_TOKEN}': []}}\n", "tokens.", "expected a team, a list of teams"),
            ("tokens: {}\n", "tokens", "non-empty mapping"),
            ("token: {}\n", "(top level)", "expected a mapping with `tokens`"),
            (f"tokens: {{'{ADMIN_TOKEN}': '*'}}\nmetrics: tok\n", "metrics", "expected a list")):
        file.write_text(text)
        with pytest.raises(TokenFileError) as raised:
            load_tokens(file)
        assert raised.value.key.startswith(key) and words in raised.value.message, (text, raised.value)


def test_the_team_is_the_specs_team_or_its_owner():
    @dataclass
    class Spec:
        owner: str | None = None
        team: str | None = None

    assert team_of(Spec("team:fraud")) == "fraud" and team_of(Spec("ads")) == "ads"
    assert team_of(Spec("ana@example.com", team="fraud")) == "fraud" and team_of(Spec()) is None


def test_serve_warns_only_when_it_binds_beyond_loopback_without_tokens(teams):
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("localhost", None) is None
    assert exposure_warning("::1", None) is None
    assert exposure_warning("0.0.0.0", load_tokens(teams.tokens_file)) is None
    for host in ("0.0.0.0", "10.1.2.3", "::", "api.internal"):
        assert "without API tokens" in exposure_warning(host, None)


@pytest.mark.slow
def test_mlplatform_serve_on_all_interfaces_without_tokens_warns_on_stderr_and_in_its_log(teams):
    port = free_port()
    env = {**os.environ, "MLPLATFORM_HOME": str(teams.home), "MLPLATFORM_SPECS": str(teams.specs_dir)}
    env.pop("MLPLATFORM_API_TOKENS_FILE", None)
    process = subprocess.Popen([sys.executable, "-m", "mlplatform.cli", "serve", "--host", "0.0.0.0", "--port",
                                str(port), "--no-log", "--log-level", "warning"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "service did not become ready"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    warned = [line for line in err.splitlines() if "serving on 0.0.0.0, beyond this machine, without API tokens" in line]
    assert len(warned) == 2, err  # said plainly, and by the service's logger
    assert warned[0].startswith("warning: ") and "WARNING mlplatform.serving:" in warned[1]
    assert "MLPLATFORM_API_TOKENS_FILE" in warned[0]


def test_a_teams_token_scores_its_models_only_and_refused_requests_reach_no_log(teams):
    specs = load_specs(teams.specs_dir)
    config = ServingConfig(home=teams.home, specs=specs, tracker=Tracker.under(teams.home / "mlflow"),
                           poll_seconds=0.05, flush_seconds=0.1, api_tokens=load_tokens(teams.tokens_file))
    with LiveServer(config) as server:  # it waited for an open /ready
        http = server.client
        assert http.get("/health").status_code == 200 and http.get("/ready").json()["ready"]
        payloads = {"predict": {"records": [RECORD]}, "invocations": {"dataframe_records": [RECORD]},
                    "explain": {"records": [RECORD]}}
        for route, payload in payloads.items():
            url = f"/v1/models/ads_model/{route}"
            missing = http.post(url, json=payload, headers={"X-Request-ID": f"refused-none-{route}"})
            assert missing.status_code == 401, missing.text
            assert missing.headers["www-authenticate"] == 'Bearer realm="mlplatform"'
            assert "needs a bearer token" in missing.json()["error"]
            unknown = http.post(url, json=payload, headers={**bearer("not-a-known-token-at-all"),
                                                            "X-Request-ID": f"refused-unknown-{route}"})
            assert unknown.status_code == 401 and 'error="invalid_token"' in unknown.headers["www-authenticate"]
            other_team = http.post(url, json=payload, headers={**bearer(FRAUD_TOKEN),
                                                               "X-Request-ID": f"refused-team-{route}"})
            assert other_team.status_code == 403, other_team.text
            assert other_team.json() == {"error": "this token may not score 'ads_model': the model belongs to team "
                                         "'ads', and the token is for fraud", "model": "ads_model", "team": "ads"}
        # before the model is looked up: an unknown client learns no model names
        assert http.post("/v1/models/nope/predict", json=payloads["predict"]).status_code == 401
        assert http.post("/v1/models/nope/predict", json=payloads["predict"],
                         headers=bearer(FRAUD_TOKEN)).status_code == 404

        own = http.post("/v1/models/fraud_model/predict", json=payloads["predict"], headers=bearer(FRAUD_TOKEN))
        assert own.status_code == 200, own.text
        assert http.post("/v1/models/ads_model/invocations", json=payloads["invocations"],
                         headers=bearer(ADS_TOKEN)).status_code == 200
        admin = http.post("/v1/models/ads_model/predict", json=payloads["predict"],
                          headers={**bearer(ADMIN_TOKEN), "X-Request-ID": "admin-1"})
        assert admin.status_code == 200 and admin.json()["predictions"][0]["version"] == "1"

        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers=bearer(ADMIN_TOKEN)).status_code == 401  # scoring tokens are not enough
        scraped = http.get("/metrics", headers=bearer(METRICS_TOKEN))
        assert scraped.status_code == 200
        assert 'mlplatform_requests_total{model="ads_model",route="predict",status="403"} 1.0' in scraped.text
        assert http.get("/v1/models").status_code == 200  # the catalogue (names, schemas) stays readable
        # the platform's own client sends MLPLATFORM_API_TOKEN (or its token argument) as the bearer token
        assert send([RECORD], server.url, "fraud_model").failed_requests == 1
        assert send([RECORD], server.url, "fraud_model", token=FRAUD_TOKEN).answered == 1
    logged = read_prediction_log(teams.home, "ads_model")
    assert "admin-1" in set(logged["request_id"])
    assert not any(str(r).startswith("refused-") for r in logged["request_id"])
    assert len(logged) == 2  # the ads token's invocations record and the admin's predict record


def test_the_fastapi_routes_behind_the_front_check_the_same_tokens(teams):
    """The application mounted without its ASGI front (its FastAPI routes answer scoring then): no bypass."""
    import uvicorn

    specs = load_specs(teams.specs_dir)
    config = ServingConfig(home=teams.home, specs=specs, tracker=Tracker.under(teams.home / "mlflow"),
                           poll_seconds=0.05, flush_seconds=0.1, log_predictions=False,
                           api_tokens=load_tokens(teams.tokens_file))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config).app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            wait_until(lambda: server.started and http.get("/ready").status_code == 200)
            for route, payload in (("predict", {"records": [RECORD]}), ("invocations", {"dataframe_records": [RECORD]}),
                                   ("explain", {"records": [RECORD]})):
                url = f"/v1/models/ads_model/{route}"
                assert http.post(url, json=payload).status_code == 401
                assert http.post(url, json=payload, headers=bearer(FRAUD_TOKEN)).status_code == 403
            assert http.post("/v1/models/ads_model/predict", json={"records": [RECORD]},
                             headers=bearer(ADS_TOKEN)).status_code == 200
            assert http.get("/metrics").status_code == 401
    finally:
        server.should_exit = True
        thread.join(timeout=60)
