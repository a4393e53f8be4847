"""Chain of custody: what was received is recorded, repeated bytes are recognised, look-alikes are found,
and originals are read back only through short-lived, audited links."""

from __future__ import annotations

import hashlib
import io

import httpx
from PIL import Image, ImageDraw

from aima.testing.media import make_jpeg, make_wav
from tests.api.conftest import People
from tests.api.test_flow import new_case

CUSTODY = """
query($id: ID!) {
  media(id: $id) {
    custody {
      sha256 sizeBytes contentType uploadedById uploadedByEmail uploadedAt filename ingest verifiedAt legalHold
    }
    nearDuplicates { id }
  }
}
"""
LINK = "mutation($m: ID!) { createDownloadLink(mediaId: $m) { url expiresAt } }"


def picture(seed: int, size: int = 256) -> bytes:
    """A drawing with structure (a perceptual hash needs more than a flat colour)."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for i in range(8):
        shade = (seed * 37 + i * 29) % 256
        box = [(seed * 13 + i * 31) % size, (i * 47 + seed * 7) % size]
        draw.ellipse([box[0], box[1], box[0] + size // 3, box[1] + size // 4], fill=(shade, 255 - shade, i * 30))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def test_custody_record(people: People) -> None:
    case_id = new_case(people.owner, "Custody")
    content = make_wav(seconds=1)
    media = people.owner.upload(case_id, content, filename="call.wav", content_type="video/mp4")["data"]["uploadMedia"]
    custody = people.owner.data(CUSTODY, {"id": media["id"]})["media"]["custody"]
    me = people.owner.data("{ me { id email } }")["me"]
    assert custody["sha256"] == hashlib.sha256(content).hexdigest()
    assert custody["sizeBytes"] == len(content)
    assert custody["contentType"] == "audio/wav"  # sniffed, not what the client declared
    assert (custody["uploadedById"], custody["uploadedByEmail"]) == (me["id"], me["email"])
    assert (custody["filename"], custody["ingest"], custody["verifiedAt"]) == ("call.wav", "multipart", None)
    assert custody["legalHold"] is True  # SeaweedFS supports object lock


def test_the_same_bytes_twice_return_the_first_media(people: People) -> None:
    case_id = new_case(people.owner, "Duplicates")
    content = make_jpeg(width=70)
    first = people.owner.upload(case_id, content, filename="a.jpg")["data"]["uploadMedia"]
    second = people.owner.upload(case_id, content, filename="copy.jpg")["data"]["uploadMedia"]
    assert second["id"] == first["id"] and second["filename"] == "a.jpg"
    listed = people.owner.data("query($c: ID!) { case(id: $c) { media { id } } }", {"c": case_id})["case"]["media"]
    assert len(listed) == 1
    other_case = new_case(people.owner, "Elsewhere")
    elsewhere = people.owner.upload(other_case, content, filename="a.jpg")["data"]["uploadMedia"]
    assert elsewhere["id"] != first["id"]  # each case keeps its own record


def smaller_and_recompressed(content: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(content)).resize((180, 180)).save(out, "JPEG", quality=40)
    return out.getvalue()


def test_near_duplicates_are_found(people: People) -> None:
    case_id = new_case(people.owner, "Look-alikes")
    original = people.owner.upload(case_id, picture(1), filename="p.jpg")["data"]["uploadMedia"]
    copy = smaller_and_recompressed(picture(1))
    recompressed = people.owner.upload(case_id, copy, filename="small.jpg")["data"]["uploadMedia"]
    different = people.owner.upload(case_id, picture(9), filename="other.jpg")["data"]["uploadMedia"]
    near = people.owner.data(CUSTODY, {"id": original["id"]})["media"]["nearDuplicates"]
    assert [m["id"] for m in near] == [recompressed["id"]]
    assert different["id"] not in [m["id"] for m in near]


def test_download_links_are_short_lived_checked_and_audited(people: People) -> None:
    case_id = new_case(people.owner, "Download")
    content = make_jpeg(width=90)
    media = people.owner.upload(case_id, content, filename="evidence.jpg")["data"]["uploadMedia"]
    link = people.owner.data(LINK, {"m": media["id"]})["createDownloadLink"]
    answer = httpx.get(link["url"], timeout=10)
    assert answer.status_code == 200 and answer.content == content
    assert 'filename="evidence.jpg"' in answer.headers.get("content-disposition", "")
    refused = people.other.execute(LINK, {"m": media["id"]})
    assert refused["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    tampered = link["url"].replace("evidence", "evidencf") if "evidence" in link["url"] else link["url"] + "x"
    assert httpx.get(tampered, timeout=10).status_code in (400, 403)
    entries = people.admin.data(
        'query($t: String) { auditLog(action: "media.download", targetId: $t) { actorEmail details } }',
        {"t": media["id"]},
    )["auditLog"]
    assert len(entries) == 1 and entries[0]["details"]["sha256"] == hashlib.sha256(content).hexdigest()
