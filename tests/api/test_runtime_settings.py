"""Runtime settings through GraphQL: administrators read and change them; checked, audited, applied, never secret.

These tests change the settings of the session's API (the `http` fixture): each one resets what it set.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aima.services.runtime_settings import MASK, RUNTIME_KEYS, redact
from aima.settings import Settings
from aima.testing.media import make_jpeg
from tests.api.conftest import People
from tests.api.test_flow import new_case
from tests.gql import GraphQLClient

SETTINGS = """
{ runtimeSettings {
    version
    settings { key description value baseValue source version updatedAt updatedBy { email } }
    processes { process version current appliedAt seenAt values }
} }
"""
SET = """
mutation($key: String!, $value: JSON!) {
  setRuntimeSetting(key: $key, value: $value) { key value baseValue source version updatedAt updatedBy { email } }
}
"""
RESET = "mutation($key: String!) { resetRuntimeSetting(key: $key) { key value baseValue source version } }"
AUDIT = """
query($action: String!, $target: String) {
  auditLog(action: $action, targetId: $target, first: 5) { actorEmail action targetType targetId details }
}
"""


def error_code(body: dict[str, Any]) -> str:
    code: str = body["errors"][0]["extensions"]["code"]
    return code


def latest_audit(admin: GraphQLClient, action: str, key: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = admin.data(AUDIT, {"action": action, "target": key})["auditLog"]
    assert entries, f"no {action} entry for {key}"
    return entries[0]


def eventually(check: Callable[[], bool], timeout: float = 2.0) -> float:
    """Seconds until `check()` held; fails after `timeout`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "not within the time allowed"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
def restore(people: People) -> Iterator[list[str]]:
    """Keys a test changed, reset afterwards so that the session's API is left as it was."""
    keys: list[str] = []
    yield keys
    for key in keys:
        people.admin.data(RESET, {"key": key})


def test_administrators_see_every_runtime_key_with_its_source(people: People, settings: Settings) -> None:
    answer = people.admin.data(SETTINGS)["runtimeSettings"]
    by_key = {s["key"]: s for s in answer["settings"]}
    assert set(by_key) == set(RUNTIME_KEYS)
    upload = by_key["max_upload_bytes"]
    assert upload["value"] == upload["baseValue"] == settings.max_upload_bytes
    assert upload["source"] == "DEFAULT" and upload["version"] is None and upload["updatedBy"] is None
    assert by_key["auth.registration"]["value"] == "open"
    assert all(s["description"] for s in answer["settings"])
    # The API process of this session reports what it applied: at least every RESYNC_S, and at once after a change.
    people.admin.data(SET, {"key": "log_level", "value": settings.log_level})
    people.admin.data(RESET, {"key": "log_level"})

    def reported() -> bool:
        answer = people.admin.data(SETTINGS)["runtimeSettings"]
        apis = [p for p in answer["processes"] if p["process"].startswith("api:")]
        return bool(apis) and all(
            api["version"] == answer["version"]
            and api["current"]
            and api["values"]["max_upload_bytes"] == settings.max_upload_bytes
            for api in apis
        )

    eventually(reported)


