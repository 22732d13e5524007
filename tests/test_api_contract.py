"""What schemathesis found, pinned by plain tests: no 500 on odd signatures, Allow on 405,
datetimes with their zone, and an OpenAPI document that describes every answer."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from relay_settings import RelaySettings
from store import jobs

TOKEN = "contract-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Probes send no token: these answer anyone (and say nothing secret).
OPEN = {"/api/health", "/api/health/live", "/api/health/ready"}


@pytest.fixture(scope="module")
def client(database_url, tmp_path_factory):
    data = tmp_path_factory.mktemp("api-contract")
    settings = RelaySettings(database_url=database_url, data_dir=str(data), api_token=TOKEN)
    with TestClient(create_app(settings, {})) as test_client:
        yield test_client


@pytest.mark.parametrize("sig", ["é" * 32, "ab", "0" * 31 + "g", "0" * 33])
def test_a_malformed_file_signature_is_422_never_500(client, sig):
    response = client.get("/api/bot/requests/abc/files/x.png", params={"sig": sig})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request" and "sig" in response.json()["message"]


def test_a_wrong_file_signature_falls_back_to_the_token(client):
    path = "/api/bot/requests/abc/files/x.png"
    assert client.get(path, params={"sig": "0" * 32}).status_code == 401
    with_token = client.get(path, params={"sig": "0" * 32}, headers=AUTH)
    assert with_token.status_code == 404 and with_token.json()["error"] == "not_found"


def test_a_wrong_method_is_405_with_every_allowed_method(client):
    response = client.put("/api/transcriptions/abc", headers=AUTH)
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET"
    assert response.json()["error"] == "method_not_allowed"
    assert client.delete("/api/queue", headers=AUTH).headers["allow"] == "GET"


def test_datetimes_carry_their_zone(client):
    job = jobs.create_job("/nowhere.wav", "nowhere.wav", work_pool="asr-cpu", duration=5.0)
    body = client.get(f"/api/transcriptions/{job.id}", headers=AUTH).json()
    assert body["created_at"].endswith(("Z", "+00:00")), body["created_at"]
    jobs.delete_job(job.id)


def test_the_document_describes_every_answer(client):
    document = client.get("/openapi.json").json()
    upload = document["paths"]["/api/transcriptions"]["post"]
    assert set(upload["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    multipart = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert multipart["required"] == ["file"] and multipart["properties"]["file"]["format"] == (
        "binary"
    )
    assert {"202", "413", "415", "422"} <= set(upload["responses"])
    assert set(upload["responses"]["202"]["links"]) == {"status", "transcript", "cancel", "delete"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            errors = {code for code in operation["responses"] if code.startswith("4")}
            if path not in OPEN:
                assert "401" in errors, (method, path)
            for code in errors:
                schema = operation["responses"][code]["content"]["application/json"]["schema"]
                assert schema["$ref"].split("/")[-1] in ("ErrorBody", "Refusal"), (path, code)


def test_an_unknown_option_is_refused_by_name(client):
    response = client.post(
        "/api/transcriptions", headers=AUTH, json={"path": "/tmp/x.wav", "beam": 3}
    )
    assert response.status_code == 422 and "beam" in response.json()["message"]


@pytest.mark.parametrize("field", ["channel", "prompt", "guild", "destination"])
def test_a_nul_character_is_refused_never_a_500(client, field):
    # PostgreSQL stores no NUL in text: it once failed the INSERT with a 500.
    body = {"kind": "chat", "prompt": "hi", "user_id": "u1", "channel": "general"}
    response = client.post("/api/bot/requests", headers=AUTH, json={**body, field: "a\x00b"})
    assert response.status_code == 422, response.text
    assert field in response.json()["message"]


@pytest.mark.parametrize("blank", ["   ", "\x85", "\u3000\t", "\x1c"])
def test_a_prompt_of_white_space_is_empty_by_the_documented_rule(client, blank):
    body = {"kind": "chat", "prompt": blank, "user_id": "u1", "channel": "general"}
    response = client.post("/api/bot/requests", headers=AUTH, json=body)
    assert response.status_code == 422 and "the prompt is empty" in response.json()["message"]
    document = client.get("/openapi.json").json()
    pattern = document["components"]["schemas"]["BotRequestIn"]["properties"]["prompt"]["pattern"]
    assert re.fullmatch(pattern, blank) is None and re.fullmatch(pattern, f"{blank}a")
