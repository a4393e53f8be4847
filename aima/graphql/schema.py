"""The schema, assembled from the per-concern root types."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql.error import GraphQLError
from strawberry.extensions import (
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

from aima.graphql.configuration import ConfigurationMutation, ConfigurationQuery
from aima.graphql.errors import OperationMetrics, format_errors_in_place
from aima.graphql.lifecycle import LifecycleMutation
from aima.graphql.mutations import Mutation
from aima.graphql.queries import Query
from aima.graphql.subscriptions import Subscription
from aima.settings import GraphQLSettings

RootQuery = merge_types("Query", (Query, ConfigurationQuery))
RootMutation = merge_types("Mutation", (Mutation, ConfigurationMutation, LifecycleMutation))


class AimaSchema(strawberry.Schema):
    def __init__(self, *args: Any, suggestions: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.suggestions = suggestions

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        """Give domain errors their code and mask the rest (logged), for queries and subscriptions alike.

        Strawberry's default logs every error with its traceback, expected ones included.
        """
        format_errors_in_place(errors, suggestions=self.suggestions)


def create_schema(
    settings: GraphQLSettings | None = None, *, introspection: bool = True, suggestions: bool = True
) -> strawberry.Schema:
    """The schema with its limits; introspection and suggestions are the deployment's choice (`Settings`)."""
    limits = settings or GraphQLSettings()
    extensions: list[Any] = [
        # Clients send the same few documents again and again: parse and validate each once.
        ParserCache(maxsize=256),
        ValidationCache(maxsize=256),
        QueryDepthLimiter(max_depth=limits.max_depth),
        MaxAliasesLimiter(max_alias_count=limits.max_aliases),
        MaxTokensLimiter(max_token_count=limits.max_tokens),
        OperationMetrics,
    ]
    if not introspection:
        extensions.append(DisableIntrospection())
    return AimaSchema(
        query=RootQuery,
        mutation=RootMutation,
        subscription=Subscription,
        extensions=extensions,
        suggestions=suggestions,
    )


def schema_sdl() -> str:
    """The schema in SDL, as checked in at graphql/schema.graphql."""
    return create_schema().as_str() + "\n"
