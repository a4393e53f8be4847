"""The schema, assembled from the per-concern root types."""

from __future__ import annotations

import strawberry
from graphql.error import GraphQLError
from strawberry.extensions import (
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.types import ExecutionContext

from aima.graphql.errors import OperationMetrics, format_errors_in_place
from aima.graphql.mutations import Mutation
from aima.graphql.queries import Query
from aima.graphql.subscriptions import Subscription


class AimaSchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        """Give domain errors their code and mask the rest (logged), for queries and subscriptions alike.

        Strawberry's default logs every error with its traceback, expected ones included.
        """
        format_errors_in_place(errors)


def create_schema() -> strawberry.Schema:
    return AimaSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=[
            # Clients send the same few documents again and again: parse and validate each once.
            ParserCache(maxsize=256),
            ValidationCache(maxsize=256),
            QueryDepthLimiter(max_depth=12),
            MaxAliasesLimiter(max_alias_count=30),
            MaxTokensLimiter(max_token_count=5000),
            OperationMetrics,
        ],
    )


def schema_sdl() -> str:
    """The schema in SDL, as checked in at graphql/schema.graphql."""
    return create_schema().as_str() + "\n"
