"""The responses a server keeps for the Responses API: ``previous_response_id``, retrieval, input
item listing and ``item_reference``, in memory, bounded by count and by the text they hold.

Each stored response keeps the chat conversation through its reply (without the request's
``instructions``, which a continuation does not inherit), its ``response`` object and its input
items. Output and input items are indexed by id, and each tool call's id by the response that
made it, so that items sent back in any order can be put back into the turns the model wrote.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from typing import Any

MAX_RESPONSES = 4096
MAX_CHARS = 64_000_000  # of message text over all stored responses (the oldest go first)


@dataclasses.dataclass
class Stored:
    conversation: list[dict[str, Any]]  # chat messages through the reply
    body: dict[str, Any]  # the response object
    input_items: list[dict[str, Any]]  # the request's input items, each with an id
    chars: int = 0


class ResponseStore:
    def __init__(self, max_responses: int = MAX_RESPONSES, max_chars: int = MAX_CHARS):
        self.max_responses, self.max_chars = max_responses, max_chars
        self._responses: OrderedDict[str, Stored] = OrderedDict()
        self._items: dict[
            str, tuple[str, dict[str, Any]]
        ] = {}  # item id -> (the response it came with, item)
        self._call_owner: dict[str, str] = {}  # tool call id -> the response whose reply made the call
        self._chars = 0

    def get(self, response_id: str) -> Stored | None:
        return self._responses.get(response_id)

    def item(self, item_id: str) -> dict[str, Any] | None:
        found = self._items.get(item_id)
        return found[1] if found is not None else None

    def call_owner(self, call_id: str | None) -> str | None:
        return self._call_owner.get(call_id) if call_id else None

    def put(self, response_id: str, stored: Stored) -> None:
        stored.chars = sum(len(json.dumps(m.get("content") or "")) for m in stored.conversation)
        self._responses[response_id] = stored
        self._chars += stored.chars
        for item in [*stored.input_items, *stored.body["output"]]:
            if item.get("id"):  # an item referenced again stays its first response's
                self._items.setdefault(item["id"], (response_id, item))
        for item in stored.body["output"]:
            if item.get("type") == "function_call":
                self._call_owner[item["call_id"]] = response_id
        while self._responses and (len(self._responses) > self.max_responses or self._chars > self.max_chars):
            self.delete(next(iter(self._responses)))

    def delete(self, response_id: str) -> bool:
        stored = self._responses.pop(response_id, None)
        if stored is None:
            return False
        self._chars -= stored.chars
        for item in [*stored.input_items, *stored.body["output"]]:
            if self._items.get(item.get("id", ""), ("",))[0] == response_id:
                del self._items[item["id"]]
        for item in stored.body["output"]:
            if self._call_owner.get(item.get("call_id", "")) == response_id:
                del self._call_owner[item["call_id"]]
        return True


__all__ = ["MAX_CHARS", "MAX_RESPONSES", "ResponseStore", "Stored"]
