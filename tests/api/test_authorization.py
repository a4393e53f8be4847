"""Who may call what, walked from the schema itself: a new operation without a rule here fails these tests."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

from aima.cli import create_account
from aima.db.models import DossierVersion, Role
from aima.dossier import Dossier
from aima.graphql.schema import create_schema
from aima.settings import Settings
from aima.testing.media import make_jpeg
from graphql import (
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    get_named_type,
)
from tests.api.conftest import People
from tests.api.test_flow import JOB_EVENTS, new_case
from tests.api.test_identities_api import seed_faces
from tests.gql import PASSWORD, GraphQLClient, run_sync

SCHEMA = create_schema()._schema
PUBLIC = {("Mutation", "register"), ("Mutation", "login"), ("Mutation", "refreshSession")}


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
    if isinstance(type_, GraphQLInputObjectType):
        return {}
    if isinstance(type_, GraphQLEnumType) and type_.name not in ("Role", "CaseRole"):
        return next(iter(type_.values))
    samples = {
        "ID": str(uuid.uuid4()),
        "String": "sample text value",
        "Int": 5,
        "Float": 1024.0,
        "Boolean": False,
        "Upload": None,
        "Role": "GUEST",
        "CaseRole": "VIEWER",
        "JSON": "sample",
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


# Every non-public operation and what it needs. Adding an operation to the schema without a rule here fails
# `test_every_operation_has_a_rule`.
#   read / write / manage: acts on a case (or its media or job) and needs that access to it (CaseAccess);
#   admin: administrators only;  self: acts on the caller's own account or lists what the caller may see.
RULES = {
    ("Query", "me"): "self",
    ("Query", "cases"): "self",
    ("Query", "analyzers"): "self",
    ("Query", "auditLog"): "admin",
    ("Query", "users"): "admin",
    ("Mutation", "setUserRole"): "admin",
    ("Mutation", "setUserActive"): "admin",
    ("Mutation", "endUserSessions"): "admin",
    ("Mutation", "approveUser"): "admin",
    ("Query", "runtimeSettings"): "admin",
    ("Query", "configuration"): "admin",
    ("Mutation", "setRuntimeSetting"): "admin",
    ("Mutation", "resetRuntimeSetting"): "admin",
    ("Query", "case"): "read",
    ("Query", "media"): "read",
    ("Query", "job"): "read",
    ("Subscription", "jobEvents"): "read",
    ("Subscription", "caseEvents"): "read",
    ("Mutation", "uploadMedia"): "write",
    ("Mutation", "startUpload"): "write",
    ("Mutation", "createDownloadLink"): "read",
    ("Mutation", "uploadPartUrls"): "self",
    ("Mutation", "completeUpload"): "self",
    ("Mutation", "abortUpload"): "self",
    ("Query", "uploadStatus"): "self",
    ("Mutation", "analyzeMedia"): "write",
    ("Mutation", "analyzeCase"): "write",
    ("Mutation", "cancelJob"): "write",
    ("Mutation", "retryJob"): "write",
    ("Query", "jobs"): "self",
    ("Mutation", "shareCase"): "manage",
    ("Mutation", "deleteMedia"): "manage",
    ("Mutation", "deleteCase"): "manage",
    ("Mutation", "unshareCase"): "manage",
    ("Mutation", "createCase"): "self",
    ("Mutation", "logout"): "self",
    ("Mutation", "logoutEverywhere"): "self",
    ("Mutation", "changePassword"): "self",
    ("Query", "searchCase"): "read",
    ("Mutation", "renameCluster"): "write",
    ("Mutation", "mergeClusters"): "write",
    ("Mutation", "splitCluster"): "write",
    ("Mutation", "moveMember"): "write",
    ("Mutation", "removeMember"): "write",
    ("Mutation", "reclusterCase"): "write",
}
NEEDED = {"read": 1, "write": 2, "manage": 3}

# What each person may do with the two cases of `people.owner`: "owned" is not shared, "shared" is shared with
# `other` as editor and with `viewer` and `guest` as viewers. 0 none, 1 viewer, 2 editor, 3 owner.
ACCESS = {
    "owner": {"owned": 3, "shared": 3},
    "admin": {"owned": 3, "shared": 3},
    "other": {"owned": 0, "shared": 2},
    "viewer": {"owned": 0, "shared": 1},
    "guest": {"owned": 0, "shared": 1},
}
REFUSALS = {"NOT_FOUND", "FORBIDDEN", "UNAUTHENTICATED"}


def test_every_operation_has_a_rule() -> None:
    assert set(operations()) - PUBLIC == set(RULES)


@pytest.fixture(scope="module")
def objects(people: People, settings: Settings) -> dict[str, dict[str, str]]:
    """Two cases of `people.owner`, each with a media item and a job; one of them shared."""
    found = {name: case_objects(people, name) for name in ("owned", "shared")}
    bystander = f"bystander-{uuid.uuid4().hex[:6]}@example.org"
    run_sync(create_account(settings, bystander, PASSWORD, Role.USER))
    found["bystander"] = {"email": bystander}
    return found


def case_objects(people: People, name: str) -> dict[str, str]:
    """A case of `people.owner` with a media item and a job; "shared" ones are shared as `ACCESS` says."""
    case_id = new_case(people.owner, name.title())
    media = people.owner.upload(case_id, make_jpeg(width=40 + len(name)), filename="a.jpg")["data"]["uploadMedia"]
    job = people.owner.data("mutation($m: ID!) { analyzeMedia(mediaId: $m) { id } }", {"m": media["id"]})
    if name == "shared":
        for person, role in (("other", "EDITOR"), ("viewer", "VIEWER"), ("guest", "VIEWER")):
            people.owner.data(SHARE, {"c": case_id, "e": people.emails[person], "r": role})
    return {"case": case_id, "media": media["id"], "job": job["analyzeMedia"]["id"]}


SHARE = "mutation($c: ID!, $e: String!, $r: CaseRole!) { shareCase(caseId: $c, email: $e, role: $r) { role } }"
OBJECT_ARGUMENTS = {
    "caseId": "case",
    "mediaId": "media",
    "jobId": "job",
    # Persons (`seed_faces`): "cluster" holds "member" and another face, "cluster2" holds "member2".
    "clusterId": "cluster",
    "intoId": "cluster",
    "fromIds": "cluster2",
    "memberIds": "member",
    "memberId": "member2",
}
#: Operations whose `id` argument names another kind of object than the operation's name.
ID_KINDS = {"deleteMedia": "media", "deleteCase": "case"}
#: Operations that destroy their object: each call gets fresh objects.
DESTRUCTIVE = {("Mutation", "deleteMedia"), ("Mutation", "deleteCase")}
#: Corrections that change the persons they name: each call gets fresh ones in its case.
REGROUPING = {
    ("Mutation", "mergeClusters"),
    ("Mutation", "splitCluster"),
    ("Mutation", "moveMember"),
    ("Mutation", "removeMember"),
}


@pytest.fixture(scope="module")
def persons(objects: dict[str, dict[str, str]], settings: Settings) -> dict[str, list[dict[str, str]]]:
    """Groups of faces clustered into persons in each case's media (`seed_faces`): the first for the corrections
    that leave them as they are, one for each call of a `REGROUPING` operation."""
    count = 1 + len(REGROUPING) * len(ACCESS)
    return {
        case: seed_faces(settings, objects[case]["case"], objects[case]["media"], count) for case in ACCESS["owner"]
    }


def call_on(client: GraphQLClient, root: str, name: str, target: dict[str, str], bystander: str) -> dict[str, Any]:
    """Call an operation with the ids of `target`'s case, media and job (and persons)."""
    query, variables = build(root, name)
    for arg in variables:
        kind = OBJECT_ARGUMENTS.get(arg) or (ID_KINDS.get(name, name) if arg == "id" else None)
        if kind is not None:
            variables[arg] = [target[kind]] if isinstance(variables[arg], list) else target[kind]
    if "email" in variables:
        variables["email"] = bystander
    if "Upload" in query:
        return client.upload(target["case"], make_jpeg(width=31))
    if root == "Subscription":
        variables = {**variables, **({"after": None} if "after" in variables else {})}  # from the start
        return next(iter(client.subscribe(query, variables)))
    return client.execute(query, variables)


