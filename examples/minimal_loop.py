"""Reinforcement fine-tuning in one file, on openrft's public pieces: sample, score, advantages, loss, step.

    python examples/minimal_loop.py                 # dapo, 12 steps on the embedded model (~2 min on 2 cores)
    python examples/minimal_loop.py --method grpo --steps 4

It teaches the embedded SmolLM2-135M-Instruct to answer single-digit additions inside
``<answer></answer>`` tags, the task of ``openrft quickstart``, and prints each step's reward.
Read it top to bottom: each step of :func:`rl_step` is one line of the algorithm.

Where it departs from ``openrft rftj create`` (``openrft/train/loop.py``), to stay short:
one optimizer step per round (always on-policy, so the clipped ratio starts at 1), the whole
round in one forward/backward pass (no token-budget steps or micro-batches), no evaluation
set, no checkpoints, no resume. The loss is the same registered function either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence

import torch

from openrft.algo.advantages import scored_group_advantages
from openrft.algo.filtering import filter_scored_groups
from openrft.algo.losses import LOSS_METHODS, LossFn, LossSpec, resolve_loss
from openrft.data import load_prompts
from openrft.evaluators import load_evaluator, score_groups
from openrft.models import load_model
from openrft.records import Completion, Prompt, SamplingParams, Score, ScoredGroup
from openrft.rollout.local import LocalEngine
from openrft.train.batching import TrainSequence, collate
from openrft.train.logprobs import completion_logprobs
from openrft.train.policy import attach_lora, reference_policy, trainable_parameters

Scorer = Callable[[Sequence[Prompt], list[list[Completion]]], list[list[Score]]]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The knobs of this loop (the names of ``openrft rftj create``'s flags)."""

    method: str = "dapo"
    steps: int = 12
    prompts_per_step: int = 8  # --chunk-size
    candidates: int = 8  # --response-candidates-count
    max_output_tokens: int = 40
    temperature: float = 0.7
    top_k: int = 40
    learning_rate: float = 5e-4
    lora_rank: int = 16
    max_grad_norm: float = 1.0
    seed: int = 7
    evaluator: str = "arithmetic:partial_weight=0"  # 0.2 for a number in tags, +0.8 when it is right


def rl_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    engine: LocalEngine,
    score: Scorer,
    prompts: Sequence[Prompt],
    params: SamplingParams,
    loss_fn: LossFn,
    spec: LossSpec,
    max_grad_norm: float = 1.0,
) -> dict[str, float]:
    """One round of GRPO-family RL: returns the round's mean reward and the loss's metrics."""
    # 1. sample K responses per prompt with the current policy; each records its log-probs
    completions_PK = engine.generate(prompts, params)
    # 2. score every response
    scores_PK = score(prompts, completions_PK)
    groups = [
        ScoredGroup(p, tuple(c), tuple(s)) for p, c, s in zip(prompts, completions_PK, scores_PK, strict=True)
    ]
    mean_reward = sum(s.score for g in groups for s in g.scores) / sum(len(g.scores) for g in groups)
    # 3. group-relative advantages A_i = (r_i - mean) / (std + eps); groups that all scored the same carry none
    kept, dropped = filter_scored_groups(groups)
    if not kept:
        return {"reward/mean": mean_reward, "filter/zero_variance_groups": float(len(dropped))}
    advantages_GK = scored_group_advantages(kept)
    sequences = [
        TrainSequence(completion, float(advantage), g)
        for g, (group, adv_K) in enumerate(zip(kept, advantages_GK, strict=True))
        for completion, advantage in zip(group.completions, adv_K.tolist(), strict=True)
    ]
    batch = collate(sequences, pad_token_id=engine.pad_id)
    # 4. the policy's log-probs of the sampled tokens (and the frozen base model's, for a KL term)
    model.train()

    def logprobs_RC() -> torch.Tensor:
        return completion_logprobs(
            model, batch.prompt_ids_GP, batch.prompt_mask_GP, batch.row_group_R, batch.completion_ids_RC,
            batch.completion_mask_RC, params.temperature,
        )  # fmt: skip

    ref_RC = None
    if spec.kl_coef > 0:
        with torch.no_grad(), reference_policy(model):
            ref_RC = logprobs_RC()
    # 5. the method's loss, from the registry: clipped ratio x advantage, aggregated its way
    loss, metrics = loss_fn(
        logprobs_RC(), batch.old_logprobs_RC, batch.advantages_R, batch.completion_mask_RC, spec,
        ref_logprobs_BT=ref_RC,
    )  # fmt: skip
    # 6. one optimizer step; the engine samples the new policy from the next round on
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable_parameters(model), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    engine.set_policy(engine.policy_version + 1)
    return {
        "reward/mean": mean_reward,
        "filter/zero_variance_groups": float(len(dropped)),
        "grad/norm": float(grad_norm),
        **{k: v for k, v in metrics.items() if "/" in k},
    }


