"""Password hashing (argon2id) and JWT access tokens (PyJWT, one algorithm)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from aima.errors import NotAuthenticated
from aima.settings import AuthSettings

ALGORITHM = "HS256"
ACCESS_TOKEN_TYPE = "access"  # noqa: S105 - a token type, not a secret


def password_hasher(settings: AuthSettings) -> PasswordHasher:
    return PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
        type=Type.ID,
    )


def verify_password(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class AccessToken:
    token: str
    expires_at: datetime
    jti: str


@dataclass(frozen=True)
class TokenClaims:
    user_id: uuid.UUID
    jti: str
    expires_at: datetime
    #: When the token was issued, in milliseconds (JWT's `iat` has whole seconds only).
    issued_at_ms: int
    #: The sign-in (refresh-token family) the token belongs to; revoking the family ends the token at once.
    session_id: str | None = None


def issue_access_token(
    settings: AuthSettings, user_id: uuid.UUID, *, session_id: uuid.UUID | None = None, now: datetime | None = None
) -> AccessToken:
    now = now or datetime.now(UTC)
    expires = now + timedelta(minutes=settings.access_token_minutes)
    jti = uuid.uuid4().hex
    claims = {
        "sub": str(user_id),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int(expires.timestamp()),
        "jti": jti,
        "typ": ACCESS_TOKEN_TYPE,
        "iat_ms": int(now.timestamp() * 1000),
    }
    if session_id is not None:
        claims["sid"] = str(session_id)
    token = jwt.encode(
        claims, settings.jwt_secret.get_secret_value(), algorithm=ALGORITHM, headers={"kid": settings.jwt_key_id}
    )
    return AccessToken(token=token, expires_at=expires, jti=jti)


def _verification_key(settings: AuthSettings, kid: object) -> str:
    """The secret for a token's key id: the current key or a previous one still accepted."""
    if kid == settings.jwt_key_id:
        return settings.jwt_secret.get_secret_value()
    if isinstance(kid, str) and kid in settings.jwt_previous_keys:
        return settings.jwt_previous_keys[kid].get_secret_value()
    raise jwt.InvalidTokenError("unknown key id")


def decode_access_token(settings: AuthSettings, token: str) -> TokenClaims:
    """Check signature, algorithm, issuer, audience, time window and type; raise `NotAuthenticated` otherwise."""
    try:
        secret = _verification_key(settings, jwt.get_unverified_header(token).get("kid"))
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "nbf", "iat", "iss", "aud", "sub", "jti"]},
        )
        if claims.get("typ") != ACCESS_TOKEN_TYPE:
            raise jwt.InvalidTokenError("not an access token")
        return TokenClaims(
            user_id=uuid.UUID(claims["sub"]),
            jti=str(claims["jti"]),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            issued_at_ms=int(claims.get("iat_ms") or claims["iat"] * 1000),
            session_id=str(claims["sid"]) if claims.get("sid") else None,
        )
    except (jwt.PyJWTError, ValueError) as exc:
        raise NotAuthenticated("Invalid or expired access token.") from exc
