"""`aima media verify`: originals changed or removed behind AIMA's back are found, reported and audited."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from aima.cli import app
from aima.resources import open_resources
from aima.settings import Settings
from aima.testing.media import make_jpeg, make_wav
from tests.api.conftest import People
from tests.api.test_flow import new_case
from tests.gql import run_sync

CUSTODY = "query($id: ID!) { media(id: $id) { custody { verifiedAt verifiedOk } } }"


def test_verify_finds_changed_and_missing_originals(
    people: People, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    case_id = new_case(people.owner, "Verify")
    upload = people.owner.upload
    intact = upload(case_id, make_jpeg(width=40), filename="intact.jpg")["data"]["uploadMedia"]["id"]
    changed = upload(case_id, make_jpeg(width=41), filename="changed.jpg")["data"]["uploadMedia"]["id"]
    removed = upload(case_id, make_wav(seconds=1), filename="removed.wav")["data"]["uploadMedia"]["id"]

    async def tamper() -> None:
        """Someone with S3 credentials writes over one original and deletes another (a new version, a marker)."""
        async with open_resources(settings, prepare=False) as resources:
            s3, bucket = resources.store._s3, resources.store.bucket
            await s3.put_object(Bucket=bucket, Key=f"cases/{case_id}/media/{changed}/original", Body=b"forged")
            await s3.delete_object(Bucket=bucket, Key=f"cases/{case_id}/media/{removed}/original")

    run_sync(tamper())
    for name, value in settings.child_environment().items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["media", "verify", "--case", case_id])
    assert result.exit_code == 1, result.output
    assert f"CHANGED media {changed}" in result.output and "stored: 6 bytes" in result.output
    assert f"CHANGED media {removed}" in result.output and "missing" in result.output
    assert intact not in result.output
    assert "3 originals checked, 1 intact, 2 changed or missing" in result.output

    custody = {m: people.owner.data(CUSTODY, {"id": m})["media"]["custody"] for m in (intact, changed, removed)}
    assert custody[intact]["verifiedOk"] is True and custody[intact]["verifiedAt"]
    assert custody[changed]["verifiedOk"] is False and custody[removed]["verifiedOk"] is False
    entries = people.admin.data('{ auditLog(action: "media.verify_failed", first: 10) { targetId } }')["auditLog"]
    assert {changed, removed} <= {e["targetId"] for e in entries}
