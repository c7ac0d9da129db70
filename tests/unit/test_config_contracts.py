"""Contracts of the job configuration: cross-field refusals at their exact edges, and flags that only
make sense together."""

from __future__ import annotations

import pytest

from openrft import config as C
from openrft.errors import ConfigError


def _build(file_values=None, **flags):
    return C.build_config(file_values or {}, flags)[0]


@pytest.mark.parametrize(("flag", "value"), [("rollout_workers", 4), ("max_staleness", 1)])
def test_ray_only_flags_without_ray_address_are_refused_not_ignored(flag, value):
    dashed = "--" + flag.replace("_", "-")
    with pytest.raises(ConfigError, match=f"{dashed} applies to a Ray cluster: give --ray-address too"):
        _build(**{flag: value})
    assert getattr(_build(ray_address="local", **{flag: value}).rollout, flag) == value


def test_warm_start_refuses_base_model_even_when_it_names_the_default_model():
    """The adapter names its base model: an explicit --base-model is refused whatever it says, even the
    default's name (else it would be silently replaced by the adapter's)."""
    with pytest.raises(ConfigError, match="--warm-start-from and --base-model are mutually exclusive"):
        _build(warm_start_from="adapter/", base_model=C.DEFAULT_BASE_MODEL)


def test_max_output_tokens_equal_to_the_context_length_leaves_no_room_and_is_refused():
    with pytest.raises(
        ConfigError, match=r"--max-output-tokens \(64\) must be smaller than --max-context-length"
    ):
        _build(max_output_tokens=64, max_context_length=64)
    assert _build(max_output_tokens=63, max_context_length=64).rollout.max_output_tokens == 63


def test_overlong_buffer_may_span_the_whole_response_length_but_not_more():
    cfg = _build(overlong_penalty=True, overlong_buffer=32, max_output_tokens=32)
    assert cfg.settings().rounds.overlong_buffer == 32
    with pytest.raises(
        ConfigError, match=r"--overlong-buffer \(33\) must not exceed --max-output-tokens \(32\)"
    ):
        _build(overlong_penalty=True, overlong_buffer=33, max_output_tokens=32)


@pytest.mark.parametrize("driver", [{"tools": "tools.py"}, {"mcp_server": ["python server.py"]}])
def test_an_own_agent_refuses_the_built_in_loops_tools_and_mcp_servers_alike(driver):
    """--mcp-server (like --tools) configures the built-in agent loop; beside --agent it would be ignored."""
    with pytest.raises(ConfigError, match="--agent runs your own agent code; --tools and --mcp-server"):
        _build(agent="agent.py::run", **driver)
