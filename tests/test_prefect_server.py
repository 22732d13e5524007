"""The Prefect server Relay locks answers its UI: what proves the FastAPI pin (docs/prefect.md).

Prefect's declared requirements once allowed a FastAPI that broke its server: FastAPI 0.151
rejected (422) the null filter fields that Prefect's UI and client send, so the UI's lists
stopped loading. These tests send the bodies the UI sends (prefect/server/ui's mappers keep
a missing filter as ``null``) to the real server started for the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import httpx
import prefect
import pytest
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.settings import PREFECT_API_URL

pytestmark = pytest.mark.usefixtures("prefect_server")

# The ArtifactsFilterRequest, FlowRunsFilterRequest, TaskRunsFilterRequest and
# FlowsFilterRequest mappers of Prefect's UI, with nothing chosen in the filter bar.
UI_ARTIFACTS = {"artifacts": None, "flow_runs": None, "task_runs": None}
UI_RUNS = {
    "flows": None,
    "flow_runs": None,
    "task_runs": None,
    "deployments": None,
    "work_pools": None,
    "work_pool_queues": None,
}
UI_FLOWS = {key: None for key in ("flows", "flow_runs", "task_runs", "deployments", "work_pools")}
PAGE = {"limit": 10, "offset": 0}


@pytest.fixture(scope="module")
def api() -> Iterator[httpx.Client]:
    with httpx.Client(base_url=PREFECT_API_URL.value(), timeout=30) as client:
        yield client


@task
def mark() -> str:
    return "marked"


@flow
def marked_flow(key: str) -> str:
    create_markdown_artifact(markdown="seen by the UI", key=key)
    return mark()


@pytest.fixture(scope="module")
def run_with_artifact() -> str:
    """A finished flow run with one task run and one artifact: something for lists to show."""
    key = f"ui-filter-{uuid4().hex[:8]}"
    assert marked_flow(key) == "marked"
    return key


def test_the_server_is_the_locked_prefect_and_answers_health(api):
    from prefect.server.api.server import create_app

    assert create_app is not None  # the server app imports under the locked FastAPI
    assert api.get("/health").json() is True
    assert api.get("/admin/version").json() == prefect.__version__


def test_the_uis_artifact_list_with_null_filters_answers(api, run_with_artifact):
    response = api.post("/artifacts/filter", json={**UI_ARTIFACTS, "sort": "CREATED_DESC", **PAGE})
    assert response.status_code == 200, response.text
    assert run_with_artifact in [artifact["key"] for artifact in response.json()]


def test_the_clients_artifact_list_with_null_filters_and_null_limit_answers(api, run_with_artifact):
    # What prefect.client sends for read_artifacts() with no arguments: sort and limit null.
    body = {**UI_ARTIFACTS, "limit": None, "offset": 0, "sort": None}
    response = api.post("/artifacts/filter", json=body)
    assert response.status_code == 200, response.text
    assert run_with_artifact in [artifact["key"] for artifact in response.json()]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/artifacts/latest/filter", {**UI_ARTIFACTS, "sort": "CREATED_DESC", **PAGE}),
        ("/artifacts/count", UI_ARTIFACTS),
        ("/flow_runs/filter", {**UI_RUNS, "sort": "START_TIME_DESC", **PAGE}),
        ("/task_runs/filter", {**UI_FLOWS, "sort": "EXPECTED_START_TIME_DESC", **PAGE}),
        ("/task_runs/count", {k: v for k, v in UI_FLOWS.items() if k != "work_pools"}),
        ("/flows/filter", {**UI_FLOWS, "sort": "NAME_ASC", **PAGE}),
        ("/flows/count", UI_FLOWS),
    ],
)
def test_the_uis_other_lists_with_null_filters_answer(api, run_with_artifact, path, body):  # noqa: ARG001
    response = api.post(path, json=body)
    assert response.status_code == 200, response.text
    found = response.json()
    # Each list holds at least the run made above (counts count it).
    assert (found >= 1) if isinstance(found, int) else len(found) >= 1
