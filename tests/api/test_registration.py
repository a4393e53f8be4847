"""Registration as the deployment allows it: open, with an administrator's approval, or closed."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from aima.app import create_app
from aima.cli import create_account
from aima.db.models import Role
from aima.plugins import AnalyzerRegistry
from tests.conftest import Servers, settings_for
from tests.gql import LOGIN, PASSWORD, REGISTER, GraphQLClient, login, run_sync


def code(body: dict[str, object]) -> str | None:
    errors = body.get("errors")
    return errors[0]["extensions"]["code"] if isinstance(errors, list) and errors else None  # type: ignore[index]


Deployment = tuple[TestClient, GraphQLClient]


@contextlib.contextmanager
def deployment(servers: Servers, analyzers: AnalyzerRegistry, registration: str) -> Iterator[Deployment]:
    """An API with this registration setting, and an administrator signed in to it."""
    settings = settings_for(servers, auth={"registration": registration})
    with TestClient(create_app(settings, analyzers=analyzers)) as http:
        email = f"approver-{uuid.uuid4().hex[:6]}@example.org"
        run_sync(create_account(settings, email, PASSWORD, Role.ADMIN))
        yield http, login(http, email)


@pytest.fixture(scope="module")
def approval(servers: Servers, analyzers: AnalyzerRegistry) -> Iterator[Deployment]:
    with deployment(servers, analyzers, "approval") as running:
        yield running


@pytest.fixture(scope="module")
def closed(servers: Servers, analyzers: AnalyzerRegistry) -> Iterator[Deployment]:
    with deployment(servers, analyzers, "closed") as running:
        yield running


def test_registration_waits_for_approval(approval: Deployment) -> None:
    http, admin = approval
    email = f"applicant-{uuid.uuid4().hex[:6]}@example.org"
    answer = GraphQLClient(http).data(REGISTER, {"e": email, "p": PASSWORD})["register"]
    assert answer == {"pendingApproval": True, "session": None}
    # Until approved, signing in fails exactly like a wrong password.
    refused = GraphQLClient(http).execute(LOGIN, {"e": email, "p": PASSWORD})
    assert code(refused) == "INVALID_CREDENTIALS"
    pending = admin.data("{ users(pendingApproval: true) { id email active pendingApproval } }")["users"]
    [user] = [u for u in pending if u["email"] == email]
    assert (user["active"], user["pendingApproval"]) == (False, True)
    approved = admin.data("mutation($u: ID!) { approveUser(userId: $u) { active pendingApproval } }", {"u": user["id"]})
    assert approved["approveUser"] == {"active": True, "pendingApproval": False}
    assert login(http, email).data("{ me { email } }")["me"]["email"] == email
    entries = admin.data(
        'query($t: String) { auditLog(action: "user.approve", targetId: $t) { id } }', {"t": user["id"]}
    )
    assert len(entries["auditLog"]) == 1


def test_with_approval_a_known_email_gets_the_same_answer(approval: Deployment) -> None:
    http, _ = approval
    email = f"twice-{uuid.uuid4().hex[:6]}@example.org"
    first = GraphQLClient(http).execute(REGISTER, {"e": email, "p": PASSWORD})
    second = GraphQLClient(http).execute(REGISTER, {"e": email, "p": "another long passphrase"})
    assert first == second == {"data": {"register": {"pendingApproval": True, "session": None}}}


def test_closed_registration_is_refused(closed: Deployment) -> None:
    http, _ = closed
    body = GraphQLClient(http).execute(REGISTER, {"e": f"x-{uuid.uuid4().hex[:6]}@example.org", "p": PASSWORD})
    assert code(body) == "FORBIDDEN"
    assert body["errors"][0]["message"] == "Registration is closed; ask an administrator for an account."


def test_only_waiting_accounts_are_approved(approval: Deployment) -> None:
    _, admin = approval
    me = admin.data("{ me { id } }")["me"]["id"]
    assert code(admin.execute("mutation($u: ID!) { approveUser(userId: $u) { id } }", {"u": me})) == "BAD_USER_INPUT"
