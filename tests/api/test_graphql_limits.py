"""Introspection and suggestions follow the deployment's settings; depth, alias and token limits hold."""

from __future__ import annotations

from aima.graphql.schema import create_schema
from aima.settings import GraphQLSettings, Settings
from tests.api.conftest import People

INTROSPECTION = "{ __schema { queryType { name } } }"


def test_development_defaults_allow_introspection_and_suggestions() -> None:
    development = Settings(environment="development")
    assert development.introspection and development.suggestions
    production_like = Settings(environment="test")
    assert not production_like.introspection and not production_like.suggestions
    assert Settings(environment="test", graphql={"introspection": True}).introspection


async def test_introspection_and_suggestions_can_be_on() -> None:
    schema = create_schema(introspection=True, suggestions=True)
    assert (await schema.execute(INTROSPECTION)).data == {"__schema": {"queryType": {"name": "Query"}}}
    result = await schema.execute("{ casess { id } }")
    assert result.errors and "Did you mean" in result.errors[0].message


def test_off_outside_development(people: People) -> None:
    body = people.owner.execute(INTROSPECTION)
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    misspelled = people.owner.execute("{ casess { id } }")
    message = misspelled["errors"][0]["message"]
    assert "casess" in message and "Did you mean" not in message and "cases" not in message.replace("casess", "")


async def test_limits_come_from_settings() -> None:
    schema = create_schema(GraphQLSettings(max_depth=2, max_aliases=2, max_tokens=200))
    deep = await schema.execute("{ cases { media { results { analyzer } } } }")
    assert deep.errors and "exceeds maximum operation depth" in deep.errors[0].message
    aliases = await schema.execute("{ a: me { id } b: me { id } c: me { id } }")
    assert aliases.errors and "aliases" in aliases.errors[0].message
    tokens = await schema.execute("{ " + " ".join(f"f{i}: me {{ id }}" for i in range(60)) + " }")
    assert tokens.errors and "token" in tokens.errors[0].message.lower()


def test_batched_requests_are_refused(people: People) -> None:
    """Batching would multiply every limit above by the batch size: one operation per request."""
    answer = people.owner.http.post(
        "/graphql", json=[{"query": "{ me { id } }"}, {"query": "{ me { id } }"}], headers=people.owner.headers()
    )
    assert answer.status_code == 400
    assert "me" not in answer.text
