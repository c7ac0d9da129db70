"""JSONL prompt loading: row validation with line numbers, skipping, ids, atomic writes."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from openrft.data import PromptSet, load_prompts, write_jsonl
from openrft.errors import DataError

FIXTURES = Path(__file__).parent.parent / "fixtures"


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}], "ground_truth": text.upper()}


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_fixture_rows_load_with_ids_fields_and_reference_answers_dropped():
    prompts = load_prompts(str(FIXTURES / "tiny_rows.jsonl"))
    assert isinstance(prompts, PromptSet) and prompts.skipped == 0
    assert [p.prompt_id for p in prompts] == ["cap-france", "cap-peru", "two-plus"]
    peru = prompts[1]
    # The trailing assistant message is a reference answer: kept in the row, not in the prompt.
    assert peru.messages == ({"role": "user", "content": "Capital of Peru?"},)
    assert peru.row["messages"][-1] == {"role": "assistant", "content": "Lima"}
    assert peru.ground_truth == "Lima" and peru.row["topic"] == "geography"
    assert prompts[0].messages[0] == {"role": "system", "content": "Answer with one word."}


def test_a_row_without_ground_truth_takes_its_last_trailing_assistant_message_as_reference(tmp_path):
    ask = {"role": "user", "content": "What is 1 + 1?"}
    rows = [
        {"messages": [ask, {"role": "assistant", "content": "two"}, {"role": "assistant", "content": "2"}]},
        {"messages": [ask, {"role": "assistant", "content": [{"type": "text", "text": "2"}]}]},
        {"messages": [ask, {"role": "assistant", "content": "3"}], "ground_truth": "2"},  # its own wins
        {"messages": [ask, {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}]},
        {"messages": [ask]},
    ]
    prompts = load_prompts(str(write_lines(tmp_path / "d.jsonl", rows)))
    assert [p.row.get("ground_truth") for p in prompts] == ["2", "2", "2", [{"id": "c"}], None]
    assert all(p.messages == (ask,) for p in prompts)


def test_prompt_id_is_line_number_without_own_id_and_blank_lines_are_ignored(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [user("a"), "", "   ", user("b")])
    prompts = load_prompts(str(path))
    assert [p.prompt_id for p in prompts] == ["1", "4"]


def test_trl_prompt_rows_load_as_chat_and_keep_their_fields(tmp_path):
    rows = [
        {"prompt": "What is 2 + 2?", "solution": "4"},  # TRL's standard prompt-only format
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3 + 3?"}]},
        {"prompt": ""},
    ]
    with pytest.raises(DataError, match="line 3: 'prompt' must be non-empty text"):
        load_prompts(str(write_lines(tmp_path / "d.jsonl", rows)))
    prompts = load_prompts(str(write_lines(tmp_path / "d.jsonl", rows[:2])))
    assert prompts[0].messages == ({"role": "user", "content": "What is 2 + 2?"},)
    assert prompts[0].row["solution"] == "4" and prompts[0].row["prompt"] == "What is 2 + 2?"
    assert [m["role"] for m in prompts[1].messages] == ["system", "user"]


def test_input_metadata_row_id_is_used_as_prompt_id(tmp_path):
    row = {**user("a"), "input_metadata": {"row_id": "r-7"}}
    prompts = load_prompts(str(write_lines(tmp_path / "d.jsonl", [row])))
    assert prompts[0].prompt_id == "r-7"


def test_text_content_parts_are_joined_by_newlines_as_vllm_joins_them():
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}
        ]
    }
    from openrft.data.jsonl import prompts_from_rows

    prompts = prompts_from_rows([(1, row)], source="x")
    assert prompts[0].messages == ({"role": "user", "content": "Hi\nthere"},)


def test_bad_rows_are_reported_with_line_numbers_in_one_summary(tmp_path):
    lines = [
        user("fine 1"),
        "{not json",
        {"ground_truth": 3},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": "   "}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]},
        {"messages": []},
        "[1, 2]",
        user("fine 2"),
        user("fine 3"),
        user("fine 4"),
        user("fine 5"),
        user("fine 6"),
        user("fine 7"),
        user("fine 8"),
        user("fine 9"),
    ]
    path = write_lines(tmp_path / "d.jsonl", lines)
    with pytest.raises(DataError) as info:
        load_prompts(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: 7 of 16 rows are malformed:")
    assert "line 2: invalid JSON" in message
    assert "line 3: missing 'messages'" in message
    assert "line 4: messages[0] has role 'robot'" in message
    assert "line 5: empty prompt" in message
    assert "line 6: the prompt must end with a user message" in message
    # Only the first five are listed, then a count of the rest.
    assert "line 7" not in message and "... and 2 more" in message
    assert "--skip-bad-rows" in info.value.hint
    assert "Traceback" not in message


def test_skip_bad_rows_counts_what_it_skipped(tmp_path):
    lines = [user(f"q{i}") for i in range(8)] + ["oops", {"messages": "nope"}]
    prompts = load_prompts(str(write_lines(tmp_path / "d.jsonl", lines)), skip_bad_rows=True)
    assert len(prompts) == 8
    assert prompts.skipped == 2
    assert [n for n, _ in prompts.bad_rows] == [9, 10]
    assert "must be a non-empty list" in prompts.bad_rows[1][1]


def test_mostly_broken_file_fails_even_with_skip(tmp_path):
    lines = [user("q1"), user("q2"), "x", "y", "z"]
    with pytest.raises(DataError, match=r"3 of 5 rows are malformed \(more than 50%"):
        load_prompts(str(write_lines(tmp_path / "d.jsonl", lines)), skip_bad_rows=True)


def test_too_long_prompts_are_bad_rows(tmp_path):
    lines = [user("short"), user("a much longer question here")]
    words = lambda prompt: sum(len(m["content"].split()) for m in prompt.messages)  # noqa: E731
    path = write_lines(tmp_path / "d.jsonl", lines)
    with pytest.raises(DataError, match="line 2: prompt is 5 tokens, longer than the 3 allowed"):
        load_prompts(str(path), count_tokens=words, max_prompt_tokens=3)
    assert len(load_prompts(str(path), count_tokens=words, max_prompt_tokens=5)) == 2


def test_malformed_and_too_long_rows_are_named_in_one_summary(tmp_path):
    words = lambda prompt: sum(len(m["content"].split()) for m in prompt.messages)  # noqa: E731
    rows = [user(f"question {i}") for i in range(8)]
    rows[2] = user("a much longer question than the rest")
    rows[5] = "{not json"
    path = write_lines(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as caught:
        load_prompts(str(path), count_tokens=words, max_prompt_tokens=3)
    message = str(caught.value)
    assert message.startswith(f"{path}: 2 of 8 rows are malformed:")
    assert "line 3: prompt is 7 tokens" in message and "line 6:" in message
    skipped = load_prompts(str(path), count_tokens=words, max_prompt_tokens=3, skip_bad_rows=True)
    assert len(skipped) == 6 and [n for n, _ in skipped.bad_rows] == [3, 6]


def test_a_chat_template_error_is_a_bad_row(tmp_path):
    def no_system(prompt):
        if prompt.messages[0]["role"] == "system":
            raise RuntimeError("System role not supported")
        return 3

    system_row = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}
    path = write_lines(tmp_path / "d.jsonl", [user("a"), system_row, user("b")])
    prompts = load_prompts(str(path), count_tokens=no_system, max_prompt_tokens=10, skip_bad_rows=True)
    assert len(prompts) == 2
    assert prompts.bad_rows == [
        (2, "the chat template cannot render this prompt: RuntimeError: System role not supported")
    ]


def test_duplicate_ids_are_bad_rows(tmp_path):
    lines = [{**user("a"), "id": "x"}, {**user("b"), "id": "x"}, {**user("c"), "id": "y"}]
    prompts = load_prompts(str(write_lines(tmp_path / "d.jsonl", lines)), skip_bad_rows=True)
    assert [p.prompt_id for p in prompts] == ["x", "y"]
    assert prompts.bad_rows == [(2, "duplicate id 'x' (first used on line 1)")]


def test_missing_empty_and_non_utf8_files(tmp_path):
    with pytest.raises(DataError, match="dataset file not found"):
        load_prompts(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="has no rows"):
        load_prompts(str(tmp_path / "empty.jsonl"))
    good = json.dumps(user("fine")).encode()
    (tmp_path / "latin.jsonl").write_bytes(good + b"\n" + b'{"x": "caf\xe9"}\n' + good + b"\n")
    prompts = load_prompts(str(tmp_path / "latin.jsonl"), skip_bad_rows=True)
    assert prompts.bad_rows == [(2, "not valid UTF-8 text")]


def test_limit_keeps_the_first_prompts(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [user(f"q{i}") for i in range(5)])
    prompts = load_prompts(str(path), limit=2)
    assert [p.prompt_id for p in prompts] == ["1", "2"]
    with pytest.raises(DataError):
        load_prompts(str(path), limit=0)


def test_gsm8k_name_without_file_explains(tmp_path):
    with pytest.raises(DataError, match="not shipped"):
        load_prompts("gsm8k")


def test_adapter_converts_custom_rows(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"q": "one?", "a": 1}, "broken", {"q": "two?", "a": 2}])

    def adapter(rows):
        return [{"messages": [{"role": "user", "content": r["q"]}], "ground_truth": r["a"]} for r in rows]

    prompts = load_prompts(str(path), adapter=adapter, skip_bad_rows=True)
    assert [(p.prompt_id, p.ground_truth) for p in prompts] == [("1", 1), ("3", 2)]
    assert prompts.bad_rows[0][0] == 2

    def failing(rows):
        raise KeyError("q")

    with pytest.raises(DataError, match="dataset_adapter failed: KeyError"):
        load_prompts(str(path), adapter=failing, skip_bad_rows=True)


def test_write_jsonl_is_atomic_and_round_trips(tmp_path):
    target = tmp_path / "sub" / "out.jsonl"
    write_jsonl(target, [{"a": 1}, {"b": "é"}])
    assert [json.loads(x) for x in target.read_text(encoding="utf-8").splitlines()] == [{"a": 1}, {"b": "é"}]

    def exploding():
        yield {"a": 2}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(target, exploding())
    # The old file is untouched and no temporary file is left behind.
    assert target.read_text(encoding="utf-8").count("\n") == 2
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.jsonl"]


def test_openai_format_rows_load_as_written(tmp_path, tokenizer):
    """A byte-order mark, developer messages, text parts, tool-call history and a tools column
    (also as a JSON string), as OpenAI's chat and fine-tuning formats and common datasets write them."""
    from openrft.rollout.prompts import encode_prompt

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'},
    }
    rows = [
        {"messages": [{"role": "developer", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "text", "text": "Q:"}, {"type": "text", "text": "1+1?"}]}]},
        {"messages": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                      {"role": "tool", "tool_call_id": "c1", "content": "18C"}], "tools": json.dumps(tools)},
    ]  # fmt: skip
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    first, second = load_prompts(str(path))
    assert first.messages == (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q:\n1+1?"},
    )
    assert first.row["messages"][0]["role"] == "developer"  # the row itself is kept as written
    assert second.row["tools"] == tools and second.messages[-1]["tool_call_id"] == "c1"
    text = tokenizer.decode(encode_prompt(tokenizer, second))
    assert "get_weather" in text.split("Weather?")[0]  # the tools are shown before the conversation
    assert "Zürich" in text and "18C" in text and text.endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(encode_prompt(tokenizer, first)).count("Be brief.") == 1


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"messages": [{"role": "user", "content": "q"}], "tools": "{not json"}, "'tools' is a string that is not JSON"),
        ({"messages": [{"role": "user", "content": "q"}], "tools": [1]}, "'tools' must be a list of tool schemas"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "not 'image_url'"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "x"}]}, "has role 'robot'"),
    ],
)  # fmt: skip
def test_rows_that_cannot_be_sampled_are_refused_with_the_reason(tmp_path, row, reason):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=re.escape(reason)):
        load_prompts(str(path))


