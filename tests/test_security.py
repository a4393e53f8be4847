import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from aima.errors import NotAuthenticated
from aima.security import decode_access_token, issue_access_token, password_hasher, verify_password
from aima.settings import AuthSettings

AUTH = AuthSettings()


def test_token_round_trip() -> None:
    user_id = uuid.uuid4()
    token = issue_access_token(AUTH, user_id)
    claims = decode_access_token(AUTH, token.token)
    assert claims.user_id == user_id
    assert claims.jti == token.jti


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: {**c, "aud": "someone-else"}, id="wrong-audience"),
        pytest.param(lambda c: {**c, "iss": "someone-else"}, id="wrong-issuer"),
        pytest.param(lambda c: {**c, "exp": int((datetime.now(UTC) - timedelta(minutes=1)).timestamp())}, id="expired"),
        pytest.param(
            lambda c: {**c, "nbf": int((datetime.now(UTC) + timedelta(minutes=5)).timestamp())}, id="not-yet-valid"
        ),
        pytest.param(lambda c: {**c, "typ": "refresh"}, id="wrong-type"),
        pytest.param(lambda c: {k: v for k, v in c.items() if k != "jti"}, id="no-jti"),
    ],
)
def test_tokens_with_bad_claims_are_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    claims = jwt.decode(issue_access_token(AUTH, uuid.uuid4()).token, options={"verify_signature": False})
    forged = jwt.encode(mutate(claims), AUTH.jwt_secret.get_secret_value(), algorithm="HS256")
    with pytest.raises(NotAuthenticated):
        decode_access_token(AUTH, forged)


def test_unsigned_and_foreign_tokens_are_refused() -> None:
    claims = jwt.decode(issue_access_token(AUTH, uuid.uuid4()).token, options={"verify_signature": False})
    unsigned = jwt.encode(claims, None, algorithm="none")
    with pytest.raises(NotAuthenticated):
        decode_access_token(AUTH, unsigned)
    foreign = jwt.encode(claims, "another-secret-of-sufficient-length-000", algorithm="HS256")
    with pytest.raises(NotAuthenticated):
        decode_access_token(AUTH, foreign)
    with pytest.raises(NotAuthenticated):
        decode_access_token(AUTH, "not a token")


def test_passwords_are_hashed_with_argon2id() -> None:
    hasher = password_hasher(AUTH)
    hashed = hasher.hash("correct horse battery staple")
    assert hashed.startswith("$argon2id$")
    assert "m=19456,t=2,p=1" in hashed
    assert verify_password(hasher, hashed, "correct horse battery staple")
    assert not verify_password(hasher, hashed, "wrong password!!")
    assert not verify_password(hasher, "garbage", "anything")
