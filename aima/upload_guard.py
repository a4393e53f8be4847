"""Refuses upload requests before their body is read: anonymous ones, and ones larger than the upload limit.

Starlette parses a whole multipart body (spooling files to disk) before any resolver runs, so the checks that
protect the disk belong in front of it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aima.errors import AimaError, NotAuthenticated, UploadTooLarge
from aima.security import decode_access_token
from aima.settings import Settings

logger = logging.getLogger(__name__)

#: Room for the multipart envelope (operations, map, part headers) around the file itself.
ENVELOPE_BYTES = 1024 * 1024


class UploadGuard:
    def __init__(self, app: ASGIApp, settings: Callable[[], Settings]) -> None:
        self.app = app
        #: The settings in effect now: the upload limit may change while the server runs.
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_multipart(scope):
            await self.app(scope, receive, send)
            return
        settings = self.settings()
        max_bytes = settings.max_upload_bytes
        limit = max_bytes + ENVELOPE_BYTES
        headers = dict(scope.get("headers") or [])
        try:
            self._check_token(settings, headers.get(b"authorization", b"").decode("latin-1"))
            declared = int(headers.get(b"content-length", b"0") or 0)
            if declared > limit:
                raise UploadTooLarge(max_bytes)
        except AimaError as exc:
            await _refuse(send, 401 if isinstance(exc, NotAuthenticated) else 413, exc)
            return
        except ValueError:
            await _refuse(send, 400, AimaError("Invalid Content-Length.", code="BAD_REQUEST"))
            return

        received = 0
        too_large = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    return {"type": "http.disconnect"}  # the body parser stops reading here
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            logger.warning("refused an upload body over %d bytes", limit)
            await _refuse(send, 413, UploadTooLarge(max_bytes))

    @staticmethod
    def _check_token(settings: Settings, header: str) -> None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticated("Uploads need 'Authorization: Bearer <token>'.")
        decode_access_token(settings.auth, token.strip())


def _is_multipart(scope: Scope) -> bool:
    for name, value in scope.get("headers") or []:
        if name == b"content-type":
            return bool(value.lower().startswith(b"multipart/"))
    return False


async def _refuse(send: Send, status: int, error: AimaError) -> None:
    body = json.dumps({"data": None, "errors": [{"message": error.message, "extensions": {"code": error.code}}]})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})