def test_a_json_array_and_a_parquet_table_load_as_rows(tmp_path):
    rows = [{"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": f"{i}+1?"}],
             "reward_model": {"style": "rule", "ground_truth": str(i + 1)}} for i in range(3)]  # fmt: skip
    (tmp_path / "rows.json").write_text(json.dumps(rows, indent=2))
    array = load_prompts(str(tmp_path / "rows.json"))
    assert [p.row["reward_model"]["ground_truth"] for p in array] == ["1", "2", "3"]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow

    pq.write_table(pyarrow.Table.from_pylist([*rows, {**rows[0], "prompt": []}]), tmp_path / "rows.parquet")
    with pytest.raises(DataError, match="row 4: 'prompt' must be non-empty"):
        load_prompts(str(tmp_path / "rows.parquet"))
    table = load_prompts(str(tmp_path / "rows.parquet"), skip_bad_rows=True)
    assert [p.messages for p in table] == [p.messages for p in array] and table.unit == "row"
    assert table[2].row["reward_model"] == {"style": "rule", "ground_truth": "3"}


def test_a_parquet_file_without_pyarrow_says_what_to_do(tmp_path, monkeypatch):
    (tmp_path / "train.parquet").write_bytes(b"PAR1" + b"\0" * 32 + b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match="is a Parquet file, and reading one needs pyarrow") as caught:
        load_prompts(str(tmp_path / "train.parquet"))
    assert "openrft[parquet]" in caught.value.hint


