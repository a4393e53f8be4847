"""Failed sign-ins slow down per account and per client address, and an account is never locked for long."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from aima.app import create_app
from aima.cli import create_account
from aima.db.models import Role
from aima.errors import InvalidInput
from aima.plugins import AnalyzerRegistry
from aima.services.users import check_password_policy, common_passwords
from tests.conftest import Servers, settings_for
from tests.gql import PASSWORD, GraphQLClient, run_sync

LOGIN = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }"


@pytest.fixture(scope="module")
def throttled(servers: Servers, analyzers: AnalyzerRegistry) -> Iterator[tuple[TestClient, object]]:
    settings = settings_for(
        servers,
        trusted_proxies=["testclient"],
        auth={
            "throttle_free_failures_account": 2,
            "throttle_free_failures_address": 6,
            "throttle_base_delay_s": 0.4,
            "throttle_max_delay_account_s": 0.8,
            "throttle_max_delay_address_s": 30,
        },
    )
    with TestClient(create_app(settings, analyzers=analyzers)) as http:
        yield http, settings


def attempt(http: TestClient, email: str, password: str, address: str = "10.0.0.1") -> str | None:
    """The error code of a sign-in from `address` (None when it succeeded)."""
    body = (
        GraphQLClient(http)
        .http.post(
            "/graphql",
            json={"query": LOGIN, "variables": {"e": email, "p": password}},
            headers={"x-forwarded-for": address},
        )
        .json()
    )
    return body["errors"][0]["extensions"]["code"] if body.get("errors") else None


def new_user(settings: object) -> str:
    email = f"throttle-{uuid.uuid4().hex[:8]}@example.org"
    run_sync(create_account(settings, email, PASSWORD, Role.USER))  # type: ignore[arg-type]
    return email


def test_an_account_slows_down_after_free_failures_then_recovers(throttled: tuple[TestClient, object]) -> None:
    http, settings = throttled
    email = new_user(settings)
    assert [attempt(http, email, "wrong password 1"), attempt(http, email, "wrong password 2")] == [
        "INVALID_CREDENTIALS",
        "INVALID_CREDENTIALS",
    ]
    assert attempt(http, email, "wrong password 3") == "INVALID_CREDENTIALS"  # the third failure starts a wait
    assert attempt(http, email, PASSWORD) == "RATE_LIMITED"  # even the right password waits
    time.sleep(0.5)
    assert attempt(http, email, PASSWORD) is None  # the wait is short, and success clears the count
    assert attempt(http, email, "wrong password 4") == "INVALID_CREDENTIALS"


def test_the_account_wait_is_capped(throttled: tuple[TestClient, object]) -> None:
    http, settings = throttled
    email = new_user(settings)
    for n in range(8):
        attempt(http, email, f"wrong password {n}", address=f"10.1.0.{n}")  # spread over addresses
        time.sleep(0.05)
    time.sleep(0.9)  # the cap (0.8 s), not 0.4 * 2**5 s
    assert attempt(http, email, PASSWORD, address="10.1.1.1") is None


def test_unknown_emails_are_throttled_like_known_ones(throttled: tuple[TestClient, object]) -> None:
    http, _ = throttled
    email = f"nobody-{uuid.uuid4().hex[:8]}@example.org"
    codes = [attempt(http, email, "wrong password", address="10.2.0.1") for _ in range(4)]
    assert codes[:3] == ["INVALID_CREDENTIALS"] * 3 and codes[3] == "RATE_LIMITED"


def test_an_address_that_keeps_guessing_waits_longer(throttled: tuple[TestClient, object]) -> None:
    http, settings = throttled
    victim = new_user(settings)
    for n in range(7):  # different accounts, one address
        attempt(http, f"guess-{n}-{uuid.uuid4().hex[:6]}@example.org", "wrong password", address="10.3.0.1")
    assert attempt(http, victim, PASSWORD, address="10.3.0.1") == "RATE_LIMITED"
    assert attempt(http, victim, PASSWORD, address="10.3.0.2") is None  # the owner elsewhere is unaffected


def test_common_passwords_are_refused() -> None:
    assert len(common_passwords()) == 10_000
    for password in ("1qaz2wsx3edc", "123QWEASDZXC"):
        with pytest.raises(InvalidInput, match="most common"):
            check_password_policy(password)
    check_password_policy("correct horse battery staple")


def test_forwarded_addresses_count_only_behind_trusted_proxies() -> None:
    from aima.graphql.view import client_address

    assert client_address("10.9.9.9", "1.2.3.4", []) == "10.9.9.9"
    assert client_address("proxy", "6.6.6.6, 1.2.3.4", ["proxy"]) == "1.2.3.4"
    assert client_address("proxy", "1.2.3.4, proxy2", ["proxy", "proxy2"]) == "1.2.3.4"
