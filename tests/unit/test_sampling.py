"""The pure sampling function: vLLM's temperature -> top-k -> top-p order, by inverse CDF."""

from __future__ import annotations

import math

import pytest
import torch

from openrft.errors import ConfigError
from openrft.records import SamplingParams
from openrft.rollout.sampling import Truncation, check_params, row_seed, row_uniforms, sample_tokens

# Five tokens with probabilities 0.4, 0.3, 0.15, 0.1, 0.05 at temperature 1, in a shuffled vocabulary order.
PROBS = {3: 0.4, 0: 0.3, 4: 0.15, 1: 0.1, 2: 0.05}
LOGITS = torch.log(torch.tensor([PROBS[i] for i in range(5)]))


def reachable(how: Truncation, logits=LOGITS, grid: int = 2000) -> dict[int, float]:
    """Sweep u over [0, 1): the share of the unit interval that maps to each token."""
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    tokens, _ = sample_tokens(logits.expand(grid, -1), u, how)
    counts = torch.bincount(tokens, minlength=logits.shape[-1]).double() / grid
    return {i: round(float(c), 3) for i, c in enumerate(counts) if c > 0}


def test_plain_sampling_follows_the_distribution():
    assert reachable(Truncation(temperature=1.0)) == PROBS


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        (Truncation(1.0, top_k=1), {3: 1.0}),
        (Truncation(1.0, top_k=2), {3: 0.4 / 0.7, 0: 0.3 / 0.7}),
        (Truncation(1.0, top_k=3), {3: 0.4 / 0.85, 0: 0.3 / 0.85, 4: 0.15 / 0.85}),
        # top-p keeps a token while the mass of strictly more likely tokens is < p
        (Truncation(1.0, top_p=0.39), {3: 1.0}),
        (Truncation(1.0, top_p=0.41), {3: 0.4 / 0.7, 0: 0.3 / 0.7}),
        (Truncation(1.0, top_p=0.7), {3: 0.4 / 0.7, 0: 0.3 / 0.7}),
        (Truncation(1.0, top_p=0.71), {3: 0.4 / 0.85, 0: 0.3 / 0.85, 4: 0.15 / 0.85}),
        (Truncation(1.0, top_p=0.0), {3: 1.0}),
        # top-p applies to the top-k renormalised distribution: 0.4/0.85 = 0.47 < 0.5 keeps a second token
        (Truncation(1.0, top_k=3, top_p=0.5), {3: 0.4 / 0.7, 0: 0.3 / 0.7}),
        (Truncation(1.0, top_k=3, top_p=0.45), {3: 1.0}),
        (Truncation(1.0, top_k=2, top_p=0.57), {3: 1.0}),
    ],
)
def test_truncation_keeps_exactly_the_right_tokens(how, expected):
    got = reachable(how)
    assert set(got) == set(expected)
    for token, share in expected.items():
        assert got[token] == pytest.approx(share, abs=2e-3)


def test_temperature_reshapes_before_truncation():
    # T = 0.5 squares the probabilities: 0.16, 0.09, 0.0225, 0.01, 0.0025 (sum 0.285)
    squared = {i: p * p for i, p in PROBS.items()}
    total = sum(squared.values())
    got = reachable(Truncation(temperature=0.5), grid=20000)
    for token, p in squared.items():
        assert got[token] == pytest.approx(p / total, abs=2e-3)
    # top-p sees the scaled distribution: at T = 0.5 the mass before token 0 is 0.16 / 0.285 = 0.56 >= 0.5,
    # so only token 3 survives; at T = 1 it is 0.4 < 0.5 and token 0 survives too.
    assert set(reachable(Truncation(0.5, top_p=0.5))) == {3}
    assert set(reachable(Truncation(1.0, top_p=0.5))) == {3, 0}


def test_logprobs_are_untruncated_and_temperature_scaled():
    how = Truncation(temperature=0.5, top_k=2, top_p=0.9)
    tokens, logprobs = sample_tokens(LOGITS.expand(3, -1), torch.tensor([0.0, 0.5, 0.99]), how)
    full = torch.log_softmax(LOGITS / 0.5, dim=-1)
    assert logprobs.dtype == torch.float32
    assert torch.allclose(logprobs, full[tokens])
    assert tokens.tolist() == [3, 3, 0]  # 0.16 / 0.25 = 0.64 of the kept mass goes to token 3


def test_greedy_is_argmax_with_unscaled_logprobs():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    tokens, logprobs = sample_tokens(logits, torch.rand(4, dtype=torch.float64), Truncation(0.0))
    assert torch.equal(tokens, logits.argmax(-1))
    assert torch.allclose(logprobs, torch.log_softmax(logits, -1).gather(1, tokens[:, None]).squeeze(1))


def test_top_k_one_equals_greedy_for_any_uniform():
    logits = torch.randn(64, 300, generator=torch.Generator().manual_seed(1))
    u = torch.rand(64, dtype=torch.float64)
    top1, _ = sample_tokens(logits, u, Truncation(0.7, top_k=1))
    assert torch.equal(top1, logits.argmax(-1))


def test_each_row_depends_only_on_its_own_uniform():
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(2))
    u = torch.rand(8, dtype=torch.float64)
    how = Truncation(0.9, top_k=20, top_p=0.9)
    together, _ = sample_tokens(logits, u, how)
    alone = [int(sample_tokens(logits[i : i + 1], u[i : i + 1], how)[0]) for i in range(8)]
    assert together.tolist() == alone


def test_empirical_frequencies_match():
    u = row_uniforms(7, "p", 0, 20000)
    tokens, _ = sample_tokens(LOGITS.expand(20000, -1), u, Truncation(1.0))
    freq = torch.bincount(tokens, minlength=5).double() / 20000
    for token, p in PROBS.items():
        assert abs(float(freq[token]) - p) < 4 * math.sqrt(p * (1 - p) / 20000)


def test_row_streams_are_private_and_reproducible():
    assert torch.equal(row_uniforms(1, "a", 0, 5), row_uniforms(1, "a", 0, 5))
    assert torch.equal(row_uniforms(1, "a", 0, 10)[:5], row_uniforms(1, "a", 0, 5))
    seeds = {row_seed(s, p, c) for s in (1, 2) for p in ("a", "b", "a\x1f0") for c in (0, 1)}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", 0), ("temperature", -0.1), ("top_k", -1), ("top_p", 1.5), ("max_tokens", 0), ("stop", ("a", ""))],
)
def test_invalid_params_are_rejected(field, value):
    with pytest.raises(ConfigError, match=field if field != "stop" else "stop strings must be non-empty"):
        check_params(SamplingParams(**{field: value}))


def test_text_is_cut_after_the_earliest_stop_string():
    from openrft.rollout.sampling import cut_at_stop

    assert cut_at_stop("a</b>c\n\nd", ("\n\n", "</b>")) == "a</b>"  # the earliest, whatever the order given
    assert cut_at_stop("ab", ("x",)) == "ab" and cut_at_stop("ab", ()) == "ab"
    assert cut_at_stop("x</b>", ("</b>",)) == "x</b>"  # the stop string itself is kept
