"""Datasets and evaluators under a hostile client: archive bombs, odd file names, replayed upload URLs,
id probing, deeply nested input, long names. Each is refused with a 400/403/404 in the service's error
shape, and nothing is left half-made (an evaluator can still be deleted afterwards)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import tarfile

import httpx
import pytest
import test_server_resources as resources
from test_server_resources import ACCOUNT, KEY, LIMITS, ROWS, _folder, _targz, _upload_evaluator, _wait_built

from openrft.server import resources_api
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
    with pytest.raises(ArchiveError, match="header .* larger than 4 KB"):
        extract_archive(tmp_path / "bomb.tar.gz", tmp_path / "out", LIMITS)
    (tmp_path / "long.tar.gz").write_bytes(_long_name_archive(4000))
    with pytest.raises(ArchiveError, match="longer than a file system allows"):
        extract_archive(tmp_path / "long.tar.gz", tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()
    error = _upload_evaluator(client, "bomb", bomb)
    assert error is not None and "larger than 4 KB" in str(error.body)
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


def _upload_url(base: str) -> str:
    """The signed URL of ``rows.jsonl`` for a new dataset ``d``."""
    httpx.post(
        f"{base}{API}/datasets", json={"datasetId": "d", "dataset": {}}, headers=AUTH
    ).raise_for_status()
    endpoint = httpx.post(f"{base}{API}/datasets/d:getUploadEndpoint", headers=AUTH,
                          json={"filenameToSize": {"rows.jsonl": str(len(ROWS))}})  # fmt: skip
    return endpoint.json()["filenameToSignedUrls"]["rows.jsonl"]


def test_an_upload_url_takes_one_upload_and_reveals_nothing_without_its_token(server):
    base, _ = server
    url = _upload_url(base)
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


def _pax_archive(headers: int, value_bytes: int, chained_longnames: int = 0) -> bytes:
    """``headers`` members, each with a pax header of about ``value_bytes``; or one member behind
    ``chained_longnames`` GNU long-name headers (tarfile follows each by recursing)."""
    buffer = io.BytesIO()
    if chained_longnames:
        block = tarfile.TarInfo("././@LongLink")
        block.type, block.size = tarfile.GNUTYPE_LONGNAME, 8
        chain = b"".join(
            block.tobuf(tarfile.GNU_FORMAT) + b"x" * 8 + bytes(504) for _ in range(chained_longnames)
        )
        member = tarfile.TarInfo("main.py").tobuf(tarfile.GNU_FORMAT)
        with gzip.GzipFile(fileobj=buffer, mode="wb") as out:
            out.write(chain + member + bytes(1024))
        return buffer.getvalue()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        for i in range(headers):
            info = tarfile.TarInfo(f"f{i}.py")
            info.pax_headers = {"comment": "a" * value_bytes}
            archive.addfile(info, io.BytesIO(b""))
    return buffer.getvalue()


def test_pax_and_long_name_headers_cannot_stall_the_server(tmp_path):
    many = dataclasses.replace(LIMITS, max_archive_members=500)
    cases = [
        (_pax_archive(1, 150_000), "larger than 4 KB"),  # CVE-2024-6232: 24 s of regex on Python < 3.11.10
        (_pax_archive(65, 1000), "more than 64 long-name or pax headers"),
        (_pax_archive(0, 0, chained_longnames=3000), "chains too many"),  # a RecursionError in tarfile
    ]
    for number, (archive, reason) in enumerate(cases):
        (tmp_path / f"{number}.tar.gz").write_bytes(archive)
        with pytest.raises(ArchiveError, match=reason):  # refused before tarfile parses the header
            extract_archive(tmp_path / f"{number}.tar.gz", tmp_path / "out", many)
    (tmp_path / "ok.tar.gz").write_bytes(_pax_archive(40, 900))  # ordinary pax headers are fine
    extract_archive(tmp_path / "ok.tar.gz", tmp_path / "out", LIMITS)
    assert len(list((tmp_path / "out").iterdir())) == 40


def test_stored_fields_are_text_of_bounded_size_and_an_upload_url_takes_one_put_at_a_time(server):
    base, _ = server
    for dataset in ({"displayName": ["a" * 5000]}, {"sourceJobName": "x" * 70_000}):
        created = httpx.post(
            f"{base}{API}/datasets", json={"datasetId": "t", "dataset": dataset}, headers=AUTH
        )
        assert created.status_code == 400, dataset
    url = _upload_url(base)
    resources_api._RECEIVING.add(("datasets", ACCOUNT, "d", "rows.jsonl"))  # another PUT under way
    try:
        assert httpx.put(url, content=ROWS).status_code == 409
    finally:
        resources_api._RECEIVING.clear()
    assert httpx.put(url, content=ROWS).status_code == 200
