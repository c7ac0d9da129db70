"""The agent group: multi-turn, tool-using rollouts (see :mod:`openrft.rollout.agents`)."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator, model_validator

from openrft.config.fields import Group, field


class AgentConfig(Group):
    """Multi-turn rollouts: a user's agent, or the built-in tool loop."""

    agent: str | None = field(
        None,
        "Run each candidate as an agent: path/to/file.py::fn, fn(row, client) -> row, where client is an "
        "openai client (AsyncOpenAI for async def) serving the current policy as model 'policy'.",
    )
    tools: str | None = field(
        None,
        "Python file whose public functions are tools for the built-in agent loop (schemas from their "
        "signatures and docstrings); rows may also carry OpenAI 'tools' schemas.",
    )
    mcp_server: tuple[str, ...] = field(
        (),
        "MCP server whose tools the built-in agent loop may call: a stdio command line, or an http(s) URL "
        "(streamable HTTP). Repeat the flag for several servers; no two tools may share a name.",
        valid="up to 8 command lines or URLs",
        max_length=8,
    )
    max_turns: int = field(
        8, "Model calls per conversation in the built-in agent loop.", valid="a whole number from 1 to 64",
        ge=1, le=64,
    )  # fmt: skip
    tool_timeout: float = field(
        30.0, "Seconds one tool call may take before it returns an error to the model.",
        valid="a number > 0", gt=0,
    )  # fmt: skip
    agent_timeout: float = field(
        600.0, "Seconds one agent run (a whole conversation) may take before it is scored invalid.",
        valid="a number > 0", gt=0,
    )  # fmt: skip

    @field_validator("mcp_server", mode="before")
    @classmethod
    def _servers(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, str):  # one server (what a job file or an older job record holds)
            value = [value]
        if isinstance(value, list | tuple) and any(not isinstance(v, str) or not v.strip() for v in value):
            raise ValueError("every --mcp-server must be a non-empty command line or URL")
        return value

    @model_validator(mode="after")
    def _one_driver(self) -> AgentConfig:
        if self.agent and (self.tools or self.mcp_server):
            raise ValueError(
                "--agent runs your own agent code; --tools and --mcp-server configure the built-in agent loop: "
                "give one or the other (your agent can call its own tools)"
            )
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.agent or self.tools or self.mcp_server)
