"""The local engine on a tiny random Llama with the real tokenizer."""

from __future__ import annotations

import pytest
import torch

from openrft.errors import RolloutError
from openrft.records import Completion, Prompt, RolloutEngine, SamplingParams
from openrft.rollout.local import LocalEngine
from openrft.rollout.sampling import Truncation


@pytest.fixture(autouse=True, params=["eager", "slots"])
def step(request, monkeypatch) -> str:
    """Every test here runs with the eager step and with the fixed-slot step of a compiled engine.

    ``torch.compile`` is a no-op for these (tests/integration/test_compiled_step.py compiles for real).
    """
    if request.param == "slots":
        monkeypatch.setattr(LocalEngine, "compiling", lambda self: True)
        monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    return request.param


def make_prompts(count: int = 3) -> list[Prompt]:
    questions = [
        "What is 3 + 4?",
        "Add 12 and 30.",
        "Compute 7 * 6, then explain the steps in detail please.",
    ]
    return [
        Prompt(f"q{i}", ({"role": "user", "content": questions[i % len(questions)] + " " * (i // 3)},))
        for i in range(count)
    ]


def teacher_forced(model, completion: Completion, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of each completion token, from one forward pass over the whole sequence."""
    ids = list(completion.prompt_token_ids) + list(completion.completion_token_ids)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    start = len(completion.prompt_token_ids) - 1
    scaled = torch.log_softmax(logits[start:-1] / (temperature or 1.0), dim=-1)
    return scaled.gather(1, torch.tensor(completion.completion_token_ids)[:, None]).squeeze(1)


def tokens_of(groups: list[list[Completion]]) -> list[list[tuple[int, ...]]]:
    return [[c.completion_token_ids for c in group] for group in groups]


def test_records_shape_and_chat_template(tiny_model):
    model, tokenizer = tiny_model
    engine = LocalEngine(model, tokenizer, policy_version=3)
    assert isinstance(engine, RolloutEngine)
    prompts = make_prompts(2)
    groups = engine.generate(prompts, SamplingParams(n=3, max_tokens=6, seed=0))
    assert [[c.candidate_index for c in g] for g in groups] == [[0, 1, 2], [0, 1, 2]]
    expected_prompt = tokenizer.apply_chat_template(
        list(prompts[1].messages), add_generation_prompt=True, tokenize=False
    )
    for prompt, group in zip(prompts, groups, strict=True):
        for c in group:
            assert c.prompt_id == prompt.prompt_id and c.policy_version == 3
            assert len(c.logprobs) == len(c.completion_token_ids) <= 6
            assert all(lp <= 0 for lp in c.logprobs)
    assert tokenizer.decode(groups[1][0].prompt_token_ids) == expected_prompt
    assert engine.generate([], SamplingParams(n=2)) == []


def test_max_tokens_is_respected_and_reported(tiny_model):
    model, tokenizer = tiny_model
    engine = LocalEngine(model, tokenizer, stop_token_ids=[tokenizer.pad_token_id])
    for max_tokens in (1, 5, 17):
        groups = engine.generate(make_prompts(2), SamplingParams(n=2, max_tokens=max_tokens, seed=1))
        for c in (c for g in groups for c in g):
            assert len(c.completion_token_ids) <= max_tokens
            if c.finish_reason == "length":
                assert len(c.completion_token_ids) == max_tokens
                assert c.text == tokenizer.decode(list(c.completion_token_ids), skip_special_tokens=True)


def test_end_token_stops_and_is_kept_with_its_logprob(tiny_model):
    model, tokenizer = tiny_model
    stops = list(range(0, len(tokenizer), 4))  # a quarter of the vocabulary ends a response
    engine = LocalEngine(model, tokenizer, stop_token_ids=stops)
    groups = engine.generate(
        make_prompts(3), SamplingParams(n=4, max_tokens=30, temperature=1.0, top_k=0, seed=2)
    )
    completions = [c for g in groups for c in g]
    stopped = [c for c in completions if c.finish_reason == "stop"]
    assert len(stopped) >= 10 and len({len(c.completion_token_ids) for c in stopped}) > 1
    for c in completions:
        ends = [t % 4 == 0 for t in c.completion_token_ids]
        assert not any(ends[:-1])  # generation halts at the first end token
        assert ends[-1] == (c.finish_reason == "stop")
        assert len(c.logprobs) == len(c.completion_token_ids)
    for c in stopped:
        assert c.text == tokenizer.decode(list(c.completion_token_ids[:-1]), skip_special_tokens=True)


def test_default_end_token_is_the_chat_end_of_turn(tiny_model):
    model, tokenizer = tiny_model
    assert LocalEngine(model, tokenizer).stop_token_ids == (tokenizer.convert_tokens_to_ids("<|im_end|>"),)


@pytest.mark.parametrize(
    "how", [Truncation(0.0), Truncation(0.8, top_k=1), Truncation(1.5, top_k=1, top_p=0.3)]
)
def test_top_k_one_and_temperature_zero_equal_greedy_generate(tiny_model, how):
    model, tokenizer = tiny_model
    engine = LocalEngine(model, tokenizer, stop_token_ids=[tokenizer.eos_token_id])
    prompts = make_prompts(3)
    params = SamplingParams(n=2, temperature=how.temperature, top_k=how.top_k, top_p=how.top_p, max_tokens=12)
    groups = engine.generate(prompts, params)
    for prompt, group in zip(prompts, groups, strict=True):
        ids = torch.tensor([engine.encode(prompt)])
        with torch.no_grad():
            reference = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False
            )
        greedy = tuple(reference[0, ids.shape[1] :].tolist())
        assert [c.completion_token_ids for c in group] == [greedy, greedy]


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.7, 40, 1.0), (1.3, 0, 0.9), (0.5, 5, 0.8)]
)
def test_logprobs_match_a_teacher_forced_pass(tiny_model, temperature, top_k, top_p):
    model, tokenizer = tiny_model
    engine = LocalEngine(model, tokenizer, max_concurrent_rollouts=5)  # forces continuous batching
    params = SamplingParams(n=3, temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=20, seed=4)
    for c in (c for g in engine.generate(make_prompts(4), params) for c in g):
        reference = teacher_forced(model, c, temperature)
        assert (torch.tensor(c.logprobs) - reference).abs().max() <= 1e-4


def test_sampled_tokens_survive_truncation(tiny_model):
    model, tokenizer = tiny_model
    engine = LocalEngine(model, tokenizer)
    for top_k, top_p in ((3, 1.0), (0, 0.5), (10, 0.3)):
        params = SamplingParams(n=4, temperature=1.0, top_k=top_k, top_p=top_p, max_tokens=8, seed=5)
        for c in (c for g in engine.generate(make_prompts(2), params) for c in g):
            ids = list(c.prompt_token_ids) + list(c.completion_token_ids)
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, len(c.prompt_token_ids) - 1 : -1]
            for step, token in enumerate(c.completion_token_ids):
                probs = torch.softmax(logits[step], -1)
                order = torch.argsort(probs, descending=True)
                rank = int((order == token).nonzero())
                if top_k:
                    assert rank < top_k
                kept = probs[order[: top_k or None]]
                kept = kept / kept.sum()
                assert float(kept[:rank].sum()) < top_p + 1e-5


def test_fixed_seed_is_deterministic_and_batch_independent(tiny_model):
    model, tokenizer = tiny_model
    prompts = make_prompts(4)
    params = SamplingParams(n=3, temperature=1.0, top_k=20, top_p=0.95, max_tokens=10, seed=11)
    stops = list(range(0, len(tokenizer), 5))  # uneven lengths exercise dropping and refilling rows
    runs = []
    for concurrency in (1, 4, 64):
        engine = LocalEngine(model, tokenizer, max_concurrent_rollouts=concurrency, stop_token_ids=stops)
        runs.append(engine.generate(prompts, params))
    assert tokens_of(runs[0]) == tokens_of(runs[1]) == tokens_of(runs[2])
    lp = [torch.tensor([x for g in run for c in g for x in c.logprobs]) for run in runs]
    assert torch.allclose(lp[0], lp[2], atol=1e-5)
    engine = LocalEngine(model, tokenizer, stop_token_ids=stops)
    # the same prompt alone, or behind others, samples the same candidates
    alone = engine.generate([prompts[2]], params)
    reordered = engine.generate(prompts[::-1], params)
    assert tokens_of(alone)[0] == tokens_of(runs[0])[2] == tokens_of(reordered)[1]
    other_seed = engine.generate(prompts, SamplingParams(**{**params.__dict__, "seed": 12}))
    assert tokens_of(other_seed) != tokens_of(runs[0])
    # candidates of one prompt differ from each other
    assert len(set(tokens_of(runs[0])[0])) == 3


def test_unseeded_calls_differ(tiny_model):
    model, tokenizer = tiny_model
    engine = LocalEngine(model, tokenizer)
    params = SamplingParams(n=2, temperature=1.0, top_k=0, max_tokens=8)
    assert tokens_of(engine.generate(make_prompts(1), params)) != tokens_of(
        engine.generate(make_prompts(1), params)
    )


def test_more_candidates_than_concurrency(tiny_model):
    model, tokenizer = tiny_model
    params = SamplingParams(n=5, max_tokens=6, seed=3)
    small = LocalEngine(model, tokenizer, max_concurrent_rollouts=2).generate(make_prompts(2), params)
    large = LocalEngine(model, tokenizer, max_concurrent_rollouts=32).generate(make_prompts(2), params)
    assert [len(g) for g in small] == [5, 5]
    assert tokens_of(small) == tokens_of(large)


def test_samples_from_a_live_peft_model_and_restores_its_mode(tiny_model):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny_model
    prompts, params = make_prompts(2), SamplingParams(n=2, temperature=1.0, top_k=0, max_tokens=10, seed=6)
    base = LocalEngine(model, tokenizer).generate(prompts, params)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    peft_model.train()
    engine = LocalEngine(peft_model, tokenizer)
    adapted = engine.generate(prompts, params)
    assert tokens_of(adapted) != tokens_of(base)
    for c in (c for g in adapted for c in g):
        assert (torch.tensor(c.logprobs) - teacher_forced(peft_model, c, 1.0)).abs().max() <= 1e-4
    assert peft_model.training and all(m.training for m in peft_model.modules())
    with peft_model.disable_adapter():  # same object, adapter off: back to the base model's samples
        assert tokens_of(engine.generate(prompts, params)) == tokens_of(base)


def test_context_window_limits(tiny_model):
    from openrft.testing import tiny_model as build

    model, tokenizer = build(max_position_embeddings=48)
    engine = LocalEngine(model, tokenizer, stop_token_ids=[tokenizer.pad_token_id])
    prompt_length = len(engine.encode(make_prompts(1)[0]))
    groups = engine.generate(make_prompts(1), SamplingParams(n=1, max_tokens=100, seed=0))
    assert len(groups[0][0].completion_token_ids) == 48 - prompt_length
    long = Prompt("long", ({"role": "user", "content": "word " * 60},))
    with pytest.raises(RolloutError, match="context"):
        engine.generate([long], SamplingParams(n=1, max_tokens=4))


@pytest.mark.embedded
def test_embedded_model_quick_rollout():
    from openrft.models import EMBEDDED_MODEL, load_model

    model, tokenizer = load_model(EMBEDDED_MODEL)
    engine = LocalEngine(model, tokenizer)
    prompt = Prompt("sum", ({"role": "user", "content": "What is 3 + 4?"},))
    greedy = engine.generate([prompt], SamplingParams(n=2, top_k=1, max_tokens=16))[0]
    assert greedy[0].completion_token_ids == greedy[1].completion_token_ids
    assert "7" in greedy[0].text
    sampled = engine.generate(
        [prompt], SamplingParams(n=2, temperature=0.7, top_k=40, max_tokens=16, seed=0)
    )[0]
    for c in sampled:
        assert (torch.tensor(c.logprobs) - teacher_forced(model, c, 0.7)).abs().max() <= 1e-4
        if c.finish_reason == "stop":
            assert tokenizer.convert_ids_to_tokens(c.completion_token_ids[-1]) == "<|im_end|>"


def test_rows_in_flight_stay_within_the_bound(tiny_model):
    model, tokenizer = tiny_model
    engine = LocalEngine(
        model, tokenizer, max_concurrent_rollouts=5, stop_token_ids=list(range(0, len(tokenizer), 7))
    )
    batch_sizes, prefill_prompts = [], []
    forward = engine.forward

    def recording(input_ids, *args):
        (batch_sizes if input_ids.shape[1] == 1 else prefill_prompts).append(input_ids.shape[0])
        return forward(input_ids, *args)

    engine.forward = recording
    groups = engine.generate(make_prompts(4), SamplingParams(n=3, max_tokens=12, seed=8))
    assert [len(g) for g in groups] == [3, 3, 3, 3]
    assert max(batch_sizes) == 5
    assert sum(prefill_prompts) == 4  # one prefill per prompt, although candidates joined at different times


def test_prompts_with_the_same_tokens_share_one_prefill(tiny_model):
    """An agent's candidates each send the same first request: one prefill, their own samples."""
    from openrft.testing import tiny_model as build

    # in float64: alone and batched run different matmul shapes, whose float32 rounding can move a
    # sample across a boundary of the near-uniform distribution of a random model (seen on an AMD CPU)
    _, tokenizer = tiny_model
    model, _ = build(seed=0)
    model.to(torch.float64)
    engine = LocalEngine(model, tokenizer, max_concurrent_rollouts=6)
    prefill_prompts = []
    forward = engine.forward

    def recording(input_ids, *args):
        if input_ids.shape[1] > 1:
            prefill_prompts.append(input_ids.shape[0])
        return forward(input_ids, *args)

    engine.forward = recording
    ids = engine.encode(make_prompts(1)[0])
    other = engine.encode(make_prompts(2)[1])
    items = [("a#0", ids), ("a#1", ids), ("b", other), ("a#2", ids), ("a#3", ids), ("a#4", ids)]
    params = SamplingParams(n=1, temperature=1.0, top_k=0, max_tokens=8, seed=5)
    groups = engine.generate_from_ids(items, params)
    assert sum(prefill_prompts) == 2  # a's tokens once, b's once
    samples = [g[0].completion_token_ids for g in groups]
    assert len({samples[i] for i in (0, 1, 3, 4, 5)}) > 1  # each name keeps its own random stream
    engine.forward = forward
    for (name, tokens), (got,) in zip(items, groups, strict=True):  # and the same samples one at a time
        (alone,) = engine.generate_from_ids([(name, tokens)], params)[0]
        assert alone.completion_token_ids == got.completion_token_ids
        assert max(abs(a - b) for a, b in zip(alone.logprobs, got.logprobs, strict=True)) < 1e-4


def test_eager_attention_gives_the_same_samples(tiny_model):
    from openrft.testing import tiny_model as build

    # in float64, so that the two attention kernels' rounding cannot flip a sampled token
    _, tokenizer = tiny_model
    model, _ = build(seed=0)
    model.to(torch.float64)
    eager, _ = build(seed=0)
    eager.to(torch.float64)
    eager.set_attn_implementation("eager")
    assert eager.config._attn_implementation == "eager"
    params = SamplingParams(n=2, temperature=1.0, top_k=0, max_tokens=8, seed=9)
    stops = list(range(0, len(tokenizer), 5))
    with_sdpa = LocalEngine(model, tokenizer, max_concurrent_rollouts=3, stop_token_ids=stops).generate(
        make_prompts(3), params
    )
    with_eager = LocalEngine(eager, tokenizer, max_concurrent_rollouts=3, stop_token_ids=stops).generate(
        make_prompts(3), params
    )
    assert tokens_of(with_sdpa) == tokens_of(with_eager)
    for c in (c for g in with_eager for c in g):
        assert (torch.tensor(c.logprobs) - teacher_forced(eager, c, 1.0)).abs().max() <= 1e-4


def test_stop_strings_end_a_response_and_stay_in_its_text(tiny_model):
    model, tokenizer = tiny_model
    engine = LocalEngine(model, tokenizer, stop_token_ids=[tokenizer.eos_token_id])
    params = SamplingParams(n=4, temperature=1.0, top_k=50, max_tokens=12, seed=3)
    free = engine.generate(make_prompts(2), params)
    # stop on text that a seeded sample spells somewhere after its second token
    sample = free[0][1]
    stop = tokenizer.decode(list(sample.completion_token_ids[1:4]))
    assert stop.strip(), "the tiny model should spell visible text"
    cut = engine.generate(make_prompts(2), SamplingParams(**{**params.__dict__, "stop": (stop,)}))
    for before_group, after_group in zip(free, cut, strict=True):
        for before, after in zip(before_group, after_group, strict=True):
            ids = after.completion_token_ids
            assert before.completion_token_ids[: len(ids)] == ids  # same stream, cut earlier
            text = tokenizer.decode(list(ids))
            if after.finish_reason == "stop" and stop in text:
                assert after.text.endswith(stop) and after.text.count(stop) == 1
                assert stop not in tokenizer.decode(list(ids[:-1]))  # ended at the first match
            else:
                assert stop not in text and after.completion_token_ids == before.completion_token_ids
    hit = cut[0][1]
    assert hit.finish_reason == "stop" and len(hit.completion_token_ids) <= 4 and hit.text.endswith(stop)


def test_a_stop_string_that_ends_inside_a_token_cuts_the_text_there(tiny_model):
    """The token holding the stop's last character is kept (its id was sampled), its text is cut."""
    model, tokenizer = tiny_model
    engine = LocalEngine(model, tokenizer, stop_token_ids=[tokenizer.eos_token_id])
    params = SamplingParams(n=4, temperature=1.0, top_k=50, max_tokens=12, seed=3)
    free = engine.generate(make_prompts(2), params)
    g, c = next((g, c) for g, group in enumerate(free) for c, sample in enumerate(group)
                if len(tokenizer.decode(list(sample.completion_token_ids[3:4])).strip()) > 1)  # fmt: skip
    sample = free[g][c]
    whole = tokenizer.decode(list(sample.completion_token_ids[1:4]))
    stop = whole[:-1]  # ends one character before the end of the sample's fourth token
    assert stop.strip()
    cut = engine.generate(make_prompts(2), SamplingParams(**{**params.__dict__, "stop": (stop,)}))
    hit = cut[g][c]
    text = tokenizer.decode(list(hit.completion_token_ids))
    assert hit.finish_reason == "stop" and text.endswith(whole[-1]) and text.count(stop) == 1
    assert hit.text == text[: text.index(stop) + len(stop)] and hit.text.endswith(stop)


def test_a_finished_row_s_idle_samples_never_change_its_finish_reason(tiny_model):
    """Rows that ended stay in the batch until it is compacted and are sampled with the rest; an end
    token drawn for such a row must not turn its "length" into "stop"."""
    model, tokenizer = tiny_model
    ends = list(range(0, len(tokenizer), 8))  # an eighth of the vocabulary ends a response
    engine = LocalEngine(model, tokenizer, stop_token_ids=ends, max_concurrent_rollouts=32)
    groups = engine.generate(make_prompts(4), SamplingParams(n=16, temperature=1.0, max_tokens=8, seed=5))
    reasons = {"stop": 0, "length": 0}
    for c in (c for g in groups for c in g):
        reasons[c.finish_reason] += 1
        ended_by_token = c.completion_token_ids[-1] in set(ends)
        assert c.finish_reason == ("stop" if ended_by_token else "length"), c
        assert c.finish_reason == "stop" or len(c.completion_token_ids) == 8
    assert min(reasons.values()) >= 5  # both kinds, rows of different ages side by side


def test_stop_strings_checked_only_after_tokens_that_can_end_them(tiny_model):
    """The token-id prefilter skips the decoded-tail check without changing a single result."""
    from openrft.rollout.sampling import stop_string_enders

    model, tokenizer = tiny_model
    vocab = model.get_output_embeddings().weight.shape[0]
    enders_V = stop_string_enders(tokenizer, ("</answer>",), vocab)
    assert enders_V is not None and 0 < int(enders_V.sum()) < vocab // 20
    gt = tokenizer.convert_tokens_to_ids(">")
    assert enders_V[gt] and not enders_V[tokenizer.convert_tokens_to_ids("answer")]
    cut_short = next(i for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i]))
    assert enders_V[cut_short]  # part of a multi-byte character: may complete one in context
    assert stop_string_enders(tokenizer, ("done", "\n"), vocab) is None  # whitespace: no filter

    free = LocalEngine(model, tokenizer, stop_token_ids=[tokenizer.eos_token_id]).generate(
        make_prompts(3), SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=11)
    )
    # stops spelled by the samples themselves, ending in a visible character, often multi-byte
    stops = tuple(
        text
        for c in (free[0][0], free[1][2], free[2][3])
        if (text := tokenizer.decode(list(c.completion_token_ids[2:4]))).strip() and not text[-1].isspace()
    )
    assert stops
    params = SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=11, stop=stops)
    filtered = LocalEngine(model, tokenizer, stop_token_ids=[tokenizer.eos_token_id])
    unfiltered = LocalEngine(model, tokenizer, stop_token_ids=[tokenizer.eos_token_id])
    unfiltered.stop_enders = lambda stops: None
    assert filtered.stop_enders(stops) is not None
    with_filter, without = (
        filtered.generate(make_prompts(3), params),
        unfiltered.generate(make_prompts(3), params),
    )
    assert [[(c.completion_token_ids, c.text, c.finish_reason) for c in g] for g in with_filter] == [
        [(c.completion_token_ids, c.text, c.finish_reason) for c in g] for g in without
    ]
    assert any(c.finish_reason == "stop" for g in with_filter for c in g)


def test_rebuilding_in_place_samples_what_new_buffers_sample(tiny_model, monkeypatch, step):
    """Admitting rows into free slots and filling finished rows' slots moves no other row's cache."""
    from openrft.rollout import decode

    if step == "slots":
        pytest.skip("the eager run's rebuilds: a slot run never moves a row")

    model, tokenizer = tiny_model
    params = SamplingParams(n=3, temperature=1.0, top_k=20, max_tokens=16, seed=5)
    stops = list(range(0, len(tokenizer), 6))  # uneven lengths: rows finish while others go on

    def run() -> list[list[Completion]]:
        engine = LocalEngine(model, tokenizer, max_concurrent_rollouts=6, stop_token_ids=stops)
        return engine.generate(make_prompts(6), params)

    in_place: list[bool] = []
    spied = decode.Run._rebuild_in_place

    def spy(self, kept_B, fresh):
        in_place.append(fresh is not None)
        return spied(self, kept_B, fresh)

    monkeypatch.setattr(decode.Run, "_rebuild_in_place", spy)
    reused = run()
    assert True in in_place and False in in_place  # admissions and compactions both stayed in place
    monkeypatch.setattr(decode.Run, "_fits", lambda self, kept_B, fresh: False)
    fresh_buffers = run()
    assert tokens_of(reused) == tokens_of(fresh_buffers)
    lp = [torch.tensor([x for g in r for c in g for x in c.logprobs]) for r in (reused, fresh_buffers)]
    assert torch.allclose(lp[0], lp[1], atol=1e-5)


@pytest.mark.parametrize("temperature", [0.7, 0.0])
def test_top_logprobs_are_the_teacher_forced_alternatives_and_change_no_sample(tiny_model, temperature):
    model, tokenizer = tiny_model
    engine = LocalEngine(model, tokenizer, max_concurrent_rollouts=4)  # rows join and leave mid-run
    plain = SamplingParams(n=3, temperature=temperature, top_k=20, max_tokens=12, seed=8)
    wanted = SamplingParams(n=3, temperature=temperature, top_k=20, max_tokens=12, seed=8, top_logprobs=5)
    groups = engine.generate(make_prompts(3), wanted)
    assert tokens_of(groups) == tokens_of(engine.generate(make_prompts(3), plain))
    for c in (c for g in groups for c in g):
        assert len(c.top_logprobs) == len(c.completion_token_ids) and c.top_logprobs[0]
        ids = list(c.prompt_token_ids) + list(c.completion_token_ids)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, len(c.prompt_token_ids) - 1 : -1].float()
        reference_TV = torch.log_softmax(logits / (temperature or 1.0), dim=-1)
        best_T5, order_T5 = reference_TV.topk(5, dim=-1)
        for t, top in enumerate(c.top_logprobs):
            assert [token for token, _ in top] == order_T5[t].tolist()
            assert max(abs(lp - float(r)) for (_, lp), r in zip(top, best_T5[t], strict=True)) <= 1e-4
            by_token = dict(top)
            if c.completion_token_ids[t] in by_token:  # the sampled token's own log-prob is the same number
                assert by_token[c.completion_token_ids[t]] == pytest.approx(c.logprobs[t], abs=1e-6)
        if temperature == 0:
            assert [top[0][0] for top in c.top_logprobs] == list(c.completion_token_ids)  # greedy: the best
    assert all(c.top_logprobs == () for g in engine.generate(make_prompts(1), plain) for c in g)
