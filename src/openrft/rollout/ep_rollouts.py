"""eval-protocol rollout processors as agents: the file's own processor, pointed at the policy.

An eval-protocol evaluator file names how its rows are rolled out (``rollout_processor=
AgentRolloutProcessor()``, ``mcp_config_path="mcp.json"``, ``steps``, ...). openrft runs that
processor once per candidate, on a copy of the row, with ``completion_params`` that send every
model call to the job's policy server through litellm's OpenAI-compatible ``hosted_vllm``
provider:

- ``model`` is ``hosted_vllm/policy@<rollout id>``: the model name alone tells the server which
  rollout a call belongs to, because some processors (eval-protocol's agent) pass nothing to
  litellm but the model name;
- ``api_base``/``api_key`` and the rollout header are set as well, and ``HOSTED_VLLM_API_BASE``
  in the environment, for processors that drop them.

The user's own ``completion_params`` (temperature, max tokens, ...) are kept but do not matter:
the job's sampling parameters govern every call to a rollout. Processors whose rollout is one
sampled reply (single-turn, no-op) never come here: openrft samples those rows itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from openrft.evaluators.base import RolloutSpec
from openrft.rollout.agents import POLICY_MODEL, Agent
from openrft.rollout.trajectories import ROLLOUT_HEADER, ROLLOUT_MODEL_SEP

LITELLM_PROVIDER = "hosted_vllm"
API_KEY = "openrft"
# what routes a call elsewhere: replaced, never kept from the user's completion_params
ROUTING_KEYS = ("model", "api_base", "base_url", "api_key", "extra_headers", "custom_llm_provider")


class _LoggingWorkerNoise(logging.Filter):
    """litellm's background logging worker is bound to the event loop it started on; each agent run
    has a loop of its own, so it logs an error with a traceback per call ("cannot reuse already awaited
    coroutine") about its own cost bookkeeping, never about the call. Those records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.filename != "logging_worker.py"


def processor_agent(spec: RolloutSpec) -> Agent:
    """An async agent ``fn(row, client)`` that runs ``spec.processor`` on the row (module docstring)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-list download at import
    for name in ("LiteLLM", "LiteLLM Router", "httpx", "eval_protocol"):  # a line per call otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    if not any(isinstance(f, _LoggingWorkerNoise) for f in logging.getLogger("LiteLLM").filters):
        logging.getLogger("LiteLLM").addFilter(_LoggingWorkerNoise())
    # eval-protocol starts an MCP gym's server as `python SCRIPT`: this interpreter's, not whatever
    # `python` a shell without the virtual environment would find first
    bin_dir = os.path.dirname(sys.executable)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    setup = getattr(spec.processor, "setup", None)
    if callable(setup):
        setup()

    async def agent(row: Any, client: Any) -> Any:
        from eval_protocol.models import EvaluationRow as EPRow
        from eval_protocol.pytest.types import RolloutProcessorConfig

        rollout_id = client.default_headers.get(ROLLOUT_HEADER)
        params = completion_params(spec, str(client.base_url).rstrip("/"), rollout_id)
        ep_row = EPRow.model_validate(row.model_dump(exclude_none=True))
        ep_row.input_metadata.completion_params = params
        config = RolloutProcessorConfig(
            completion_params=params,  # type: ignore[arg-type]
            mcp_config_path=spec.mcp_config_path or "",
            server_script_path=spec.server_script_path,
            semaphore=asyncio.Semaphore(1),
            steps=spec.steps,
            kwargs=dict(spec.kwargs),
        )
        tasks = spec.processor([ep_row], config)
        (result,) = await asyncio.gather(*tasks)
        return result

    return Agent(agent, True, f"eval-protocol {spec.name}")


def completion_params(spec: RolloutSpec, base_url: str, rollout_id: str | None) -> dict[str, Any]:
    """The ``completion_params`` of one rollout: the user's, routed to the policy server."""
    os.environ["HOSTED_VLLM_API_BASE"] = base_url  # the same server for every rollout of the job
    os.environ.setdefault("HOSTED_VLLM_API_KEY", API_KEY)
    model = f"{POLICY_MODEL}{ROLLOUT_MODEL_SEP}{rollout_id}" if rollout_id else POLICY_MODEL
    kept = {k: v for k, v in spec.completion_params.items() if k not in ROUTING_KEYS}
    headers = {ROLLOUT_HEADER: rollout_id} if rollout_id else {}
    return {**kept, "model": f"{LITELLM_PROVIDER}/{model}", "api_base": base_url, "api_key": API_KEY,
            "extra_headers": headers}  # fmt: skip


__all__ = ["completion_params", "processor_agent"]
