"""Ray settings that need no cluster: a missing ``ray`` package, bad addresses, how actors share the bound."""

from __future__ import annotations

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


def test_an_unreachable_cluster_is_a_config_error():
    pytest.importorskip("ray")
    from openrft.distributed.cluster import connect

    with pytest.raises(ConfigError) as caught:
        connect("127.0.0.1:1")  # nothing listens there
    assert "cannot connect" in caught.value.message and "ray start --head" in caught.value.hint
