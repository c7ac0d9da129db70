"""A training step: micro-batching does not change the gradient; batching plans respect budgets."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from openrft.algo.losses import resolve_loss
from openrft.records import Completion
from openrft.train.batching import TrainSequence, collate, padded_cost, plan_micro_batches, plan_steps
from openrft.train.policy import attach_lora, reference_policy
from openrft.train.step import StepLoss, accumulate_gradients, batch_logprobs, plan_step
from oracles import sequence_logprobs


def _sequences(model, tokenizer, lengths, advantages, temperature=0.7, seed=0):
    """Completions of random tokens whose old log-probs are the model's own (as a rollout records them)."""
    gen = torch.Generator().manual_seed(seed)
    seqs = []
    for i, (length, adv) in enumerate(zip(lengths, advantages, strict=True)):
        prompt = torch.randint(10, 1000, (3 + i % 3,), generator=gen).tolist()
        comp = torch.randint(10, 1000, (length,), generator=gen).tolist()
        ids = torch.tensor([prompt + comp])
        mask = torch.tensor([[0] * len(prompt) + [1] * length])
        with torch.no_grad():
            logp = sequence_logprobs(model, ids, torch.ones_like(ids), mask, temperature)[0, len(prompt) :]
        completion = Completion(f"p{i}", 0, tuple(prompt), tuple(comp), "", tuple(logp.tolist()), "length")
        seqs.append(TrainSequence(completion, adv, i))
    return seqs


