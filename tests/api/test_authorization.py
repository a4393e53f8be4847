"""Who may call what, walked from the schema itself: a new operation without a rule here fails these tests."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from starlette.testclient import TestClient

from aima.graphql.schema import create_schema
from aima.testing.media import make_jpeg
from graphql import GraphQLField, GraphQLList, GraphQLNonNull, GraphQLObjectType, get_named_type
from tests.api.conftest import People
from tests.api.test_flow import JOB_EVENTS, new_case
from tests.gql import GraphQLClient

SCHEMA = create_schema()._schema
PUBLIC = {("Mutation", "register"), ("Mutation", "login")}


def operations() -> list[tuple[str, str]]:
    found = []
    for root in (SCHEMA.query_type, SCHEMA.mutation_type, SCHEMA.subscription_type):
        assert root is not None
        found.extend((root.name, name) for name in root.fields)
    return found


def sample_value(type_: Any) -> Any:
    if isinstance(type_, GraphQLNonNull):
        return sample_value(type_.of_type)
    if isinstance(type_, GraphQLList):
        return [sample_value(type_.of_type)]
    samples = {
        "ID": str(uuid.uuid4()),
        "String": "sample text value",
        "Int": 5,
        "Boolean": False,
        "Upload": None,
        "Role": "GUEST",
    }
    return samples[type_.name]


def build(root: str, name: str) -> tuple[str, dict[str, Any]]:
    field: GraphQLField = getattr(SCHEMA, f"{root.lower()}_type").fields[name]
    params = ", ".join(f"${arg}: {field.args[arg].type}" for arg in field.args)
    call = ", ".join(f"{arg}: ${arg}" for arg in field.args)
    selection = "{ __typename }" if isinstance(get_named_type(field.type), GraphQLObjectType) else ""
    keyword = {"Query": "query", "Mutation": "mutation", "Subscription": "subscription"}[root]
    signature = f"({params})" if params else ""
    arguments = f"({call})" if call else ""
    query = f"{keyword} {signature} {{ {name}{arguments} {selection} }}"
    return query, {arg: sample_value(field.args[arg].type) for arg in field.args}


def call(client: GraphQLClient, root: str, name: str) -> dict[str, Any]:
    query, variables = build(root, name)
    if "Upload" in query:
        return client.upload(str(uuid.uuid4()), make_jpeg())
    if root == "Subscription":
        return next(iter(client.subscribe(query, variables)))
    return client.execute(query, variables)


@pytest.mark.parametrize(("root", "name"), operations())
def test_anonymous_callers_are_refused(http: TestClient, root: str, name: str) -> None:
    if (root, name) in PUBLIC:
        pytest.skip("public by design: how one gets a token")
    if root == "Subscription":
        with http.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            ws.send_json({"type": "connection_init", "payload": {}})
            with pytest.raises(Exception) as closed:
                ws.receive_json()
            assert getattr(closed.value, "code", None) == 4403
        return
    body = call(GraphQLClient(http), root, name)
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", body


def test_the_public_operations_exist() -> None:
    """Every other operation refuses anonymous callers (test_anonymous_callers_are_refused)."""
    assert set(operations()) >= PUBLIC


# Every non-public operation, and what each role gets for an object it does not own. Adding an operation to the
# schema without adding it here fails `test_every_operation_has_a_rule`.
FOREIGN_RULES = {
    ("Query", "me"): "own",
    ("Query", "cases"): "own",
    ("Query", "analyzers"): "all",
    ("Query", "auditLog"): "FORBIDDEN",
    ("Query", "users"): "FORBIDDEN",
    ("Mutation", "setUserRole"): "FORBIDDEN",
    ("Mutation", "setUserActive"): "FORBIDDEN",
    ("Mutation", "endUserSessions"): "FORBIDDEN",
    ("Query", "case"): "NOT_FOUND",
    ("Query", "media"): "NOT_FOUND",
    ("Query", "job"): "NOT_FOUND",
    ("Mutation", "createCase"): "own",
    ("Mutation", "logout"): "session",
    ("Mutation", "logoutEverywhere"): "session",
    ("Mutation", "changePassword"): "session",
    ("Mutation", "uploadMedia"): "NOT_FOUND",
    ("Mutation", "analyzeMedia"): "NOT_FOUND",
    ("Subscription", "jobEvents"): "NOT_FOUND",
}


def test_every_operation_has_a_rule() -> None:
    assert set(operations()) - PUBLIC == set(FOREIGN_RULES)


@pytest.fixture(scope="module")
def owned(people: People) -> dict[str, str]:
    """A case, media and job that belong to `people.owner`."""
    case_id = new_case(people.owner, "Owned")
    media = people.owner.upload(case_id, make_jpeg(), filename="a.jpg")["data"]["uploadMedia"]
    job = people.owner.data("mutation($m: ID!) { analyzeMedia(mediaId: $m) { id } }", {"m": media["id"]})
    return {"case": case_id, "media": media["id"], "job": job["analyzeMedia"]["id"]}


READS = {
    "case": "query($id: ID!) { case(id: $id) { id media { id } jobs { id tasks { id } } } }",
    "media": "query($id: ID!) { media(id: $id) { id results { analyzer } } }",
    "job": "query($id: ID!) { job(id: $id) { id tasks { id } } }",
}


@pytest.mark.parametrize("kind", sorted(READS))
@pytest.mark.parametrize(("role", "allowed"), [("owner", True), ("admin", True), ("other", False), ("guest", False)])
def test_reads_by_role(people: People, owned: dict[str, str], kind: str, role: str, allowed: bool) -> None:
    body = getattr(people, role).execute(READS[kind], {"id": owned[kind]})
    if allowed:
        assert not body.get("errors"), body
        assert body["data"][kind]["id"] == owned[kind]
    else:
        assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"
        assert body["data"] is None


@pytest.mark.parametrize(
    ("role", "code"), [("owner", None), ("admin", None), ("other", "NOT_FOUND"), ("guest", "NOT_FOUND")]
)
def test_writes_by_role(people: People, owned: dict[str, str], role: str, code: str | None) -> None:
    client: GraphQLClient = getattr(people, role)
    upload = client.upload(owned["case"], make_jpeg(width=33), filename="b.jpg")
    analyze = client.execute("mutation($m: ID!) { analyzeMedia(mediaId: $m) { id } }", {"m": owned["media"]})
    for body in (upload, analyze):
        if code is None:
            assert not body.get("errors"), body
        else:
            assert body["errors"][0]["extensions"]["code"] == code, body


@pytest.mark.parametrize(("role", "allowed"), [("owner", True), ("admin", True), ("other", False), ("guest", False)])
def test_subscriptions_by_role(people: People, owned: dict[str, str], role: str, allowed: bool) -> None:
    first = next(iter(getattr(people, role).subscribe(JOB_EVENTS, {"jobId": owned["job"]})))
    if allowed:
        assert first["data"]["jobEvents"]["jobId"] == owned["job"]
    else:
        assert first["errors"][0]["extensions"]["code"] == "NOT_FOUND"


def test_guest_sees_no_cases_of_others(people: People, owned: dict[str, str]) -> None:
    assert people.guest.data("{ cases { id } }")["cases"] == []
    assert owned["case"] in [c["id"] for c in people.admin.data("{ cases { id } }")["cases"]]


FOREIGN_ARGUMENTS = {"caseId": "case", "mediaId": "media", "jobId": "job"}


@pytest.mark.parametrize(("root", "name"), sorted(FOREIGN_RULES))
def test_each_operation_against_another_users_objects(
    people: People, owned: dict[str, str], root: str, name: str
) -> None:
    """Another user calls every operation with the owner's ids; the rule above says what must happen."""
    rule = FOREIGN_RULES[(root, name)]
    if rule == "session":
        pytest.skip("acts on the caller's own sessions only: tests/api/test_sessions.py")
    other = people.other
    query, variables = build(root, name)
    for arg in variables:
        kind = FOREIGN_ARGUMENTS.get(arg) or (name if arg == "id" else None)
        if kind is not None:
            variables[arg] = owned[kind]
    if "Upload" in query:
        body = other.upload(owned["case"], make_jpeg())
    elif root == "Subscription":
        body = next(iter(other.subscribe(query, variables)))
    else:
        body = other.execute(query, variables)
    if rule in {"NOT_FOUND", "FORBIDDEN"}:
        assert body["errors"][0]["extensions"]["code"] == rule, body
        return
    assert not body.get("errors"), body
    if rule == "own":
        seen = other.data("{ me { id } cases { id ownerId } }")
        assert owned["case"] not in json.dumps(seen)
        assert all(case["ownerId"] == seen["me"]["id"] for case in seen["cases"])
    else:
        assert rule == "all"
