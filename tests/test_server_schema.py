"""Schemathesis against a real server, from the app's generated OpenAPI
schema: no 5xx, and every response matches the schema (status code,
content type, body). Fuzzed job commands are replaced by ``["true"]``
before valid bodies are sent, and the server's PATH is empty, so even an
invalid body the server wrongly accepted would find no program to run."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import schemathesis
from schemathesis.checks import positive_data_acceptance
from hypothesis import HealthCheck, settings

from plugin_scheduling.jobs import JobScheduler
from plugin_scheduling.server import create_app

from server_proc import ADMIN, TOKENS, ServerProc

_schema = create_app(JobScheduler("fifo", journal=None), tokens=TOKENS, manage_scheduler=False).openapi()
# 413 (a body over the server's limit) is a rejection too.
_config = schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5XX"]}}}
)
schema = schemathesis.openapi.from_dict(_schema, config=_config).exclude(path="/api/v1/events")  # an endless stream; tested in test_server.py

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    tmp = tmp_path_factory.mktemp("schema")
    s = ServerProc(tmp, env_extra={"PATH": str(tmp / "empty-path")}, extra=["--cpu-cores", "2", "--simulated-gpus", "8192", "--quotas", f"sqlite:{tmp / 'quotas.db'}"]).start()
    yield s
    s.stop()


def _defuse(case: Any) -> None:
    body = case.body
    meta = getattr(case, "_meta", None)
    mode = getattr(getattr(getattr(meta, "generation", None), "mode", None), "value", "positive")
    if mode != "positive":
        return  # a body the server must refuse (422): defusing it could make it valid
    if case.method.upper() == "POST" and case.path == "/api/v1/jobs" and isinstance(body, dict):
        if isinstance(body.get("command"), list) and body["command"]:
            body["command"] = ["true"]
        body.pop("env", None)
        body.pop("cwd", None)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case: Any, live: ServerProc) -> None:
    _defuse(case)
    # positive_data_acceptance is left out: a schema-valid body may still name
    # a queue or project the server does not have (422, naming the field).
    case.call_and_validate(base_url=live.url, headers={"Authorization": f"Bearer {ADMIN}"}, excluded_checks=[positive_data_acceptance])
