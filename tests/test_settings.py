import pytest
from pydantic import ValidationError

from aima.settings import DEV_JWT_SECRET, Settings


def test_defaults_point_at_the_embedded_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AIMA_DATABASE_URL", "AIMA_REDIS_URL", "AIMA_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.environment == "development"
    assert settings.auth.jwt_secret.get_secret_value() == DEV_JWT_SECRET


def test_nested_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIMA_S3__BUCKET", "evidence")
    monkeypatch.setenv("AIMA_WORKER__MAX_JOBS", "7")
    settings = Settings()
    assert settings.s3.bucket == "evidence"
    assert settings.worker.max_jobs == 7


def test_production_refuses_the_default_secret() -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        Settings(environment="production")
    Settings(environment="production", auth={"jwt_secret": "x" * 40})


def test_secrets_are_not_shown() -> None:
    assert DEV_JWT_SECRET not in repr(Settings())