def _lora_off_zero(model, std):
    """``model`` with a LoRA adapter whose B matrices are moved off zero, so a step is not trivially on the reference."""
    model = attach_lora(model, rank=4, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
    return model


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize(
    ("method", "length_norm"), [("grpo", False), ("dapo", False), ("gspo-token", False), ("dapo", True)]
)
def test_micro_batches_give_the_whole_step_gradient(tiny_model, method, length_norm):
    model, tokenizer = tiny_model
    model = _lora_off_zero(model, 0.05)
    settings = StepLoss(*resolve_loss(method, 0.0, length_norm), 0.7)
    seqs = _sequences(model, tokenizer, [5, 9, 2, 7, 4, 6], [1.0, -0.5, 0.3, -1.2, 0.8, 0.0])
    results = {}
    for budget in (10_000, 24):
        batches, dropped = plan_step(seqs, budget, tokenizer.pad_token_id)
        model.zero_grad(set_to_none=True)
        metrics = accumulate_gradients(model, batches, settings)
        results[budget] = (len(batches), metrics["loss/step"], _grads(model))
    (n_whole, loss_whole, g_whole), (n_micro, loss_micro, g_micro) = results[10_000], results[24]
    assert n_whole == 1 and n_micro >= 3
    assert loss_micro == pytest.approx(loss_whole, abs=1e-6)
    for name, grad in g_whole.items():
        torch.testing.assert_close(g_micro[name], grad, atol=1e-5, rtol=1e-3)


def test_first_update_ratio_is_one(tiny_model):
    model, tokenizer = tiny_model
    model = attach_lora(model, rank=4, seed=0)
    seqs = _sequences(model, tokenizer, [6, 3, 8], [1.0, -1.0, 0.5])
    batches, _ = plan_step(seqs, 10_000, tokenizer.pad_token_id)
    metrics = accumulate_gradients(model, batches, StepLoss(*resolve_loss("grpo"), 0.7))
    assert metrics["ratio/mean"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["ratio/min"] == pytest.approx(1.0, abs=1e-4) and metrics["ratio/max"] == pytest.approx(
        1.0, abs=1e-4
    )
    assert metrics["kl/mean"] == pytest.approx(0.0, abs=1e-6)  # fresh adapter == reference


def test_reference_policy_is_the_base_model(tiny_model):
    model, tokenizer = tiny_model
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    with torch.no_grad():
        base = sequence_logprobs(model, ids, torch.ones_like(ids), mask)
    peft_model = attach_lora(model, rank=4, seed=0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        moved = sequence_logprobs(peft_model, ids, torch.ones_like(ids), mask)
        with reference_policy(peft_model):
            ref = sequence_logprobs(peft_model, ids, torch.ones_like(ids), mask)
    assert not torch.allclose(moved, base)
    torch.testing.assert_close(ref, base)


def test_zero_advantage_micro_batches_are_dropped():
    seqs = [_seq(6, adv) for adv in (0.0, 0.0, 1.0, -1.0)]
    batches, dropped = plan_step(seqs, 9, pad_token_id=0)  # shared prompt 4 + 2 rows x 2 = 8: pairs
    assert dropped == 1 and len(batches) == 1
    assert batches[0].advantages_R.tolist() == [1.0, -1.0]


def _seq(n_tokens, adv=1.0):
    c = Completion("p", 0, (1,) * (n_tokens - 2), (2, 3), "", (0.0, 0.0), "stop")
    return TrainSequence(c, adv, 0)


def test_plan_steps_token_budget_and_sample_cap():
    seqs = [_seq(n) for n in (100, 200, 300, 400, 50)]
    assert plan_steps(seqs, 500) == [[0, 1], [2], [3, 4]]
    assert plan_steps(seqs, 10_000, batch_samples=2) == [[0, 1], [2, 3], [4]]
    assert plan_steps([_seq(900)], 500) == [[0]]  # an over-long sequence trains alone
    for step in plan_steps(seqs, 600):
        assert sum(seqs[i].num_tokens for i in step) <= 600 or len(step) == 1


def test_micro_batches_bound_padded_tokens_and_keep_groups_together():
    def seq(prompt, n):
        return TrainSequence(Completion("p", 0, prompt, (5,) * n, "", (0.0,) * n, "stop"), 1.0, 0)

    seqs = [seq((1, 2, 3), 4), seq((7, 8), 9), seq((1, 2, 3), 6), seq((7, 8), 2), seq((1, 2, 3), 5)]
    groups = plan_micro_batches(seqs, 24)
    assert sorted(i for g in groups for i in g) == list(range(5))
    for group in groups:
        assert padded_cost([seqs[i] for i in group]) <= 24 or len(group) == 1
    assert [0, 2, 4] in [sorted(g) for g in groups]  # one prompt, one forward: 3 + 3 x 6 = 21 tokens


def test_collate_shares_prompts_and_aligns_old_logprobs():
    a = Completion("p", 0, (7, 8, 9), (10, 11), "", (-0.5, -1.5), "stop")
    b = Completion("p", 1, (7, 8, 9), (12,), "", (-0.25,), "stop")
    c = Completion("q", 0, (4, 5), (13, 14), "", (-1.0, -2.0), "length")
    batch = collate([TrainSequence(x, 1.0, 0) for x in (a, b, c)], pad_token_id=0)
    assert batch.prompt_ids_GP.tolist() == [[7, 8, 9], [0, 4, 5]]  # each prompt once, left-padded
    assert batch.prompt_mask_GP.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert batch.row_group_R.tolist() == [0, 0, 1]
    assert batch.completion_ids_RC.tolist() == [[10, 11], [12, 0], [13, 14]]
    assert batch.completion_mask_RC.tolist() == [[1, 1], [1, 0], [1, 1]]
    assert batch.old_logprobs_RC.tolist() == [[-0.5, -1.5], [-0.25, 0.0], [-1.0, -2.0]]
    assert batch.num_tokens == 5 + 4 + 4


def test_shared_prompt_logprobs_equal_full_sequence_logprobs(tiny_model):
    model, tokenizer = tiny_model
    model = _lora_off_zero(model, 0.1)
    seqs = _sequences(model, tokenizer, [5, 3, 7, 2], [1.0, -1.0, 0.5, 0.2])
    seqs = [
        seqs[0],
        TrainSequence(
            replace(seqs[1].completion, prompt_token_ids=seqs[0].completion.prompt_token_ids), 1.0, 0
        ),
        *seqs[2:],
    ]
    batch = collate(seqs, tokenizer.pad_token_id)
    assert batch.prompt_ids_GP.shape[0] == 3  # two rows share a prompt
    shared = batch_logprobs(model, batch, 0.7)
    shared.sum().backward()
    g_shared = _grads(model)
    model.zero_grad(set_to_none=True)
    total = 0
    for r, s in enumerate(seqs):
        c = s.completion
        ids = torch.tensor([c.prompt_token_ids + c.completion_token_ids])
        mask = torch.tensor([[0] * len(c.prompt_token_ids) + [1] * len(c.completion_token_ids)])
        full = sequence_logprobs(model, ids, torch.ones_like(ids), mask, 0.7)[0, len(c.prompt_token_ids) :]
        n = len(c.completion_token_ids)
        torch.testing.assert_close(shared[r, :n].detach(), full.detach(), atol=1e-4, rtol=1e-5)
        assert shared[r, n:].abs().sum() == 0
        total = total + full.sum()
    total.backward()
    for name, grad in _grads(model).items():
        torch.testing.assert_close(g_shared[name], grad, atol=1e-4, rtol=1e-4)


def test_micro_batches_sort_by_length_when_that_pads_less():
    def seq(prompt, n):
        return TrainSequence(Completion("p", 0, prompt, (5,) * n, "", (0.0,) * n, "stop"), 1.0, 0)

    # two prompts, each with one long and three short candidates: grouping by prompt pads
    # every short row to the long one; sorting by length pads almost nothing
    seqs = [seq((1, 2), n) for n in (40, 2, 2, 2)] + [seq((3, 4), n) for n in (40, 2, 2, 2)]
    groups = plan_micro_batches(seqs, 90)
    assert sorted(map(sorted, groups)) == [[0, 4], [1, 2, 3, 5, 6, 7]]


class _Recorder:
    """An optimizer that keeps the gradients of each update instead of applying them."""

    def __init__(self, model):
        self.model, self.param_groups, self.updates = model, [{"lr": 1.0}], []

    def step(self):
        self.updates.append(_grads(self.model))

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


def _updates(model, steps, method, micro_batch_tokens, accumulation, length_norm=False):
    """The gradient of each optimizer update when the loop trains ``steps`` (lists of sequences)."""
    from types import SimpleNamespace

    from openrft.train.checkpoint import LoopState
    from openrft.train.loop import flush_gradients, train_step

    batching = SimpleNamespace(micro_batch_tokens=micro_batch_tokens, accumulation_steps=accumulation,
                               max_grad_norm=0.0)  # fmt: skip
    schedule = SimpleNamespace(eval_every=0, checkpoint_every=10**6)
    optimizer = _Recorder(model)
    logged = []
    ctx = SimpleNamespace(settings=SimpleNamespace(batching=batching, schedule=schedule), model=model,
                          pad_token_id=0, optimizer=optimizer, scheduler=SimpleNamespace(step=lambda: None),
                          sink=SimpleNamespace(log=lambda step, m: logged.append(m)),
                          publish_policy=lambda version: None, train_prompts=[])  # fmt: skip
    state = LoopState(pending=[list(s) for s in steps])
    loss = StepLoss(*resolve_loss(method, 0.0, length_norm), 0.7)
    model.zero_grad(set_to_none=True)
    while state.pending:
        train_step(ctx, state, loss)
    flush_gradients(ctx, state)
    return optimizer.updates, logged


@pytest.mark.parametrize("method", ["grpo", "dapo", "gspo-token"])
def test_an_update_s_gradient_depends_on_its_sequences_only(tiny_model, method):
    """Not on the memory knob (micro-batches, those of zero-advantage sequences left out included), nor
    on how the update's sequences fall into accumulated steps: one token-mean (or sequence mean) over
    the update, as TRL's and verl's losses are. (grpo's KL term is the exception the reference guide
    makes: a zero-advantage micro-batch is left out for every method, its pull toward the reference too.)"""
    model, tokenizer = tiny_model
    model = _lora_off_zero(model, 0.05)
    # two prompts' groups; a zero-advantage sequence fills a micro-batch of its own at budget 16
    seqs = _sequences(model, tokenizer, [9, 8, 2, 2, 7, 3], [1.0, -0.5, 0.0, 0.0, -1.2, 0.6])
    whole, _ = _updates(model, [seqs], method, 10_000, 1)
    small, logged = _updates(model, [seqs], method, 16, 1)
    assert (
        logged[0]["filter/zero_advantage_micro_batches"] >= 1
    )  # every method: the guide's chunk-level filter
    split, _ = _updates(model, [seqs[:2], seqs[2:]], method, 10_000, 2)  # 2 and 4 sequences, accumulated
    assert len(whole) == len(small) == len(split) == 1
    for name, grad in whole[0].items():
        if method != "grpo":  # no KL term: the left-out micro-batch had no gradient at all
            torch.testing.assert_close(small[0][name], grad, atol=1e-5, rtol=1e-3)  # float rounding; the
        torch.testing.assert_close(split[0][name], grad, atol=1e-5, rtol=1e-3)  # defects were 5-45% off


@pytest.mark.parametrize(("method", "length_norm"), [("dapo", False), ("gspo-token", False), ("dapo", True)])
def test_an_update_s_gradient_is_its_loss_s_own_by_autograd(tiny_model, method, length_norm):
    """The absolute scale too (the split test above compares splits with each other): the loop's update
    equals autograd of the registered loss over all the update's sequences at once, with agent-style
    masks (a tool's tokens inside a completion are not the model's and count nowhere)."""
    from openrft.algo.losses import policy_loss
    from openrft.train.step import step_denominator_of

    model, tokenizer = tiny_model
    model = _lora_off_zero(model, 0.05)
    seqs = _sequences(model, tokenizer, [9, 6, 4, 7], [1.0, -0.5, 0.7, -1.2])
    tool = (1, 1, 0, 0, 0, 1, 1, 1, 1)  # three of the first sequence's tokens were a tool's answer
    seqs[0] = replace(seqs[0], completion=replace(seqs[0].completion, completion_mask=tool))
    spec = resolve_loss(method, 0.0, length_norm)[1]
    assert step_denominator_of(spec.aggregation, seqs) == (
        4 if length_norm or method == "gspo-token" else 6 + 6 + 4 + 7
    )
    logps, olds, masks = [], [], []
    for s in seqs:
        c = s.completion
        ids = torch.tensor([c.prompt_token_ids + c.completion_token_ids])
        prompt_mask = torch.tensor([[0] * len(c.prompt_token_ids) + [1] * len(c.completion_token_ids)])
        logps.append(
            sequence_logprobs(model, ids, torch.ones_like(ids), prompt_mask, 0.7)[
                0, len(c.prompt_token_ids) :
            ]
        )
        olds.append(torch.tensor(c.logprobs))
        masks.append(
            torch.tensor(c.completion_mask or (1,) * len(c.completion_token_ids), dtype=torch.float32)
        )
    pad = lambda rows: torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # noqa: E731
    advantages_B = torch.tensor([s.advantage for s in seqs])
    model.zero_grad(set_to_none=True)
    loss, _ = policy_loss(spec, pad(logps), pad(olds), advantages_B, pad(masks))
    loss.backward()
    expected = _grads(model)
    (update,), _ = _updates(model, [seqs], method, 10_000, 1, length_norm)
    assert expected and update.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(update[name], grad, atol=1e-5, rtol=1e-3)  # a wrong scale is >= 10% off


def test_lora_goes_on_every_projection_but_not_on_a_mixture_of_experts_router():
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    from openrft.train.policy import lora_target_modules

    config = Qwen2MoeConfig(vocab_size=100, hidden_size=16, intermediate_size=32, moe_intermediate_size=8,
                            shared_expert_intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                            num_key_value_heads=1, num_experts=4, num_experts_per_tok=2)  # fmt: skip
    targets = lora_target_modules(Qwen2MoeForCausalLM(config))
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(targets)
    assert "shared_expert_gate" not in targets and "gate" not in targets and "lm_head" not in targets

    class Block(torch.nn.Module):  # routers under other names: Llama-4's and Jamba's, DBRX's
        def __init__(self):
            super().__init__()
            self.q_proj, self.router = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
            self.ffn = torch.nn.ModuleDict({"router": torch.nn.ModuleDict({"layer": torch.nn.Linear(4, 2)}),
                                            "w1": torch.nn.Linear(4, 8)})  # fmt: skip

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers, self.lm_head = torch.nn.ModuleList([Block()]), torch.nn.Linear(4, 10)

        def get_output_embeddings(self):
            return self.lm_head

    assert lora_target_modules(Model()) == ["q_proj", "w1"]
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    assert lora_target_modules(gpt2) == ["c_attn", "c_fc", "c_proj"]  # Conv1D, not nn.Linear
    policy = attach_lora(gpt2, rank=2, seed=0)
    policy(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    assert all(p.grad is not None for n, p in policy.named_parameters() if "lora_A" in n)


def test_a_micro_batch_with_no_sampled_token_is_never_trained(tiny_model):
    """An agent sequence whose calls sampled nothing (mask all 0) alone in a micro-batch: with an advantage
    it passes the zero-advantage filter, but it would have no loss to backpropagate."""
    model, tokenizer = tiny_model
    model = attach_lora(model, rank=4, seed=0)
    seqs = _sequences(model, tokenizer, [9, 3], [-1.0, 1.0])
    seqs[0] = replace(seqs[0], completion=replace(seqs[0].completion, completion_mask=(0,) * 9))
    batches, dropped = plan_step(seqs, 14, tokenizer.pad_token_id)
    assert dropped == 0 and [b.num_sequences for b in batches] == [1]  # (dropped: zero advantage only)
    accumulate_gradients(model, batches, StepLoss(*resolve_loss("grpo"), 0.7))  # no error