def test_sharegpt_conversations_load_as_messages_and_legacy_function_calls_are_named(tmp_path):
    rows = [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "2+2?"},
                               {"from": "gpt", "value": "4"}], "id": "a"},
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "{}"}]},
            {"messages": [{"role": "user", "content": "weather?"},
                          {"role": "assistant", "content": None, "function_call": {"name": "w", "arguments": "{}"}},
                          {"role": "user", "content": "and?"}]}]  # fmt: skip
    (tmp_path / "sharegpt.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [*rows, {**rows[0], "id": "b"}, {**rows[0], "id": "c"}])
    )
    with pytest.raises(DataError) as caught:
        load_prompts(str(tmp_path / "sharegpt.jsonl"))
    assert "line 2: conversations[1] is from 'function_call'" in caught.value.message
    assert "line 3: messages[1] uses OpenAI's deprecated 'function_call'" in caught.value.message
    first, *_ = load_prompts(str(tmp_path / "sharegpt.jsonl"), skip_bad_rows=True)
    assert [(m["role"], m["content"]) for m in first.messages] == [("system", "Be brief."), ("user", "2+2?")]
    assert first.row["id"] == "a" and first.row["messages"][-1] == {"role": "assistant", "content": "4"}


def test_xlam_function_calling_rows_load_with_openai_tools_and_their_reference_calls(tmp_path):
    tools = [{"name": "live_giveaways_by_type", "description": "Retrieve live giveaways by type.",
              "parameters": {"type": {"description": "Giveaway type: game, loot or beta.", "type": "str",
                                      "default": "game"}}},
             {"name": "get_weather", "description": "The weather.",
              "parameters": {"city": {"type": "str", "description": "City name."},
                             "days": {"type": "List[int], optional", "description": "Days ahead."}}}]  # fmt: skip
    answers = [{"name": "live_giveaways_by_type", "arguments": {"type": "beta"}}]
    row = {"id": 7, "query": "Where can I find live giveaways for beta access?", "tools": json.dumps(tools),
           "answers": json.dumps(answers)}  # fmt: skip
    (tmp_path / "xlam.jsonl").write_text(json.dumps(row) + "\n")
    (prompt,) = load_prompts(str(tmp_path / "xlam.jsonl"))
    assert [dict(m) for m in prompt.messages] == [{"role": "user", "content": row["query"]}]
    assert prompt.row["answers"] == answers and prompt.row["ground_truth"] == answers
    weather = prompt.row["tools"][1]["function"]
    assert weather["parameters"] == {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": "City name."}, "days": {"type": "array", "description": "Days ahead."}}}  # fmt: skip
    assert prompt.row["tools"][0]["function"]["parameters"]["required"] == []  # a default: not required


def test_skip_bad_rows_allows_up_to_half_of_the_file(tmp_path):
    path = tmp_path / "half.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "q"}]}\n{broken\n')
    prompts = load_prompts(str(path), skip_bad_rows=True)
    assert len(prompts) == 1 and prompts.skipped == 1
    path.write_text('{"messages": [{"role": "user", "content": "q"}]}\n{broken\n{broken too\n')
    with pytest.raises(DataError, match="2 of 3 rows are malformed"):
        load_prompts(str(path), skip_bad_rows=True)  # more than half: the file, not a few rows, is wrong


def test_files_in_the_wrong_form_say_what_they_are(tmp_path):
    import gzip

    row = {"messages": [{"role": "user", "content": "What is 1+1?"}], "ground_truth": "2"}
    text = (json.dumps(row) + "\r\n") * 3
    (tmp_path / "u16.jsonl").write_bytes(text.encode("utf-16"))  # as PowerShell's `>` writes it
    assert len(load_prompts(str(tmp_path / "u16.jsonl"))) == 3
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    with pytest.raises(DataError, match="is gzip-compressed") as packed:
        load_prompts(str(tmp_path / "d.jsonl.gz"))
    assert "gunzip" in packed.value.hint
    (tmp_path / "cut.json").write_text("[\n" + ",\n".join([json.dumps(row)] * 3)[:-20] + "\n")
    with pytest.raises(DataError, match="is one JSON array of rows, but it does not parse: .* at line 5"):
        load_prompts(str(tmp_path / "cut.json"))  # not one error per line, as JSONL
    lone = '{"messages": [{"role": "user", "content": "x \\ud800"}], "ground_truth": "2"}'
    pair = '{"messages": [{"role": "user", "content": "ok \\ud83d\\ude00"}], "ground_truth": "2"}'
    (tmp_path / "s.jsonl").write_text(f"{lone}\n{pair}\n")
    with pytest.raises(DataError, match="line 1: invalid Unicode: a lone surrogate"):
        load_prompts(str(tmp_path / "s.jsonl"))
    (tmp_path / "s.jsonl").write_text(f"{pair}\n")
    assert load_prompts(str(tmp_path / "s.jsonl"))[0].messages[0]["content"] == "ok \U0001f600"


def test_a_refused_write_names_the_file_and_leaves_nothing(tmp_path):
    """`ulimit -f` (or a full disk) fails a write with no file name: the error says which file."""
    import subprocess

    out = tmp_path / "rows.jsonl"
    command = f"ulimit -f 1; exec {sys.executable} -m openrft.cli data arithmetic --count 2000 --out {out}"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.strip() == f"{out}: File too large", done.stderr
    assert list(tmp_path.iterdir()) == []  # no half-written file, no temporary left behind
