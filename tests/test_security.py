import base64
import hashlib
import hmac
import json
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
    signed = jwt.encode(claims, AUTH.jwt_secret.get_secret_value(), algorithm="HS256", headers={"kid": "k1"})
    decode_access_token(AUTH, signed)  # the same claims, unchanged and signed right, pass: the mutation is refused
    forged = jwt.encode(mutate(claims), AUTH.jwt_secret.get_secret_value(), algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(NotAuthenticated):
        decode_access_token(AUTH, forged)


def test_unsigned_and_foreign_tokens_are_refused() -> None:
    claims = jwt.decode(issue_access_token(AUTH, uuid.uuid4()).token, options={"verify_signature": False})
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "k1"})
    with pytest.raises(NotAuthenticated):
        decode_access_token(AUTH, unsigned)
    foreign = jwt.encode(claims, "another-secret-of-sufficient-length-000", algorithm="HS256", headers={"kid": "k1"})
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


def test_keys_rotate_by_key_id() -> None:
    old = AuthSettings(jwt_secret="old-secret-of-sufficient-length-0000000", jwt_key_id="k1")
    token = issue_access_token(old, uuid.uuid4()).token
    assert jwt.get_unverified_header(token)["kid"] == "k1"
    rotated = AuthSettings(
        jwt_secret="new-secret-of-sufficient-length-0000000",
        jwt_key_id="k2",
        jwt_previous_keys={"k1": "old-secret-of-sufficient-length-0000000"},
    )
    decode_access_token(rotated, token)  # old tokens still verify during the rotation
    assert jwt.get_unverified_header(issue_access_token(rotated, uuid.uuid4()).token)["kid"] == "k2"
    retired = AuthSettings(jwt_secret="new-secret-of-sufficient-length-0000000", jwt_key_id="k2")
    with pytest.raises(NotAuthenticated):
        decode_access_token(retired, token)


def test_tokens_without_or_with_unknown_key_ids_are_refused() -> None:
    claims = jwt.decode(issue_access_token(AUTH, uuid.uuid4()).token, options={"verify_signature": False})
    secret = AUTH.jwt_secret.get_secret_value()
    for headers in (None, {"kid": "k9"}, {"kid": ""}):
        with pytest.raises(NotAuthenticated):
            decode_access_token(AUTH, jwt.encode(claims, secret, algorithm="HS256", headers=headers))


def test_other_algorithms_are_refused_even_with_the_right_key() -> None:
    """Key confusion: a token claiming another HMAC or an asymmetric algorithm is not accepted."""
    claims = jwt.decode(issue_access_token(AUTH, uuid.uuid4()).token, options={"verify_signature": False})
    secret = AUTH.jwt_secret.get_secret_value()
    for algorithm in ("HS384", "HS512"):
        token = jwt.encode(claims, secret, algorithm=algorithm, headers={"kid": "k1"})
        with pytest.raises(NotAuthenticated):
            decode_access_token(AUTH, token)
    header = base64.urlsafe_b64encode(json.dumps({"alg": "RS256", "kid": "k1", "typ": "JWT"}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    signing_input = header + b"." + body
    mac = base64.urlsafe_b64encode(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(NotAuthenticated):
        decode_access_token(AUTH, (signing_input + b"." + mac).decode())