def test_a_change_applies_at_once_and_a_reset_restores_the_base_value(
    people: People, settings: Settings, restore: list[str]
) -> None:
    case_id = new_case(people.owner, "Runtime limit")
    image = make_jpeg()
    restore.append("max_upload_bytes")
    changed = people.admin.data(SET, {"key": "max_upload_bytes", "value": len(image) - 1})["setRuntimeSetting"]
    assert changed["value"] == len(image) - 1
    assert changed["baseValue"] == settings.max_upload_bytes
    assert changed["source"] == "RUNTIME" and changed["version"] >= 1 and changed["updatedAt"]
    assert changed["updatedBy"]["email"].startswith("admin-")

    def refused() -> bool:
        body = people.owner.upload(case_id, image, filename="a.jpg", content_type="image/jpeg")
        return bool(body.get("errors")) and error_code(body) == "FILE_TOO_LARGE"

    eventually(refused)
    entry = latest_audit(people.admin, "config.change", "max_upload_bytes")
    assert entry["details"] == {"from": settings.max_upload_bytes, "to": len(image) - 1, "version": changed["version"]}
    assert entry["actorEmail"].startswith("admin-") and entry["targetType"] == "setting"

    reset = people.admin.data(RESET, {"key": "max_upload_bytes"})["resetRuntimeSetting"]
    assert reset["value"] == reset["baseValue"] == settings.max_upload_bytes
    assert reset["source"] == "DEFAULT" and reset["version"] is None
    eventually(lambda: not people.owner.upload(case_id, image, filename="a.jpg").get("errors"))
    entry = latest_audit(people.admin, "config.reset", "max_upload_bytes")
    assert entry["details"]["from"] == len(image) - 1 and entry["details"]["to"] == settings.max_upload_bytes
    answer = people.admin.data(SETTINGS)["runtimeSettings"]
    assert answer["version"] > changed["version"]
    eventually(lambda: all(p["current"] for p in people.admin.data(SETTINGS)["runtimeSettings"]["processes"]))


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("max_upload_bytes", "a lot", "Input should be a valid integer"),
        ("max_upload_bytes", "1000", "Input should be a valid integer"),  # a string is no number
        ("max_upload_bytes", 0, "greater than or equal to 1"),
        ("max_upload_bytes", 1.5, "Input should be a valid integer"),
        ("auth.registration", "sometimes", "Input should be 'open', 'approval' or 'closed'"),
        ("auth.throttle_base_delay_s", True, "Input should be a valid number"),
        ("auth.access_token_minutes", 100_000, "at most 1440"),
        ("log_level", "LOUD", "must be one of DEBUG"),
        ("worker.max_tries", {"n": 3}, "Input should be a valid integer"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_and_audited(
    people: People, settings: Settings, key: str, value: object, reason: str
) -> None:
    before = people.admin.data(SETTINGS)["runtimeSettings"]
    body = people.admin.execute(SET, {"key": key, "value": value})
    assert error_code(body) == "BAD_USER_INPUT", body
    message = body["errors"][0]["message"]
    assert key in message and reason in message, message
    entry = latest_audit(people.admin, "config.change", key)
    assert entry["details"] == {"refused": message}
    after = people.admin.data(SETTINGS)["runtimeSettings"]
    assert after["version"] == before["version"] and after["settings"] == before["settings"]


@pytest.mark.parametrize("key", ["auth.jwt_secret", "s3.secret_key", "database_url", "redis_url", "nonsense", ""])
def test_secrets_urls_and_unknown_keys_are_refused_and_audited(people: People, key: str) -> None:
    attempt = "attempted-secret-value-7f3a"
    body = people.admin.execute(SET, {"key": key, "value": attempt})
    assert error_code(body) == "BAD_USER_INPUT", body
    message = body["errors"][0]["message"]
    assert "cannot be changed at runtime" in message and "max_upload_bytes" in message and "worker.max_tries" in message
    assert attempt not in message
    if key:
        entry = latest_audit(people.admin, "config.change", key)
        assert entry["details"] == {"refused": message}
        assert attempt not in json.dumps(entry)
    body = people.admin.execute(RESET, {"key": key})
    assert error_code(body) == "BAD_USER_INPUT", body


def test_no_runtime_key_is_a_secret_or_a_connection() -> None:
    for key in RUNTIME_KEYS:
        assert not key.endswith("_url") and "secret" not in key and "key" not in key.split(".")[-1]
        node: Any = Settings.model_fields[key.split(".")[0]]
        for part in key.split(".")[1:]:
            node = node.annotation.model_fields[part]
        assert "Secret" not in str(node.annotation), key


OPERATIONS = [
    (SETTINGS, {}),
    ("{ configuration }", {}),
    (SET, {"key": "max_upload_bytes", "value": 1}),
    (RESET, {"key": "max_upload_bytes"}),
]


@pytest.mark.parametrize(("query", "variables"), OPERATIONS)
@pytest.mark.parametrize(
    ("role", "code"), [("owner", "FORBIDDEN"), ("guest", "FORBIDDEN"), ("anonymous", "UNAUTHENTICATED")]
)
def test_only_administrators_may_read_or_change_the_configuration(
    people: People, settings: Settings, query: str, variables: dict[str, Any], role: str, code: str
) -> None:
    body = getattr(people, role).execute(query, variables)
    assert error_code(body) == code, body
    assert body["data"] is None
    by_key = {s["key"]: s for s in people.admin.data(SETTINGS)["runtimeSettings"]["settings"]}
    assert by_key["max_upload_bytes"]["value"] == settings.max_upload_bytes


def test_a_refused_change_by_a_user_is_audited(people: People) -> None:
    body = people.other.execute(SET, {"key": "auth.registration", "value": "closed"})
    assert error_code(body) == "FORBIDDEN"
    entry = latest_audit(people.admin, "config.change", "auth.registration")
    assert entry["actorEmail"].startswith("other-")
    assert entry["details"] == {"refused": body["errors"][0]["message"]}


def secrets_of(settings: Settings) -> list[str]:
    found = [settings.auth.jwt_secret.get_secret_value(), settings.s3.secret_key.get_secret_value()]
    found += [key.get_secret_value() for key in settings.auth.jwt_previous_keys.values()]
    return found


def test_the_configuration_never_shows_a_secret(
    people: People, settings: Settings, restore: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    restore.append("auth.throttle_window_s")
    people.admin.data(SET, {"key": "auth.throttle_window_s", "value": 600})
    eventually(lambda: people.admin.data("{ configuration }")["configuration"]["auth"]["throttle_window_s"] == 600)
    people.admin.execute(SET, {"key": "auth.jwt_secret", "value": "attempted-secret-value-7f3a"})
    configuration = people.admin.data("{ configuration }")["configuration"]
    assert configuration["auth"]["jwt_secret"] == MASK and configuration["s3"]["secret_key"] == MASK
    assert configuration["database_url"] == settings.database_url  # no password in it to mask
    listing = people.admin.data(SETTINGS)
    people.admin.data(RESET, {"key": "auth.throttle_window_s"})
    eventually(lambda: people.admin.data("{ configuration }")["configuration"]["auth"]["throttle_window_s"] == 900)
    restore.clear()
    for answer in (json.dumps(configuration), json.dumps(listing), caplog.text):
        for secret in [*secrets_of(settings), "attempted-secret-value-7f3a"]:
            assert secret not in answer
    assert "auth.throttle_window_s=600" in caplog.text  # the change itself is logged, by key and value


def test_redaction_masks_secrets_and_url_passwords() -> None:
    settings = Settings(
        environment="test",
        database_url="postgresql+asyncpg://aima:pg-password@db:5432/aima",
        redis_url="redis://:redis-password@cache:6379/0",
        auth={"jwt_secret": "j" * 40, "jwt_previous_keys": {"k0": "old-signing-key"}},
    )
    shown = json.dumps(redact(settings.model_dump(mode="json")))
    for secret in (
        "pg-password",
        "redis-password",
        "j" * 40,
        "old-signing-key",
        settings.s3.secret_key.get_secret_value(),
    ):
        assert secret not in shown
    assert "postgresql+asyncpg://aima:**********@db:5432/aima" in shown
    assert "redis://:**********@cache:6379/0" in shown
