import pytest
from pydantic import ValidationError

from aima.settings import DEV_JWT_SECRET, Settings


def test_defaults_point_at_the_embedded_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AIMA_DATABASE_URL", "AIMA_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIMA_ENVIRONMENT", "development")
    settings = Settings()
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.auth.jwt_secret.get_secret_value() == DEV_JWT_SECRET


def test_production_is_the_default_and_needs_its_own_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIMA_ENVIRONMENT", raising=False)
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        Settings()
    monkeypatch.setenv("AIMA_AUTH__JWT_SECRET", "y" * 40)
    with pytest.raises(ValidationError, match="S3__SECRET_KEY"):
        Settings()
    monkeypatch.setenv("AIMA_S3__SECRET_KEY", "a real secret")
    assert Settings().environment == "production"


def test_nested_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIMA_ENVIRONMENT", "test")
    monkeypatch.setenv("AIMA_S3__BUCKET", "evidence")
    monkeypatch.setenv("AIMA_WORKER__MAX_JOBS", "7")
    settings = Settings()
    assert settings.s3.bucket == "evidence"
    assert settings.worker.max_jobs == 7


def test_production_refuses_the_default_secret() -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        Settings(environment="production")
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(environment="production", auth={"jwt_secret": "short"})
    Settings(environment="production", auth={"jwt_secret": "x" * 40}, s3={"secret_key": "real"})


def test_secrets_are_not_shown() -> None:
    assert DEV_JWT_SECRET not in repr(Settings(environment="test"))
