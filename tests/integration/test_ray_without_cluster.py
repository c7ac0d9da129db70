"""Ray settings that need no cluster: a missing ``ray`` package, bad addresses, how actors share the bound."""

from __future__ import annotations

import os
import sys

import pytest

from openrft.config import build_config
from openrft.distributed.engine import parcel_size, plan_workers
from openrft.errors import ConfigError


@pytest.mark.parametrize(
    ("workers", "concurrency", "expected"),
    [(2, None, (2, None)), (2, 64, (2, 32)), (3, 10, (3, 3)), (4, 2, (2, 1)), (1, 7, (1, 7))],
)
def test_actors_share_the_in_flight_bound(workers, concurrency, expected):
    actors, per_actor = plan_workers(workers, concurrency)
    assert (actors, per_actor) == expected
    if concurrency:
        assert actors * per_actor <= concurrency


@pytest.mark.parametrize(
    ("prompts", "n", "actors", "in_flight", "expected"),
    [
        (8, 4, 1, 32, 8),  # one actor: the whole call, its batch stays full
        (8, 4, 2, 16, 4),  # every actor gets work before any gets a second parcel
        (200, 8, 2, 32, 25),  # a big round: about 4 parcels per actor
        (40, 8, 2, 32, 8),  # ... but each holds 2 batches' worth of sequences
        (3, 8, 4, 64, 1),
    ],
)
def test_parcels_keep_actors_busy_and_balanced(prompts, n, actors, in_flight, expected):
    assert parcel_size(prompts, n, actors, in_flight) == expected


def test_without_ray_a_job_with_an_address_says_how_to_install_it(monkeypatch, tiny_model):
    from openrft.distributed import ray_engine, ray_scorer
    from openrft.evaluators import load_evaluator
    from openrft.train.setup import make_scorer

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    settings = build_config({}, {"ray_address": "local"})[0].settings()
    model, tokenizer = tiny_model
    evaluator = load_evaluator("arithmetic")
    builds = (
        lambda: ray_engine(settings.engine.ray, "local", model, tokenizer, "tiny", None),
        lambda: ray_scorer("local", evaluator, max_concurrent_evaluations=None, timeout=5.0),
    )
    for build in builds:
        with pytest.raises(ConfigError) as caught:
            build()
        assert caught.value.field == "ray_address" and "openrft[ray]" in caught.value.hint
    with pytest.raises(ConfigError, match="needs the 'ray' package"):
        make_scorer(settings.engine, evaluator)  # the job's scorer goes through Ray when an address is set


def test_an_unreachable_cluster_is_a_config_error(monkeypatch):
    pytest.importorskip("ray")
    from openrft.distributed.cluster import connect

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t" * 32)  # a cluster token at hand: the mode is set to send it
    with pytest.raises(ConfigError) as caught:
        connect("127.0.0.1:1")  # nothing listens there
    assert "cannot connect" in caught.value.message and "ray start --head" in caught.value.hint
    assert "token" in caught.value.hint  # Ray reports a refused token as a failed connection
    # left set, a later --ray-address local in this process would fail with InvalidAuthToken
    assert "RAY_AUTH_MODE" not in os.environ


def test_the_token_mode_reaches_ray_before_it_connects(monkeypatch):
    """Ray reads RAY_AUTH_MODE when imported: set later, it must be read again, or a cluster started with
    token authentication (Ray's default) never gets the token and refuses the connection."""
    ray = pytest.importorskip("ray")
    from ray._raylet import AuthenticationMode, get_authentication_mode

    import openrft.distributed.cluster as cluster

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t" * 32)
    seen = []

    def init(**options):
        seen.append(get_authentication_mode())
        raise ConnectionError("the head refused it")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(cluster, "_check_reachable", lambda ray, address: None)
    with pytest.raises(ConfigError):
        cluster.connect("127.0.0.1:6379")
    assert seen == [AuthenticationMode.TOKEN]  # what ray.init sent with
    assert get_authentication_mode() != AuthenticationMode.TOKEN  # and undone once it failed


def test_a_cluster_that_wants_a_token_this_machine_lacks_says_so(monkeypatch, tmp_path):
    ray = pytest.importorskip("ray")
    import openrft.distributed.cluster as cluster

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))  # no token anywhere

    def init(**options):
        raise ray.exceptions.AuthenticationError("Unauthenticated")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(cluster, "_check_reachable", lambda ray, address: None)
    with pytest.raises(ConfigError, match="refused this machine, which has no token"):
        cluster.connect("127.0.0.1:6379")


