"""Streamed replies as they are sampled: the text pieces (stop strings, tool calls, split characters),
chunks arriving before sampling ends on all three APIs, and the joined stream equal to the whole reply."""

from __future__ import annotations

import json
import random
import threading

import openai
import pytest

from openrft.records import Completion
from openrft.rollout.chat import tool_format
from openrft.rollout.local import LocalEngine
from openrft.rollout.server import BackgroundServer, create_app
from openrft.rollout.streaming import TextDeltas

CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17*23"}}\n</tool_call>'
TOOLS = [{"type": "function", "function": {"name": "calculator", "description": "Evaluate arithmetic.",
          "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}}]  # fmt: skip
# the same tool as the Responses API writes it
FLAT_TOOLS = [{"type": "function", "name": "calculator", "parameters": TOOLS[0]["function"]["parameters"]}]


def pieces(tokenizer, text: str, **kwargs) -> tuple[list[str], TextDeltas]:
    stream = TextDeltas(tokenizer, **kwargs)
    out = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        out.append(stream.push([token]))
        assert not out[-1].endswith("\ufffd")  # never half a character
    return out, stream


def test_pieces_join_to_the_text_even_where_characters_span_tokens(tokenizer):
    rng = random.Random(0)
    alphabet = list("abc xyz\n.,!") + ["é", "ü", "漢字", "🌊", "👩‍👩‍👧", "  ", "\t"]
    for _ in range(30):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        got, stream = pieces(tokenizer, text)
        assert "".join(got) + stream.rest(text) == text
        assert "".join(got) == text  # no stop or marker: everything is sent as it comes


def test_a_stop_string_is_never_sent_even_in_part(tokenizer):
    text = "The answer is <answer>42</answer> and more"
    got, stream = pieces(tokenizer, text, stops=("</answer>",))
    sent = ""
    for piece in got:
        sent += piece
        assert "</" not in sent and text.startswith(sent)
    assert sent == "The answer is <answer>42"
    assert stream.rest("The answer is <answer>42") == ""
    # a partial stop that never completes is sent once it cannot become one
    got, _ = pieces(tokenizer, "a </answ b", stops=("</answer>",))
    assert "".join(got) == "a </answ b"
    kept, _ = pieces(tokenizer, text, kept_stops=("</answer>",))
    assert "".join(kept) == "The answer is <answer>42</answer>"


def test_text_before_a_tool_call_streams_and_the_call_waits(tokenizer):
    fmt = tool_format()
    text = f"Let me compute that.\n{CALL}\nDone."
    got, stream = pieces(tokenizer, text, markers=(fmt.call_start,), trim=True)
    assert "".join(got) == "Let me compute that."  # no trailing newline: the parsed content drops it
    reply = fmt.parse(text)
    assert reply.tool_calls and "".join(got) + stream.rest(reply.content) == reply.content
    bad = "Hi <tool_call>{not json"  # an unreadable call stays text: the rest brings it
    got, stream = pieces(tokenizer, bad, markers=(fmt.call_start,), trim=True)
    assert "".join(got) + stream.rest(fmt.parse(bad).content) == bad


class SteppedEngine:
    """Reports its scripted reply token by token and waits after the first until told to go on, so a
    test sees whether the first piece reached the client while sampling was still under way."""

    streams_tokens = True

    def __init__(self, tokenizer, text: str, fail: bool = False, wait_at: int = 0):
        self.tokenizer, self.text, self.fail, self.wait_at = tokenizer, text, fail, wait_at
        self.stop_token_ids = (tokenizer.eos_token_id,)
        self.go_on = threading.Event()

    def generate_from_ids(self, prompts, params, on_tokens=None, **_):
        ids = tuple(self.tokenizer(self.text, add_special_tokens=False)["input_ids"]) + (
            self.tokenizer.eos_token_id,
        )
        for step, token in enumerate(ids):
            if on_tokens is not None:
                on_tokens([((p, k), token) for p in range(len(prompts)) for k in range(params.n)])
            if step == self.wait_at:
                assert self.go_on.wait(10), "the client never saw the piece it waits for"
            if self.fail and step == 2:
                raise RuntimeError("the device went away")
        return [[Completion(name, k, tuple(p), ids, self.text, (-0.5,) * len(ids), "stop")
                 for k in range(params.n)] for name, p in prompts]  # fmt: skip


def test_chunks_reach_the_client_while_sampling_goes_on(tokenizer):
    engine = SteppedEngine(tokenizer, f"Sure, calling it.\n{CALL}")
    with BackgroundServer(create_app(engine, "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        messages = [{"role": "user", "content": "What is 17*23?"}]
        content, calls, finish = "", [], None
        for chunk in client.chat.completions.create(
            model="policy", messages=messages, tools=TOOLS, stream=True
        ):
            delta = chunk.choices[0].delta
            if delta.content and not engine.go_on.is_set():
                engine.go_on.set()  # the first piece came before the engine went past its first token
            content += delta.content or ""
            calls += delta.tool_calls or []
            finish = chunk.choices[0].finish_reason or finish
        assert engine.go_on.is_set() and content == "Sure, calling it." and finish == "tool_calls"
        assert {call.index for call in calls} == {0} and calls[0].function.name == "calculator"
        arguments = "".join(call.function.arguments or "" for call in calls)
        assert json.loads(arguments) == {"expression": "17*23"}

        engine.go_on.clear()
        texts = {}
        for chunk in client.completions.create(
            model="policy", prompt="Hi", n=2, stream=True, stop=["</tool_call>"]
        ):
            (choice,) = chunk.choices
            engine.go_on.set()
            texts[choice.index] = texts.get(choice.index, "") + choice.text
        assert texts == {0: f"Sure, calling it.\n{CALL[: -len('</tool_call>')]}"} | {
            1: f"Sure, calling it.\n{CALL[: -len('</tool_call>')]}"
        }

        engine.go_on.clear()
        with client.responses.stream(model="policy", input="What is 17*23?", tools=FLAT_TOOLS) as events:
            kinds = []
            for event in events:
                kinds.append(event.type)
                if event.type == "response.output_text.delta":
                    engine.go_on.set()
            final = events.get_final_response()
        assert engine.go_on.is_set() and final.output_text == "Sure, calling it."
        assert [item.type for item in final.output] == ["message", "function_call"]
        assert kinds.index("response.output_text.delta") < kinds.index(
            "response.function_call_arguments.delta"
        )
        assert client.responses.retrieve(final.id).output[0].id == final.output[0].id  # stored as streamed


def test_tool_call_arguments_stream_as_they_are_written(tokenizer):
    """The call's id and name come once its name is written, then its arguments grow while sampling goes
    on; joined (here by the openai SDK's own stream helper), they are the unstreamed reply's arguments."""
    text = ('Sure.\n<tool_call>\n{"name": "calculator",  "arguments": {"expression" :"17 * 23", '
            '"note": "caf\\u00e9 \\"x\\"", "precise":true, "digits": [1.50, -2e3]}}\n</tool_call>')  # fmt: skip
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    wait_at = next(k for k in range(len(ids)) if '"17' in tokenizer.decode(ids[: k + 1]))
    engine = SteppedEngine(tokenizer, text, wait_at=wait_at)
    tools = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "strict": True}}]
    messages = [{"role": "user", "content": "What is 17*23?"}]
    with BackgroundServer(create_app(engine, "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        seen = None
        with client.chat.completions.stream(model="policy", messages=messages, tools=tools) as stream:
            for event in stream:
                kind = event.type
                if kind == "tool_calls.function.arguments.delta" and "17" in event.arguments and seen is None:
                    seen = event.arguments  # what the client holds while the engine waits
                    engine.go_on.set()
            streamed = stream.get_final_completion().choices[0]
        whole = client.chat.completions.create(model="policy", messages=messages, tools=tools).choices[0]
    assert seen == '{"expression": "17'  # written as json.dumps writes it, with the rest still to come
    (call,) = streamed.message.tool_calls
    (expected,) = whole.message.tool_calls
    assert call.function.name == "calculator" and call.id.startswith("call_")
    assert call.function.arguments == expected.function.arguments
    assert json.loads(call.function.arguments) == {"expression": "17 * 23", "note": 'café "x"', "precise": True,
                                                   "digits": [1.5, -2000.0]}  # fmt: skip
    assert streamed.finish_reason == "tool_calls" and streamed.message.content == "Sure."


@pytest.mark.parametrize("lead", ["Checking.\n", ""])
def test_responses_stream_function_calls_as_they_are_written(tokenizer, lead):
    """The Responses stream adds a function call's item once its name is written and sends its arguments
    as they grow; the ids it announced are the stored response's, and a later turn answers the call."""
    text = (f'{lead}<tool_call>\n{{"name": "calculator", "arguments": {{"expression": "17 * 23"}}}}\n</tool_call>'
            "\nBack soon.")  # fmt: skip
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    engine = SteppedEngine(tokenizer, text, wait_at=next(
        k for k in range(len(ids)) if '"17' in tokenizer.decode(ids[: k + 1])))  # fmt: skip
    with BackgroundServer(create_app(engine, "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        added, arguments, seen = {}, {}, None
        with client.responses.stream(model="policy", input="What is 17*23?", tools=FLAT_TOOLS) as events:
            for event in events:
                if event.type == "response.output_item.added":
                    added[event.output_index] = event.item
                if event.type == "response.function_call_arguments.delta":
                    arguments[event.output_index] = arguments.get(event.output_index, "") + event.delta
                    if seen is None and "17" in arguments[event.output_index]:
                        seen = arguments[event.output_index]  # what the client holds while the engine waits
                        engine.go_on.set()
            final = events.get_final_response()
        kinds = [item.type for item in final.output]
        assert kinds == (["message", "function_call"] if lead else ["function_call", "message"])
        call = final.output[kinds.index("function_call")]
        assert seen == '{"expression": "17' and call.arguments == '{"expression": "17 * 23"}'
        assert added[kinds.index("function_call")].call_id == call.call_id
        assert [item.id for item in client.responses.retrieve(final.id).output] == [
            i.id for i in final.output
        ]
        message = final.output[kinds.index("message")]
        assert message.content[0].text == tool_format().parse(text).content  # the text around the call
        engine.go_on.set()
        follow = client.responses.create(model="policy", previous_response_id=final.id, input=[
            {"type": "function_call_output", "call_id": call.call_id, "output": "391"}])  # fmt: skip
        assert follow.status == "completed"


def test_an_announced_call_the_reply_cannot_read_is_closed_as_incomplete(tokenizer):
    """A call streamed and then found unreadable (its outer brace missing) is closed as incomplete; the
    SDK's stream helper reads the rest without tripping, and the chat stream's arguments never parse."""
    text = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1 + 2"}\n</tool_call>'
    engine = SteppedEngine(tokenizer, text)
    engine.go_on.set()
    with BackgroundServer(create_app(engine, "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        with client.responses.stream(model="policy", input="1 + 2?", tools=FLAT_TOOLS) as events:
            seen = [(e.type, getattr(e, "output_index", None), getattr(getattr(e, "item", None), "status", None))
                    for e in events]  # fmt: skip
            final = events.get_final_response()
        assert ("response.output_item.done", 0, "incomplete") in seen  # the announced call, closed
        assert [item.type for item in final.output] == ["message"] and final.output_text == text
        added = [index for kind, index, _ in seen if kind == "response.output_item.added"]
        assert added == [0, 1]  # the message under an index of its own
        chunks = list(client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "x"}],
                                                     tools=TOOLS, stream=True))  # fmt: skip
        arguments = "".join(
            c.function.arguments or "" for k in chunks for c in k.choices[0].delta.tool_calls or []
        )
        assert arguments == '{"expression": "1 + 2"' and chunks[-1].choices[0].finish_reason == "stop"


def test_a_call_after_a_broken_one_is_stored_under_the_ids_the_stream_announced(tokenizer):
    text = ('<tool_call>{"name": "calculator", "arguments": {"expression": 2,}}</tool_call>'
            '<tool_call>{"name": "calculator", "arguments": {"expression": "1"}}</tool_call>')  # fmt: skip
    engine = SteppedEngine(tokenizer, text)
    engine.go_on.set()
    with BackgroundServer(create_app(engine, "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        with client.responses.stream(model="policy", input="1?", tools=FLAT_TOOLS) as events:
            added = {e.output_index: e.item for e in events if e.type == "response.output_item.added"}
            final = events.get_final_response()
        calls = [item for item in final.output if item.type == "function_call"]
        assert len(calls) == 1 and calls[0].arguments == '{"expression": "1"}'
        announced = [item for item in added.values() if item.type == "function_call"]
        assert len(announced) == 2  # the broken one was announced first
        assert (calls[0].id, calls[0].call_id) == (announced[1].id, announced[1].call_id)
        stored = client.responses.retrieve(final.id).output
        assert [(i.id, i.call_id) for i in stored if i.type == "function_call"] == [
            (c.id, c.call_id) for c in calls
        ]


def test_an_error_after_the_stream_began_reaches_the_sdk(tokenizer):
    engine = SteppedEngine(tokenizer, "one two three four", fail=True)
    engine.go_on.set()
    with BackgroundServer(create_app(engine, "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        with pytest.raises(openai.APIError, match="the device went away"):
            for _ in client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "x"}],
                                                    stream=True):  # fmt: skip
                pass


def test_the_joined_stream_is_the_whole_reply(tiny_model, tokenizer):
    model, _ = tiny_model
    with BackgroundServer(create_app(LocalEngine(model, tokenizer), "tiny")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        for stop in (None, [" the", "."]):
            kwargs = dict(model="tiny", messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=24,
                          seed=5, n=3, stop=stop)  # fmt: skip
            whole = client.chat.completions.create(**kwargs)
            joined = {}
            for chunk in client.chat.completions.create(**kwargs, stream=True):
                for choice in chunk.choices:
                    joined[choice.index] = joined.get(choice.index, "") + (choice.delta.content or "")
            assert joined == {c.index: c.message.content for c in whole.choices}
            prompt = dict(model="tiny", prompt="Once upon a time", max_tokens=24, seed=5, n=2, stop=stop)
            whole_text = {c.index: c.text for c in client.completions.create(**prompt).choices}
            streamed = {}
            for chunk in client.completions.create(**prompt, stream=True):
                for choice in chunk.choices:
                    streamed[choice.index] = streamed.get(choice.index, "") + choice.text
            assert streamed == whole_text


def test_every_engine_call_of_a_batcher_runs_on_one_thread_of_its_own():
    """A compiled step's CUDA graphs belong to the thread that recorded them: batches that follow one
    another, and requests that overlap, are decoded on the same thread (not the event loop's)."""
    import asyncio
    import threading

    from openrft.rollout.batching import Batcher

    threads = []

    class Host:
        def generate(self, key, prompts, on_tokens, cancelled):
            threads.append(threading.get_ident())
            return [[name] for name, _ in prompts]

    async def main():
        import time

        batcher = Batcher(Host(), window=0.001)
        for round_ in range(6):  # one batch after another, keys that cannot share a batch, and other
            # work on the event loop's own thread pool meanwhile (an adapter load, a tokenizer call)
            busy = [asyncio.to_thread(time.sleep, 0.002 * k) for k in range(1, 4)]
            await asyncio.gather(*busy, *(batcher.submit(f"k{i}", [(f"{round_}{i}", [1])]) for i in range(3)))
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(threads) == 18 and len(set(threads)) == 1 and threads[0] != loop_thread


def test_a_batch_of_requests_each_gets_its_own_tokens():
    import asyncio

    from openrft.rollout.batching import Batcher

    class Host:  # two prompts from the first request, one from the second, decoded in one call
        def generate(self, key, prompts, on_tokens, cancelled):
            assert [name for name, _ in prompts] == ["a0", "a1", "b0"]
            on_tokens([((0, 0), 10), ((1, 0), 11), ((2, 0), 12), ((2, 1), 13)])
            on_tokens([((2, 0), 22)])
            return [[f"done {name}"] for name, _ in prompts]

    async def main():
        batcher, seen = Batcher(Host(), window=0.01), {"a": [], "b": []}
        first = batcher.submit("key", [("a0", [1]), ("a1", [1])], seen["a"].extend)
        second = batcher.submit("key", [("b0", [1])], seen["b"].extend)
        return await asyncio.gather(first, second), seen

    (first, second), seen = asyncio.run(main())
    assert first == [["done a0"], ["done a1"]] and second == [["done b0"]]
    assert seen == {"a": [((0, 0), 10), ((1, 0), 11)], "b": [((0, 0), 12), ((0, 1), 13), ((0, 0), 22)]}


def test_serve_with_api_keys_answers_only_requests_that_send_one(tokenizer):
    engine = SteppedEngine(tokenizer, "hello")
    engine.go_on.set()
    with BackgroundServer(create_app(engine, "policy", api_keys=["k1", "k2"])) as server:
        messages = [{"role": "user", "content": "x"}]
        for key in ("k1", "k2"):
            client = openai.OpenAI(base_url=server.url, api_key=key, max_retries=0)
            assert (
                client.chat.completions.create(model="policy", messages=messages).choices[0].message.content
            )
        for key in ("wrong", "k"):
            with pytest.raises(openai.AuthenticationError) as caught:
                openai.OpenAI(base_url=server.url, api_key=key, max_retries=0).models.list()
            assert caught.value.code == "invalid_api_key"
        import httpx

        assert httpx.get(server.url.removesuffix("/v1") + "/health").status_code == 200  # no key needed
        assert httpx.get(server.url + "/models").status_code == 401


def test_a_keyless_serve_on_loopback_answers_only_requests_addressed_to_this_machine(tokenizer):
    import httpx

    from openrft.rollout.server import serving_app

    engine = SteppedEngine(tokenizer, "hello")
    engine.go_on.set()
    body = {"model": "policy", "messages": [{"role": "user", "content": "x"}]}
    with BackgroundServer(serving_app(engine, "policy", "127.0.0.1")) as server:
        port = server.url.split(":")[-1].split("/")[0]
        for host in ("evil.example", f"rebound.example:{port}", "192.168.1.9"):  # a rebound page's names
            for path in ("/v1/chat/completions", "/v1/load_lora_adapter", "/health"):
                answer = httpx.post(server.url.removesuffix("/v1") + path, json=body, headers={"Host": host})
                assert answer.status_code == 403 and host in answer.json()["error"]["message"], (host, path)
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "127.0.0.2", f"[::1]:{port}"):
            answer = httpx.post(server.url + "/chat/completions", json=body, headers={"Host": host})
            assert answer.status_code == 200, host
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)  # the SDK sends its own Host
        assert client.chat.completions.create(**body).choices[0].message.content == "hello"
    # a key, or a bind other machines reach, is the user's choice to answer other names: no Host check
    for app in (
        serving_app(engine, "policy", "127.0.0.1", api_keys=["k"]),
        serving_app(engine, "policy", "0.0.0.0"),
    ):
        with BackgroundServer(app) as server:
            answer = httpx.get(
                server.url + "/models", headers={"Host": "gpu-box:8000", "Authorization": "Bearer k"}
            )
            assert answer.status_code == 200


def test_the_engine_ends_the_rows_of_an_abandoned_prompt_and_samples_the_rest_unchanged(
    tiny_model, tokenizer
):
    from openrft.records import SamplingParams

    model, _ = tiny_model
    engine = LocalEngine(model, tokenizer, stop_token_ids=[])  # no end token: every row runs to the limit
    prompts = [("a", tokenizer("Hello there")["input_ids"]), ("b", tokenizer("Good night")["input_ids"])]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=40, seed=3)
    whole = engine.generate_from_ids(prompts, params)
    asked = []

    def cancelled():
        asked.append(1)
        return {0} if len(asked) > 5 else set()

    cut = engine.generate_from_ids(prompts, params, cancelled=cancelled)
    assert [c.completion_token_ids for c in cut[1]] == [c.completion_token_ids for c in whole[1]]
    assert all(len(c.completion_token_ids) < 10 and c.finish_reason == "length" for c in cut[0])
    assert [c.completion_token_ids for c in cut[0]] == [
        c.completion_token_ids[: len(k.completion_token_ids)] for c, k in zip(whole[0], cut[0], strict=True)
    ]  # what was sampled before the end is what the whole run sampled


def test_an_abandoned_prompt_s_queued_candidates_are_never_sampled(tiny_model, tokenizer):
    from openrft.records import SamplingParams

    model, _ = tiny_model
    engine = LocalEngine(model, tokenizer, stop_token_ids=[], max_concurrent_rollouts=2)
    prompts = [("a", tokenizer("Hello there")["input_ids"]), ("b", tokenizer("Good night")["input_ids"])]
    params = SamplingParams(n=4, temperature=1.0, max_tokens=12, seed=1)
    sampled: set[tuple[int, int]] = set()

    def on_tokens(pairs):
        sampled.update(owner for owner, _ in pairs)

    cut = engine.generate_from_ids(
        prompts, params, on_tokens=on_tokens, cancelled=lambda: {0} if sampled else set()
    )
    assert {c for p, c in sampled if p == 0} == {0, 1}  # two in flight; the two queued never start
    assert len(cut[0]) <= 2 and all(c.finish_reason == "length" for c in cut[0])
    assert len(cut[1]) == 4 and {c for p, c in sampled if p == 1} == {0, 1, 2, 3}


class SlowEngine:
    """Samples one token per 20 ms for up to 10 s, stopping early when its prompt is abandoned."""

    streams_tokens = aborts_requests = True

    def __init__(self, tokenizer):
        self.tokenizer, self.stop_token_ids, self.ended = (
            tokenizer,
            (tokenizer.eos_token_id,),
            threading.Event(),
        )

    def generate_from_ids(self, prompts, params, on_tokens=None, cancelled=None, **_):
        import time

        ids = []
        for _ in range(500):
            if cancelled is not None and cancelled():
                self.ended.set()
                break
            ids.append(self.tokenizer("a")["input_ids"][0])
            if on_tokens is not None:
                on_tokens([((0, 0), ids[-1])])
            time.sleep(0.02)
        return [[Completion(name, 0, tuple(p), tuple(ids), "a" * len(ids), (-0.5,) * len(ids), "length")]
                for name, p in prompts]  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_stops_its_sampling(tokenizer, stream):
    engine = SlowEngine(tokenizer)
    with BackgroundServer(create_app(engine, "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=0.5)
        messages = [{"role": "user", "content": "go on forever"}]
        if stream:
            chunks = client.chat.completions.create(model="policy", messages=messages, stream=True)
            next(chunk for chunk in chunks if chunk.choices[0].delta.content)  # sampling has begun
            chunks.close()
        else:
            with pytest.raises(openai.APITimeoutError):
                client.chat.completions.create(model="policy", messages=messages)
        assert engine.ended.wait(5), "the server went on sampling for a client that had left"


def test_a_request_abandoned_while_queued_is_never_decoded():
    import asyncio

    from openrft.rollout.batching import Batcher

    calls = []

    class Host:
        def generate(self, key, prompts, on_tokens, cancelled):
            calls.append([name for name, _ in prompts])
            return [["done"] for _ in prompts]

    async def main():
        batcher = Batcher(Host(), window=0.05)
        left = asyncio.ensure_future(batcher.submit("key", [("gone", [1])]))
        stays = asyncio.ensure_future(batcher.submit("key", [("kept", [1])]))
        await asyncio.sleep(0.01)
        left.cancel()  # its client left during the batching window
        return await stays

    assert asyncio.run(main()) == [["done"]] and calls == [["kept"]]


def test_concurrent_streamed_whole_abandoned_and_timed_out_requests_leave_the_others_exact(
    tiny_model, tokenizer
):
    import asyncio

    model, _ = tiny_model
    # float64: batch-invariant; no end token: every reply runs to its limit (the timed-out one cannot finish)
    engine = LocalEngine(model.double(), tokenizer, max_concurrent_rollouts=16, stop_token_ids=[])

    def request(i: int) -> dict:
        return {"model": "tiny", "messages": [{"role": "user", "content": f"story {i}"}], "max_tokens": 40,
                "seed": i, "n": 1 + i % 3}  # fmt: skip

    async def one(client, i: int):
        if i % 4 == 0:
            return [c.message.content for c in (await client.chat.completions.create(**request(i))).choices]
        if i % 4 == 1:
            joined: dict[int, str] = {}
            async for chunk in await client.chat.completions.create(**request(i), stream=True):
                for c in chunk.choices:
                    joined[c.index] = joined.get(c.index, "") + (c.delta.content or "")
            return [joined[k] for k in sorted(joined)]
        if i % 4 == 2:  # leaves after three chunks
            stream = await client.chat.completions.create(**request(i), stream=True)
            seen = 0
            async for _ in stream:
                seen += 1
                if seen == 3:
                    break
            await stream.close()
            return None
        with pytest.raises(openai.APITimeoutError):  # gives up before its reply is ready
            await client.with_options(timeout=0.3).chat.completions.create(
                **{**request(i), "max_tokens": 400}
            )
        return None

    async def main(url: str):
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
        together = await asyncio.gather(*(one(client, i) for i in range(24)))
        alone = [await one(client, i) if i % 4 < 2 else None for i in range(24)]
        return together, alone

    with BackgroundServer(create_app(engine, "tiny")) as server:
        together, alone = asyncio.run(main(server.url))
    assert together == alone and sum(r is not None for r in together) == 12


def test_each_streamed_call_is_done_before_the_next_is_added(tokenizer):
    """As OpenAI streams them, by either route: a call is whole (chat) and its item done (Responses)
    before the next call begins, so the SDK's stream helpers close each call with its full arguments."""
    call = '<tool_call>\n{{"name": "calculator", "arguments": {{"expression": "{}"}}}}\n</tool_call>\n'
    engine = SteppedEngine(tokenizer, call.format("1 + 2") + call.format("3 * 4"))
    engine.go_on.set()
    with BackgroundServer(create_app(engine, "policy")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        with client.responses.stream(model="policy", input="Two sums.", tools=FLAT_TOOLS) as events:
            seen = [(e.type, getattr(e, "output_index", None)) for e in events if "output_item" in e.type]
            final = events.get_final_response()
        assert seen == [("response.output_item.added", 0), ("response.output_item.done", 0),
                        ("response.output_item.added", 1), ("response.output_item.done", 1)]  # fmt: skip
        assert [item.arguments for item in final.output] == [
            '{"expression": "1 + 2"}',
            '{"expression": "3 * 4"}',
        ]
        strict = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "strict": True}}]
        with client.chat.completions.stream(model="policy", messages=[{"role": "user", "content": "x"}],
                                            tools=strict) as chat:  # fmt: skip
            done = [e.arguments for e in chat if e.type == "tool_calls.function.arguments.done"]
        assert done == ['{"expression": "1 + 2"}', '{"expression": "3 * 4"}']
