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


def test_a_cut_response_streams_as_incomplete():
    from openrft.rollout.responses_stream import response_events

    body = {"id": "resp_1", "object": "response", "status": "incomplete", "output": [],
            "incomplete_details": {"reason": "max_output_tokens"}}  # fmt: skip
    events = list(response_events(body))
    assert events[0].startswith("event: response.created") and events[-1].startswith(
        "event: response.incomplete"
    )


def test_an_engine_that_loads_adapter_files_moves_to_each_policy_and_lets_the_last_go():
    from pathlib import Path

    from openrft.rollout.adapters import LoadsAdapterFiles

    class Engine(LoadsAdapterFiles):
        def __init__(self):
            self.loaded, self.unloaded, self.policy_version, self._policy_adapter = [], [], 0, None

        def load_adapter(self, path, name):
            self.loaded.append(name)

        def unload_adapter(self, name):
            self.unloaded.append(name)

    engine = Engine()
    engine.set_policy(3, Path("/ckpt/step-3"))
    engine.set_policy(4, Path("/ckpt/step-4"))
    assert (
        engine.policy_version == 4 and engine.loaded == ["step-3", "step-4"] and engine.unloaded == ["step-3"]
    )


def test_an_upload_of_exactly_the_limit_is_kept_and_one_byte_more_is_refused(tmp_path):
    import asyncio

    from openrft.server.uploads import save_stream

    async def chunks(sizes):
        for size in sizes:
            yield b"x" * size

    assert asyncio.run(save_stream(chunks([600, 400]), tmp_path / "a.jsonl", 1000, "dataset")) == 1000
    assert (tmp_path / "a.jsonl").stat().st_size == 1000
    with pytest.raises(ApiError) as caught:
        asyncio.run(save_stream(chunks([600, 401]), tmp_path / "b.jsonl", 1000, "dataset"))
    assert caught.value.status_code == 413 and sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_server_errors_are_typed_as_such_in_openai_s_error_body():
    import json

    from openrft.rollout.server import _error

    for status, kind in ((400, "invalid_request_error"), (404, "invalid_request_error"), (500, "server_error"),
                         (503, "server_error")):  # fmt: skip
        body = json.loads(_error(status, "x", code="c").body)
        assert body == {"error": {"message": "x", "type": kind, "param": None, "code": "c"}}


def test_the_progress_bar_counts_epochs_from_one():
    from openrft.tracking.progress import ProgressBar

    bar = ProgressBar(4)
    try:
        bar.update(rounds_done=1, step=3, epoch=0, metrics={"reward/mean": 0.5})
        status = bar._progress.tasks[0].fields["status"]
    finally:
        bar.close()
    assert status.split("  ")[:3] == ["step 3", "epoch 1", "reward 0.500"]