def test_a_port_that_does_not_speak_grpc_fails_at_once_naming_the_right_ports():
    pytest.importorskip("ray")
    import http.server
    import threading
    import time

    from openrft.distributed.cluster import connect

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    start = time.monotonic()
    try:
        with pytest.raises(ConfigError, match="not a Ray head's GCS port .*6379.*ray://"):
            connect(f"127.0.0.1:{server.server_address[1]}")  # a dashboard-like HTTP/1 server
    finally:
        server.shutdown()
    assert time.monotonic() - start < 10


def test_local_is_a_private_instance_and_openrft_keeps_its_sigterm_handler(monkeypatch):
    import signal
    import types

    from openrft.distributed.cluster import connect

    calls = []

    def init(**options):  # as ray.init does: it installs a SIGTERM handler that kills the process
        calls.append(options)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a cluster this machine belongs to

    def ours(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, ours)
    try:
        connect("local", num_cpus=2)
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert calls[0]["address"] == "local" and calls[0]["num_cpus"] >= 2


def test_actors_are_sized_to_fit_the_nodes_and_a_busy_cluster_is_announced(capsys):
    import types

    from openrft.distributed.cluster import check_capacity
    from openrft.distributed.engine import _actor_resources

    def cluster(cpus, free):
        nodes = [{"Alive": True, "Resources": {"CPU": float(c)}} for c in cpus]
        return types.SimpleNamespace(nodes=lambda: nodes, cluster_resources=lambda: {"CPU": float(sum(cpus))},
                                     available_resources=lambda: {"CPU": float(free)})  # fmt: skip

    uneven = cluster([5, 2, 2], free=9)
    assert _actor_resources(uneven, "local", 2) == {"CPU": 2.0, "GPU": 0.0}  # 4 each would fit one node only
    check_capacity(uneven, 2, {"CPU": 2.0})
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match="nodes have room for 1 such workers"):
        check_capacity(uneven, 2, {"CPU": 4.0})
    with pytest.raises(ConfigError, match="needs 12 CPUs on the Ray cluster"):
        check_capacity(uneven, 3, {"CPU": 4.0})
    check_capacity(cluster([2], free=0), 2, {"CPU": 1.0})  # fits, but other work holds the CPUs now
    assert (
        "Ray: waiting for 2 CPUs for the rollout actors; 0 of the cluster's 2 are free now"
        in capsys.readouterr().err
    )


def test_actors_never_sample_without_the_adapter_and_evaluations_use_the_current_one():
    """--max-staleness lets actors lag behind the trainer, but never back to the bare base model (a
    warm-start or resumed adapter is loaded), and an evaluation always samples the current adapter."""
    from types import SimpleNamespace

    from openrft.distributed.engine import RayEngine
    from openrft.train.rounds import evaluate

    assert RayEngine.oldest_version(SimpleNamespace(policy_version=0, max_staleness=2)) == 0
    assert RayEngine.oldest_version(SimpleNamespace(policy_version=5, max_staleness=2)) == 3

    class Engine:
        max_staleness = 2

        def generate(self, prompts, params):
            self.seen = self.max_staleness
            return [[] for _ in prompts]

    engine = Engine()
    evaluate(engine, lambda prompts, completions: [[] for _ in prompts], ["p"], None)
    assert engine.seen == 0 and engine.max_staleness == 2


@pytest.mark.parametrize("address", ["host:26379x", "justhost", "ray://nohost"])
def test_an_address_that_is_not_one_is_refused_at_creation(address):
    from openrft.config import build_config

    with pytest.raises(ConfigError, match="is not an address"):
        build_config({}, {"ray_address": address})


@pytest.mark.parametrize("flag", [{"rollout_workers": 3}, {"max_staleness": 1}])
def test_ray_settings_without_a_cluster_are_refused(flag):
    from openrft.config import build_config

    with pytest.raises(ConfigError, match="applies to a Ray cluster: give --ray-address too"):
        build_config({}, flag)
    build_config({}, {**flag, "ray_address": "local"})  # with a cluster they are taken


def test_an_unreachable_cluster_is_refused_at_creation_leaving_no_job(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    from openrft.cli import main

    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "home"))
    flags = ["rftj", "create", "--dataset", "arithmetic:count=4", "--ray-address", "127.0.0.1:1"]
    for extra in (["--dry-run"], ["--job-id", "typo"]):
        assert main([*flags, *extra]) == 2
        assert capsys.readouterr().err.startswith(
            "--ray-address 127.0.0.1:1: cannot connect to a Ray cluster"
        )
    assert not (tmp_path / "home" / "jobs" / "typo").exists()
