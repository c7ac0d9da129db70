"""The servers under load and probing a security review tried: concurrent creates on a fresh server
(the first check imports transformers, which fails when two threads import it at once), oversized
chat requests to ``openrft serve``, key checks that a path suffix could skip, the server's keys in the
environment its evaluators run in, and the dashboard's login cookie."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

RACE = textwrap.dedent(
    """
    import collections, sys, threading
    from fastapi.testclient import TestClient
    from openrft.server.app import create_app
    from openrft.server.settings import ServerSettings

    assert "transformers" not in sys.modules  # the import the creates race for
    app = create_app(ServerSettings(home=sys.argv[1], run_queue=False))
    seen = collections.Counter()
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        def create(i):
            reply = client.post("/v1/accounts/a/reinforcementFineTuningJobs",
                                params={"reinforcementFineTuningJobId": f"r{i}"},
                                json={"dataset": "arithmetic:count=8", "evaluator": "arithmetic"})
            seen[reply.status_code] += 1
        threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    print(dict(seen))
    """
)


def test_concurrent_creates_on_a_fresh_server_are_all_accepted(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", RACE, str(tmp_path / "home")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "{200: 6}", done.stderr[-2000:]


def test_serve_refuses_a_body_past_its_limit_before_reading_it_and_takes_chunked_bodies(tokenizer):
    from test_agents import ScriptedEngine

    from openrft.rollout.server import BackgroundServer, create_app, request_limit

    engine = ScriptedEngine(tokenizer, "Hello.")
    engine.max_positions = 8192
    assert request_limit(8192) == 4 << 20 and request_limit(None) == 64 << 20
    chat = {"model": "policy", "max_tokens": 4, "messages": [{"role": "user", "content": "x" * (5 << 20)}]}
    big = json.dumps(chat).encode()
    small = json.dumps({**chat, "messages": [{"role": "user", "content": "Hi."}]}).encode()

    def chunks(body: bytes):
        yield from (body[i : i + 65536] for i in range(0, len(body), 65536))

    with BackgroundServer(create_app(engine, "policy")) as server, httpx.Client(timeout=60) as client:
        url = server.url + "/chat/completions"
        for content in (big, chunks(big)):  # declared, then sent in chunks with no length
            reply = client.post(url, content=content, headers={"content-type": "application/json"})
            assert reply.status_code == 413, reply.text
            assert reply.json()["error"]["code"] == "request_too_large" and "4 MiB" in reply.text
        for content in (small, chunks(small)):
            reply = client.post(url, content=content, headers={"content-type": "application/json"})
            assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "Hello."


def _keyed(tmp_path):
    from openrft.server.app import create_app
    from openrft.server.settings import ServerSettings

    return create_app(ServerSettings(home=tmp_path / "home", api_keys=("right-key",), run_queue=False))


def test_a_path_ending_like_a_signed_url_still_needs_a_key(tmp_path):
    from fastapi.testclient import TestClient

    with TestClient(_keyed(tmp_path), base_url="http://127.0.0.1") as client:
        api = client.get("/v1/accounts/a/reinforcementFineTuningJobs/anyjob:signedDownload?xtoken=1")
        assert api.status_code == 401, api.text
        page = client.get("/jobs/anyjob:signedDownload?token=1", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        # the real signed routes still go by their own token (a wrong one: 403, not 401)
        signed = client.get("/v1/accounts/a/datasets/d1:signedDownload?token=forged&file=data.jsonl")
        assert signed.status_code != 401, signed.text


def test_wrong_keys_are_limited_per_client_and_the_login_cookie_is_secure_on_https(tmp_path):
    from fastapi.testclient import TestClient

    from openrft.server.auth import MAX_FAILURES

    app = _keyed(tmp_path)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        jobs = "/v1/accounts/a/reinforcementFineTuningJobs"
        for _ in range(MAX_FAILURES // 2):
            assert client.get(jobs, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert client.post("/login", data={"key": "wrong"}).status_code == 401
        for key in ("wrong", "right-key"):  # locked out: even the right key waits
            reply = client.get(jobs, headers={"Authorization": f"Bearer {key}"})
            assert reply.status_code == 429 and int(reply.headers["retry-after"]) >= 1, reply.text
        assert client.post("/login", data={"key": "right-key"}).status_code == 429
        other = TestClient(app, base_url="http://127.0.0.1", client=("10.0.0.9", 5000))
        assert other.get(jobs, headers={"Authorization": "Bearer right-key"}).status_code == 200
    with TestClient(_keyed(tmp_path / "tls"), base_url="https://127.0.0.1") as client:
        cookie = client.post("/login", data={"key": "right-key"}, follow_redirects=False).headers
        assert "secure" in cookie["set-cookie"].lower() and "httponly" in cookie["set-cookie"].lower()
    with TestClient(_keyed(tmp_path / "plain"), base_url="http://127.0.0.1") as client:
        cookie = client.post("/login", data={"key": "right-key"}, follow_redirects=False).headers
        assert "secure" not in cookie["set-cookie"].lower()


def test_the_server_takes_its_keys_out_of_the_environment_its_evaluators_see(monkeypatch):
    import argparse

    from openrft.cli.server import server_settings

    monkeypatch.setenv("OPENRFT_API_KEYS", "k1,k2")
    monkeypatch.setenv("OPENRFT_API_KEY", "k1")
    args = argparse.Namespace(
        host=None, port=None, api_key=["k0"], max_running_jobs=1, allow_local_paths=False
    )
    assert server_settings(args).api_keys == ("k0", "k1", "k2")
    assert "OPENRFT_API_KEYS" not in os.environ and "OPENRFT_API_KEY" not in os.environ


def test_an_upload_cut_off_by_its_client_is_not_logged_as_a_server_error(tmp_path):
    import logging
    import socket
    import time

    from test_server_resources import _serve

    from openrft.server.app import create_app
    from openrft.server.settings import ServerSettings

    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.ERROR)
    handler.emit = records.append
    try:
        app = create_app(ServerSettings(home=tmp_path / "home", run_queue=False))
        with _serve(app) as base:
            # added once it runs: uvicorn resets its loggers as it starts
            logging.getLogger("uvicorn.error").addHandler(handler)
            body = {"datasetId": "cut", "dataset": {"displayName": "cut", "format": "CHAT"}}
            assert httpx.post(base + "/v1/accounts/a/datasets", json=body).status_code == 200
            port = int(base.rsplit(":", 1)[1])
            part = b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n{"messages": []}\n'
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(
                    b"POST /v1/accounts/a/datasets/cut:upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 100000\r\n\r\n" + part
                )
            time.sleep(1)
            state = httpx.get(base + "/v1/accounts/a/datasets/cut").json()["state"]
        assert state == "UPLOADING"  # nothing half-made
        assert not records, [r.getMessage() for r in records]
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc/PID/environ (Linux)")
def test_keys_given_in_the_environment_never_stay_readable_in_the_servers_starting_environment(tmp_path):
    """A process's starting environment is readable by every process of its user (an evaluator too)
    however os.environ changes later: the server starts itself again without the keys."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OPENRFT_HOME": str(tmp_path / "home"), "OPENRFT_API_KEYS": "alice-key,bob-key",
           "OPENRFT_API_KEY": "alice-key"}  # fmt: skip
    server = subprocess.Popen([sys.executable, "-m", "openrft.cli", "server", "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    jobs = f"http://127.0.0.1:{port}/v1/accounts/bob/reinforcementFineTuningJobs"
    try:
        deadline = time.time() + 60
        while True:
            try:
                answer = httpx.get(jobs, headers={"Authorization": "Bearer bob-key"})
                break
            except httpx.TransportError:
                assert server.poll() is None and time.time() < deadline, server.communicate()[0]
                time.sleep(0.2)
        assert answer.status_code == 200  # the keys reached the started-again server ...
        assert httpx.get(jobs, headers={"Authorization": "Bearer wrong"}).status_code == 401
        environ = Path(f"/proc/{server.pid}/environ").read_bytes()  # ... and its environment holds none
        assert b"alice-key" not in environ and b"bob-key" not in environ
        assert b"OPENRFT_API_KEYS=" not in environ and b"OPENRFT_API_KEY=" not in environ
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_second_server_on_the_same_home_is_refused_and_names_the_first(tmp_path, monkeypatch, capsys):
    import socket

    from openrft.cli import main

    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    env = {**os.environ, "OPENRFT_HOME": str(tmp_path / "home")}
    first = subprocess.Popen([sys.executable, "-m", "openrft.cli", "server", "--port", str(ports[0])], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline, lock = time.time() + 60, tmp_path / "home" / "server.lock"
        while not (lock.exists() and b"pid" in lock.read_bytes()):
            assert first.poll() is None and time.time() < deadline, "the first server did not take the lock"
            time.sleep(0.2)
        monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "home"))
        assert main(["server", "--port", str(ports[1])]) == 1
        err = capsys.readouterr().err
        assert f"another openrft server already serves {tmp_path / 'home'}: pid {first.pid} at " in err, err
    finally:
        first.terminate()
        first.wait(timeout=30)
    assert "server.lock" in {p.name for p in (tmp_path / "home").iterdir()}  # left: a stale one locks nothing


def test_a_forwarded_for_header_does_not_reset_the_wrong_key_limit_unless_a_proxy_is_named(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OPENRFT_HOME": str(tmp_path / "home")}
    server = subprocess.Popen([sys.executable, "-m", "openrft.cli", "server", "--port", str(port), "--api-key",
                               "right"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    jobs = f"http://127.0.0.1:{port}/v1/accounts/x/reinforcementFineTuningJobs"
    try:
        deadline = time.time() + 60
        while True:
            try:
                httpx.get(jobs, headers={"Authorization": "Bearer right"})
                break
            except httpx.TransportError:
                assert server.poll() is None and time.time() < deadline, "the server did not start"
                time.sleep(0.2)
        for i in range(20):  # each posing as another client: still this connection's address
            wrong = {"Authorization": "Bearer wrong", "X-Forwarded-For": f"10.0.0.{i}"}
            assert httpx.get(jobs, headers=wrong).status_code == 401
        posing = {"Authorization": "Bearer right", "X-Forwarded-For": "10.0.0.99"}
        assert httpx.get(jobs, headers=posing).status_code == 429
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_server_makes_its_memory_unreadable_to_its_users_other_processes():
    probe = (
        "import ctypes, ctypes.util\n"
        "from openrft.cli.server import keep_memory_private\n"
        "libc = ctypes.CDLL(ctypes.util.find_library('c'))\n"
        "before = libc.prctl(3, 0, 0, 0, 0)\n"  # PR_GET_DUMPABLE
        "print(before, keep_memory_private(), libc.prctl(3, 0, 0, 0, 0))\n"
    )
    said = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert said.split() == ["1", "True", "0"]  # /proc/PID/mem and ptrace closed to same-user processes
