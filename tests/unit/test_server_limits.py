"""Small contracts of the two servers: an upload's declared sizes against the limit, and which model a
request's name means on `openrft serve`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from openrft.server.errors import ApiError
from openrft.server.uploads import check_declared_sizes


def test_declared_upload_sizes_are_limited_in_all_not_only_each():
    assert check_declared_sizes({"a.jsonl": "600", "b.jsonl": "400"}, 1000, "dataset", (".jsonl",), 64) == {
        "a.jsonl": 600, "b.jsonl": 400}  # fmt: skip
    with pytest.raises(ApiError) as caught:  # each under the limit, together over it
        check_declared_sizes({"a.jsonl": "600", "b.jsonl": "600"}, 1000, "dataset", (".jsonl",), 64)
    assert caught.value.status_code == 413
    for name in ("../a.jsonl", "a\\\\b.jsonl", "a.txt", ""):
        with pytest.raises(ApiError):
            check_declared_sizes({name: "1"}, 1000, "dataset", (".jsonl",), 64)


def test_an_alias_and_no_name_mean_the_served_policy_not_the_base():
    from openrft.rollout.server import ModelHost

    engine = SimpleNamespace(model=SimpleNamespace(), tokenizer=None, stop_token_ids=())
    host = ModelHost(engine, "tiny", "default", aliases=["policy"], base_name="base")
    assert host.resolve("policy") == host.resolve(None) == host.resolve("tiny") == "tiny"
    assert host.resolve("base") == "base"
    with pytest.raises(Exception, match="the model 'other' does not exist"):
        host.resolve("other")