def error_code(body: dict[str, Any]) -> str | None:
    errors = body.get("errors")
    return errors[0]["extensions"]["code"] if errors else None


@pytest.mark.parametrize("case", ["owned", "shared"])
@pytest.mark.parametrize("person", sorted(ACCESS))
@pytest.mark.parametrize(("root", "name"), sorted(op for op, rule in RULES.items() if rule in NEEDED))
def test_operations_on_cases_by_access(
    people: People,
    objects: dict[str, dict[str, str]],
    persons: dict[str, list[dict[str, str]]],
    root: str,
    name: str,
    person: str,
    case: str,
) -> None:
    """Every operation that acts on a case, for every person, against an own, a shared and a foreign case."""
    access, needed = ACCESS[person][case], NEEDED[RULES[(root, name)]]
    target = case_objects(people, case) if (root, name) in DESTRUCTIVE else objects[case]
    target = {**target, **(persons[case].pop() if (root, name) in REGROUPING else persons[case][0])}
    body = call_on(getattr(people, person), root, name, target, objects["bystander"]["email"])
    if access == 0:
        assert error_code(body) == "NOT_FOUND", body  # exactly as for an id that does not exist
    elif access < needed:
        assert error_code(body) == "FORBIDDEN", body
    else:
        assert error_code(body) not in REFUSALS, body


@pytest.mark.parametrize(("root", "name"), sorted(op for op, rule in RULES.items() if rule == "admin"))
@pytest.mark.parametrize("person", ["owner", "other", "viewer", "guest"])
def test_administration_is_for_administrators(people: People, root: str, name: str, person: str) -> None:
    query, variables = build(root, name)
    assert error_code(getattr(people, person).execute(query, variables)) == "FORBIDDEN"


