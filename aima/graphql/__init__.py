"""The GraphQL API (Strawberry), split by concern: context, types, queries, mutations, subscriptions."""
