"""An agent written with nothing but the ``openai`` SDK: answer, get feedback, try once more.

Train it with::

    openrft rftj create --dataset arithmetic --agent examples/agents/retry_agent.py::agent

openrft calls ``agent(row, client)`` once per candidate. ``client`` is an ``openai.OpenAI``
pointed at the policy being trained (model ``"policy"``); every call made through it is
recorded token for token and trained on. The evaluator scores the conversation returned.
"""

from __future__ import annotations

import re

ANSWER = re.compile(r"<answer>\s*(-?\d+)\s*</answer>")
FEEDBACK = "Please give only the final number, inside <answer></answer> tags."


def agent(row, client):
    """Ask the dataset's question; if the reply has no answer in tags, say so and ask once more."""
    messages = [m.model_dump(exclude_none=True) for m in row.messages]
    for _turn in range(2):
        reply = client.chat.completions.create(model="policy", messages=messages)
        text = reply.choices[0].message.content or ""
        messages.append({"role": "assistant", "content": text})
        if ANSWER.search(text):
            break
        messages.append({"role": "user", "content": FEEDBACK})
    if messages[-1]["role"] == "user":  # the last feedback got no reply: not part of the conversation
        messages.pop()
    row.messages = messages
    return row
