"""Servers that `aima dev` and the test-suite run as child processes on 127.0.0.1, all from pip."""

from aima.embedded.base import EmbeddedServer, EmbeddedServerError, make_runtime_root, port_is_free
from aima.embedded.milvus import EmbeddedMilvus
from aima.embedded.mongo import EmbeddedMongo
from aima.embedded.postgres import EmbeddedPostgres
from aima.embedded.redis import EmbeddedRedis
from aima.embedded.s3 import EmbeddedS3
from aima.embedded.stack import DevStack, StackPorts, StackUrls

__all__ = [
    "DevStack",
    "EmbeddedMilvus",
    "EmbeddedMongo",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedS3",
    "EmbeddedServer",
    "EmbeddedServerError",
    "StackPorts",
    "StackUrls",
    "make_runtime_root",
    "port_is_free",
]
