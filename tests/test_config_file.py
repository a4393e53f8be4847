"""The aima.toml layer: defaults < file < environment < arguments, and a bad file stops the process naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aima.settings import CONFIG_FILE_ENV, ConfigFileError, Settings, explicit_settings

EXAMPLE = """
log_level = "WARNING"
max_upload_bytes = 1048576

[auth]
registration = "approval"
access_token_minutes = 30

[worker]
max_tries = 5
max_jobs = 2
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (CONFIG_FILE_ENV, "AIMA_LOG_LEVEL", "AIMA_MAX_UPLOAD_BYTES", "AIMA_WORKER__MAX_TRIES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIMA_ENVIRONMENT", "test")
    monkeypatch.chdir(tmp_path)  # no ./aima.toml unless a test writes one


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_file_fills_nested_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CONFIG_FILE_ENV, str(write(tmp_path / "custom.toml", EXAMPLE)))
    settings = Settings()
    assert settings.log_level == "WARNING" and settings.max_upload_bytes == 1048576
    assert settings.auth.registration == "approval" and settings.auth.access_token_minutes == 30
    assert settings.auth.refresh_token_days == 14  # untouched keys of a table keep their defaults
    assert (settings.worker.max_tries, settings.worker.max_jobs) == (5, 2)
    assert settings.config_file == tmp_path / "custom.toml"


def test_the_environment_beats_the_file_and_arguments_beat_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CONFIG_FILE_ENV, str(write(tmp_path / "custom.toml", EXAMPLE)))
    monkeypatch.setenv("AIMA_WORKER__MAX_TRIES", "9")
    monkeypatch.setenv("AIMA_LOG_LEVEL", "ERROR")
    settings = Settings(log_level="DEBUG")
    assert settings.worker.max_tries == 9 and settings.worker.max_jobs == 2  # env for one key, file for the other
    assert settings.log_level == "DEBUG"
    layers = explicit_settings(settings)
    assert layers["worker.max_tries"] == "environment" and layers["worker.max_jobs"] == "file"
    assert layers["auth.registration"] == "file" and "auth.refresh_token_days" not in layers


def test_aima_toml_in_the_working_directory_is_read_without_being_named(tmp_path: Path) -> None:
    assert Settings().config_file is None
    write(tmp_path / "aima.toml", EXAMPLE)
    settings = Settings()
    assert settings.config_file == Path("aima.toml") and settings.worker.max_tries == 5


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("log_level = \n", "is not valid TOML"),
        ("max_upload_bytes = 'big'\n", "max_upload_bytes: Input should be a valid integer"),
        ("[auth]\naccess_token_minutes = 0\n", "auth.access_token_minutes: Input should be greater than or equal to 1"),
        ("[auth]\nregistration = 'sometimes'\n", "auth.registration: Input should be 'open', 'approval' or 'closed'"),
        ("max_uplod_bytes = 5\n", "max_uplod_bytes: not a setting"),
        ("[worker]\nmax_trys = 5\n", "worker.max_trys: not a setting"),
        ("auth = 5\n", "auth: must be a table"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, problem: str
) -> None:
    path = write(tmp_path / "bad.toml", text)
    monkeypatch.setenv(CONFIG_FILE_ENV, str(path))
    with pytest.raises(ConfigFileError) as refused:
        Settings()
    assert str(path) in str(refused.value) and problem in str(refused.value)


def test_a_named_file_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CONFIG_FILE_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigFileError, match=r"missing\.toml does not exist"):
        Settings()


def test_production_still_refuses_default_secrets_with_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIMA_ENVIRONMENT", "production")
    monkeypatch.setenv(CONFIG_FILE_ENV, str(write(tmp_path / "custom.toml", EXAMPLE)))
    with pytest.raises(ValueError, match="JWT_SECRET"):
        Settings()
    secrets = write(tmp_path / "secrets.toml", '[auth]\njwt_secret = "' + "s" * 40 + '"\n[s3]\nsecret_key = "real"\n')
    monkeypatch.setenv(CONFIG_FILE_ENV, str(secrets))
    assert Settings().auth.jwt_secret.get_secret_value() == "s" * 40


def test_child_processes_read_the_same_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(tmp_path / "aima.toml", EXAMPLE)
    settings = Settings()
    environment = settings.child_environment()
    assert environment[CONFIG_FILE_ENV] == str(tmp_path / "aima.toml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    child = subprocess.run(
        [sys.executable, "-c", "from aima.settings import Settings; s = Settings(); print(s.auth.registration)"],
        env={"PATH": "/usr/bin:/bin", **environment},
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "approval"