@pytest.mark.parametrize(("root", "name"), sorted(op for op, rule in RULES.items() if rule == "admin"))
def test_administrators_pass_the_check(people: People, root: str, name: str) -> None:
    """With made-up arguments: NOT_FOUND for a made-up user id is an answer, not a refusal."""
    query, variables = build(root, name)
    assert error_code(people.admin.execute(query, variables)) not in {"FORBIDDEN", "UNAUTHENTICATED"}


READS = {
    "case": "query($id: ID!) { case(id: $id) { id myAccess members { email role } media { id results { analyzer } }"
    " jobs { id tasks { id } } dossier { version job { id } markdown json findings { evidence { keyframeUrl } } }"
    " dossiers { version } } }",
    "media": "query($id: ID!) { media(id: $id) { id results { analyzer } description { model } } }",
    "job": "query($id: ID!) { job(id: $id) { id tasks { id } } }",
}


@pytest.fixture(scope="module")
def dossiers(objects: dict[str, dict[str, str]], settings: Settings) -> None:
    """A dossier (version 1, made by each case's job) in both cases, for the dossier fields of `READS`."""

    async def seed() -> None:
        engine = create_async_engine(settings.database_url)
        content = Dossier(summary="Seeded.", model="seed").model_dump(mode="json")
        try:
            async with engine.begin() as conn:
                for case in ("owned", "shared"):
                    ids = objects[case]
                    row = {"case_id": ids["case"], "version": 1, "job_id": ids["job"], "analyzer": "seed"}
                    await conn.execute(insert(DossierVersion).values(**row, analyzer_version="1", content=content))
        finally:
            await engine.dispose()

    run_sync(seed())


@pytest.mark.usefixtures("dossiers")
@pytest.mark.parametrize("kind", sorted(READS))
@pytest.mark.parametrize("case", ["owned", "shared"])
@pytest.mark.parametrize("person", sorted(ACCESS))
def test_nested_fields_by_access(
    people: People, objects: dict[str, dict[str, str]], kind: str, case: str, person: str
) -> None:
    body = getattr(people, person).execute(READS[kind], {"id": objects[case][kind]})
    if ACCESS[person][case]:
        assert not body.get("errors"), body
        assert body["data"][kind]["id"] == objects[case][kind]
        if kind == "case":
            assert body["data"]["case"]["dossier"]["json"]["summary"] == "Seeded."
    else:
        assert error_code(body) == "NOT_FOUND"
        assert body["data"] is None


@pytest.mark.parametrize("person", sorted(ACCESS))
def test_case_lists_hold_exactly_what_each_person_may_read(
    people: People, objects: dict[str, dict[str, str]], person: str
) -> None:
    listed = {c["id"]: c["myAccess"] for c in getattr(people, person).data("{ cases { id myAccess } }")["cases"]}
    for case in ("owned", "shared"):
        level = ACCESS[person][case]
        if level == 0:
            assert objects[case]["case"] not in listed
        else:
            assert listed[objects[case]["case"]] == {1: "VIEWER", 2: "EDITOR", 3: "OWNER"}[level]
    if person == "guest":
        assert set(listed.values()) == {"VIEWER"}  # a guest reads only what is shared with it


def test_self_operations_reveal_nothing_of_others(people: People, objects: dict[str, dict[str, str]]) -> None:
    seen = people.other.data("{ me { id } cases { id ownerId myAccess } }")
    assert objects["owned"]["case"] not in json.dumps(seen)
    assert objects["shared"]["case"] in {c["id"] for c in seen["cases"]}
    for case in seen["cases"]:  # own cases, and cases shared with it: nothing else
        assert case["myAccess"] == ("OWNER" if case["ownerId"] == seen["me"]["id"] else "EDITOR"), case


def test_refusals_are_audited(people: People, objects: dict[str, dict[str, str]]) -> None:
    people.viewer.execute("mutation($m: ID!) { analyzeMedia(mediaId: $m) { id } }", {"m": objects["shared"]["media"]})
    viewer_id = people.viewer.data("{ me { id } }")["me"]["id"]
    entries = people.admin.data(
        'query($a: ID) { auditLog(action: "access.denied", actorId: $a) { details } }', {"a": viewer_id}
    )["auditLog"]
    assert any(
        r["code"] == "FORBIDDEN" and r["path"] == "analyzeMedia" for e in entries for r in e["details"]["refusals"]
    )


def test_refused_subscriptions_are_audited(people: People, objects: dict[str, dict[str, str]]) -> None:
    first = next(iter(people.other.subscribe(JOB_EVENTS, {"jobId": objects["owned"]["job"]})))
    assert error_code(first) == "NOT_FOUND"
    other_id = people.other.data("{ me { id } }")["me"]["id"]
    entries = people.admin.data(
        'query($a: ID) { auditLog(action: "access.denied", actorId: $a) { details } }', {"a": other_id}
    )["auditLog"]
    assert any(e["details"]["operation"] == "jobEvents" for e in entries), entries
