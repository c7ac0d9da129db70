"""Datasets and evaluators through the whole ``openrft server``: its own app (auth, error handlers,
home), and a real server process serving HTTPS to the SDK's shard-upload helper.

The resources' flows one by one are in test_server_resources.py, whose helpers these reuse.
"""

from __future__ import annotations

import socket
import time

import fireworks
import pytest
from test_server_resources import ACCOUNT, KEY, ROWS, _folder, _serve, _targz, _upload_evaluator, _wait_built

from openrft.server.resources_api import dataset_path, evaluator_spec


def test_through_the_servers_own_app(tmp_path):
    """The same flows through ``create_app`` (its auth, error handlers and home)."""
    from openrft.server.app import create_app
    from openrft.server.settings import ServerSettings

    home = tmp_path / "home"
    app = create_app(ServerSettings(home=home, api_keys=(KEY,), run_queue=False))
    with _serve(app) as base:
        client = fireworks.Fireworks(api_key=KEY, base_url=base, account_id=ACCOUNT, max_retries=0)
        client.datasets.create(dataset_id="rows", dataset={"format": "CHAT"})
        client.datasets.upload("rows", file=("rows.jsonl", ROWS))
        assert dataset_path(ACCOUNT, "accounts/acct/datasets/rows") == str(
            _folder(home, "datasets", "rows") / "data.jsonl"
        )
        archive = _targz({"main.py": b"def reward(completion, **row):\n    return 1.0\n"})
        assert _upload_evaluator(client, "one", archive, entry_point="main.py::reward") is None
        assert _wait_built(client, "one").state == "ACTIVE"
        assert evaluator_spec(ACCOUNT, "accounts/acct/evaluators/one").startswith(str(home.resolve()))
        with pytest.raises(fireworks.BadRequestError) as err:
            client.datasets.create(dataset_id="bad id!", dataset={})
        assert err.value.body["error"]["status"] == "INVALID_ARGUMENT"


def test_the_sdk_shard_helper_uploads_to_a_server_serving_https(tmp_path):
    """``openrft server --ssl-certfile/--ssl-keyfile``: signed URLs are https, so the SDK's own
    ``upload_dataset_shards`` (which refuses http URLs) uploads a folder of shards."""
    import os
    import shutil
    import subprocess
    import sys

    from fireworks.lib.dataset_upload import upload_dataset_shards

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OPENRFT_HOME": str(tmp_path / "home"), "SSL_CERT_FILE": str(cert)}
    command = [sys.executable, "-m", "openrft.cli", "server", "--port", str(port), "--api-key", KEY,
               "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        os.environ["SSL_CERT_FILE"] = str(cert)  # the SDK's and the helper's httpx clients trust it
        client = fireworks.Fireworks(api_key=KEY, base_url=f"https://127.0.0.1:{port}", account_id=ACCOUNT)
        deadline = time.time() + 60
        while True:
            try:
                client.datasets.list()
                break
            except fireworks.APIConnectionError:
                assert server.poll() is None and time.time() < deadline, server.stdout.read()
                time.sleep(0.3)
        shards = tmp_path / "shards"
        shards.mkdir()
        for i, line in enumerate(ROWS.splitlines(keepends=True)):
            (shards / f"part-{i}.jsonl").write_bytes(line)
        client.datasets.create(dataset_id="tls", dataset={"format": "CHAT"})
        upload_dataset_shards(client, "tls", str(shards))
        assert client.datasets.get("tls").state == "READY"
        stored = tmp_path / "home" / "server" / "datasets" / ACCOUNT / "tls" / "data.jsonl"
        assert stored.read_bytes() == ROWS
    finally:
        os.environ.pop("SSL_CERT_FILE", None)
        server.terminate()  # stops within its graceful-shutdown bound though the SDK keeps a connection
        server.wait(timeout=30)