def arithmetic_task(recipe: Recipe) -> tuple[list[Prompt], Scorer]:
    """Single-digit additions and the built-in arithmetic evaluator."""
    count = recipe.steps * recipe.prompts_per_step
    prompts = list(load_prompts(f"arithmetic:digits=1,ops=+,count={count}", seed=recipe.seed))
    evaluator = load_evaluator(recipe.evaluator)

    def score(prompts: Sequence[Prompt], completions: list[list[Completion]]) -> list[list[Score]]:
        return score_groups(evaluator, list(zip(prompts, completions, strict=True)))

    return prompts, score


def train(
    model: torch.nn.Module, tokenizer, prompts: Sequence[Prompt], score: Scorer, recipe: Recipe, *, log=print
) -> list[dict[str, float]]:
    """Wrap ``model`` with a fresh LoRA adapter and run ``recipe.steps`` rounds; one metrics dict per step."""
    torch.manual_seed(recipe.seed)
    model = attach_lora(model, recipe.lora_rank, seed=recipe.seed)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=recipe.learning_rate, weight_decay=0.0)
    engine = LocalEngine(model, tokenizer)
    loss_fn, spec = resolve_loss(recipe.method)
    history = []
    for step in range(recipe.steps):
        start = step * recipe.prompts_per_step
        batch = prompts[start : start + recipe.prompts_per_step]
        params = SamplingParams(
            n=recipe.candidates, temperature=recipe.temperature, top_k=recipe.top_k,
            max_tokens=recipe.max_output_tokens, stop=("</answer>",), seed=recipe.seed * 1000 + step,
        )  # fmt: skip
        began = time.perf_counter()
        metrics = rl_step(model, optimizer, engine, score, batch, params, loss_fn, spec, recipe.max_grad_norm)
        metrics["time/step_s"] = time.perf_counter() - began
        history.append(metrics)
        log(
            f"step {step + 1:3d}  reward {metrics['reward/mean']:.3f}  "
            f"loss {metrics.get('loss/policy', 0.0):+.4f}  kl {metrics.get('kl/mean', 0.0):.5f}  "
            f"clipped {metrics.get('clip/frac', 0.0):.3f}  {metrics['time/step_s']:.1f}s"
        )
    return history


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=list(LOSS_METHODS), default=Recipe.method)
    parser.add_argument("--steps", type=int, default=Recipe.steps)
    parser.add_argument("--prompts-per-step", type=int, default=Recipe.prompts_per_step)
    parser.add_argument("--candidates", type=int, default=Recipe.candidates)
    parser.add_argument("--max-output-tokens", type=int, default=Recipe.max_output_tokens)
    parser.add_argument("--evaluator", default=Recipe.evaluator)
    args = parser.parse_args(argv)
    recipe = Recipe(
        method=args.method, steps=args.steps, prompts_per_step=args.prompts_per_step, candidates=args.candidates,
        max_output_tokens=args.max_output_tokens, evaluator=args.evaluator,
    )  # fmt: skip
    model, tokenizer = load_model("smollm2-135m-instruct")
    prompts, score = arithmetic_task(recipe)
    history = train(model, tokenizer, prompts, score, recipe)
    first, last = history[0]["reward/mean"], history[-1]["reward/mean"]
    print(f"mean reward: first step {first:.3f}, last step {last:.3f}")
    return history


if __name__ == "__main__":
    main()
