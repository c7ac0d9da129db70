"""Shared test set-up: an offline, persistent openrft cache and tiny-model fixtures.

``OPENRFT_HOME`` points at ``<repo>/.openrft-test-home`` (git-ignored) for the whole session,
so the embedded model's one-time conversion (and its tokenizer extraction) happens once
per machine rather than once per test run. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("OPENRFT_HOME", str(REPO / ".openrft-test-home"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm (eval-protocol) stays offline
# Idle OpenMP threads sleep instead of spinning: when several test processes share the two
# cores, spinning threads make every small op wait (a tiny-model forward pass became 10x slower).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("OPENRFT_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded model's real tokenizer (chat template included); no weights are loaded."""
    from openrft.testing import embedded_tokenizer

    return embedded_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    """``(model, tokenizer)``: a fresh 2-layer random Llama (seed 0) with the real vocabulary."""
    from openrft.testing import tiny_model as build

    return build(seed=0, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """The same tiny model saved as a Hugging Face model directory (for ``--base-model DIR``)."""
    from openrft.testing import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"), seed=0, tokenizer=tokenizer)
