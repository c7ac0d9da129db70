"""Datasets and evaluators under a hostile client: archive bombs, odd file names, replayed upload URLs,
id probing, deeply nested input, long names. Each is refused with a 400/403/404 in the service's error
shape, and nothing is left half-made (an evaluator can still be deleted afterwards)."""

from __future__ import annotations

import io
import json
import tarfile

import httpx
import pytest
import test_server_resources as resources
from test_server_resources import ACCOUNT, KEY, LIMITS, ROWS, _folder, _targz, _upload_evaluator, _wait_built

from openrft.server.uploads import ArchiveError, extract_archive

API = f"/v1/accounts/{ACCOUNT}"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def server(tmp_path):
    with resources._serve(resources._app(tmp_path / "home")) as base:
        yield base, tmp_path / "home"


@pytest.fixture
def client(server):
    return resources.fireworks.Fireworks(api_key=KEY, base_url=server[0], account_id=ACCOUNT, max_retries=0)


def _long_name_archive(name_bytes: int) -> bytes:
    """A .tar.gz whose one member has a GNU long name of ``name_bytes`` bytes: a few KB compressed."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("d/" * (name_bytes // 2) + "main.py")
        archive.addfile(info, io.BytesIO(b""))
    return buffer.getvalue()


def test_a_long_name_header_cannot_unpack_past_the_limits(tmp_path, client, server):
    bomb = _long_name_archive(8 * 1024 * 1024)  # read whole by tarfile before any member is seen
    assert len(bomb) < 64 * 1024
    (tmp_path / "bomb.tar.gz").write_bytes(bomb)
    with pytest.raises(ArchiveError, match="header .* larger than 1 MB"):
        extract_archive(tmp_path / "bomb.tar.gz", tmp_path / "out", LIMITS)
    (tmp_path / "long.tar.gz").write_bytes(_long_name_archive(4000))
    with pytest.raises(ArchiveError, match="longer than a file system allows"):
        extract_archive(tmp_path / "long.tar.gz", tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()
    error = _upload_evaluator(client, "bomb", bomb)
    assert error is not None and "larger than 1 MB" in str(error.body)
    meta = (_folder(server[1], "evaluators", "bomb") / "meta.json").read_text()
    assert len(meta) < 4000 and str(server[1]) not in meta  # no huge name, no server path


@pytest.mark.parametrize(
    "files",
    [{".": "x"}, {"a": "x", "a/b.py": "x"}, {"x\x00.py": "x"}, {"n" * 300 + ".py": "x"}],
    ids=["dot", "file-and-folder", "nul", "long"],
)
def test_odd_snippet_names_are_refused_and_the_evaluator_stays_deletable(server, files):
    base, _ = server
    criteria = [{"type": "CODE_SNIPPETS", "codeSnippets": {"entryFile": "main.py", "entryFunc": "evaluate",
                                                           "fileContents": files}}]  # fmt: skip
    body = {"evaluatorId": "odd", "evaluator": {"criteria": criteria}}
    created = httpx.post(f"{base}{API}/evaluatorsV2", json=body, headers=AUTH)
    assert created.status_code == 400 and created.json()["error"]["status"] == "INVALID_ARGUMENT"
    deleted = httpx.delete(f"{base}{API}/evaluators/odd", headers=AUTH)
    assert deleted.status_code in (200, 404), deleted.text  # never "being built" for good


def test_an_upload_url_takes_one_upload_and_reveals_nothing_without_its_token(server):
    base, _ = server
    httpx.post(
        f"{base}{API}/datasets", json={"datasetId": "d", "dataset": {}}, headers=AUTH
    ).raise_for_status()
    endpoint = httpx.post(f"{base}{API}/datasets/d:getUploadEndpoint", headers=AUTH,
                          json={"filenameToSize": {"rows.jsonl": str(len(ROWS))}})  # fmt: skip
    url = endpoint.json()["filenameToSignedUrls"]["rows.jsonl"]
    assert httpx.put(url, content=ROWS).status_code == 200
    again = httpx.put(url, content=ROWS)  # replayed (a proxy's log, a shell history)
    assert again.status_code == 403 and "used already" in again.json()["error"]["message"]
    known = httpx.put(f"{base}{API}/datasets/d:signedUpload?token=guess", content=b"")
    unknown = httpx.put(f"{base}{API}/datasets/nosuch:signedUpload?token=guess", content=b"")
    assert known.status_code == unknown.status_code == 403 and known.json() == unknown.json()
    for name in ("x\x00.jsonl", "n" * 300 + ".jsonl"):
        declared = httpx.post(f"{base}{API}/datasets/d:getUploadEndpoint", headers=AUTH,
                              json={"filenameToSize": {name: "1"}})  # fmt: skip
        assert declared.status_code == 400, name
    assert httpx.post(f"{base}{API}/datasets/d:validateUpload", json={}, headers=AUTH).status_code == 200
    download = httpx.get(f"{base}{API}/datasets/d:getDownloadEndpoint", headers=AUTH)
    signed = next(iter(download.json()["filenameToSignedUrls"].values()))
    httpx.delete(f"{base}{API}/datasets/d", headers=AUTH).raise_for_status()
    assert httpx.get(signed).status_code == 404  # deleted since: not a 500


def test_nested_input_and_long_names_are_400s_in_the_services_shape(server):
    base, _ = server
    for filter_ in ("(" * 3000 + "state=x" + ")" * 3000, "NOT " * 3000 + "state=x", "-" * 3000 + "state=x"):
        listed = httpx.get(f"{base}{API}/datasets", params={"filter": filter_}, headers=AUTH)
        assert listed.status_code == 400 and "filter" in listed.json()["error"]["message"]
    nested = httpx.post(f"{base}{API}/datasets", content="[" * 100000, headers=AUTH)
    assert nested.status_code == 400 and nested.json()["error"]["message"].endswith("not valid JSON")
    long = {"datasetId": "named", "dataset": {"displayName": "x" * 5000}}
    refused = httpx.post(f"{base}{API}/datasets", json=long, headers=AUTH)
    assert refused.status_code == 400 and "at most 1000" in refused.json()["error"]["message"]


def test_build_messages_name_files_as_in_the_archive(client, server):
    assert _upload_evaluator(client, "broken", _targz({"main.py": b"def evaluate(:\n"})) is None
    built = _wait_built(client, "broken")
    assert built.state == "BUILD_FAILED" and "main.py" in built.status.message
    assert str(server[1]) not in json.dumps(built.to_dict()) and ".unpacked" not in built.status.message
