"""``openrft serve``'s ``/v1/embeddings``, asked by the ``openai`` SDK as any client asks OpenAI, and
by a text_similarity grader's ``cosine`` metric. Each embedding is checked against the model's own
hidden states computed here, one text at a time (so the server's padding of a batch cannot hide)."""

from __future__ import annotations

import json

import numpy as np
import openai
import pytest
import torch

from openrft.evaluators.graders import load_grader
from openrft.rollout.local import LocalEngine
from openrft.rollout.server import BackgroundServer, create_app

TEXTS = ["The cat sat on the mat.", "A kitten", "Quarterly revenue grew by four percent over the year."]


@pytest.fixture
def served(tiny_model):
    model, tokenizer = tiny_model
    with BackgroundServer(create_app(LocalEngine(model, tokenizer), "tiny")) as server:
        yield server.url, model, tokenizer


def expected(model, tokenizer, text: str) -> np.ndarray:
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[-1][0]  # after the final norm
    mean = hidden.mean(0)
    return (mean / mean.norm()).numpy()


def test_the_sdk_gets_each_texts_unit_mean_hidden_state(served):
    url, model, tokenizer = served
    client = openai.OpenAI(base_url=f"{url}", api_key="none", max_retries=0)
    reply = client.embeddings.create(model="tiny", input=TEXTS)  # the SDK asks for base64 and decodes it
    assert [d.index for d in reply.data] == [0, 1, 2] and reply.model == "tiny"
    for text, item in zip(TEXTS, reply.data, strict=True):
        vector = np.array(item.embedding)
        assert vector.shape == (model.config.hidden_size,)
        np.testing.assert_allclose(vector, expected(model, tokenizer, text), atol=1e-5)
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == tokens
    floats = client.embeddings.create(model="tiny", input=TEXTS[1], encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, reply.data[1].embedding, atol=1e-6)
    ids = client.embeddings.create(model="tiny", input=[tokenizer(TEXTS[1])["input_ids"]])
    np.testing.assert_allclose(ids.data[0].embedding, reply.data[1].embedding, atol=1e-6)


def test_bad_requests_are_openai_errors_naming_the_parameter(served):
    url, model, _ = served
    client = openai.OpenAI(base_url=f"{url}", api_key="none", max_retries=0)
    for kwargs, param in [({"input": ""}, "input"), ({"input": ["a", ""]}, "input"),
                          ({"input": "a", "dimensions": 8}, "dimensions"),
                          ({"input": "a", "encoding_format": "int8"}, "encoding_format")]:  # fmt: skip
        with pytest.raises(openai.BadRequestError) as refused:
            client.embeddings.create(model="tiny", **kwargs)
        assert refused.value.param == param, refused.value
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-large", input="a")
    same = client.embeddings.create(model="tiny", input="a", dimensions=model.config.hidden_size)
    assert len(same.data[0].embedding) == model.config.hidden_size


def test_a_cosine_grader_scores_with_the_served_model(served):
    url, model, tokenizer = served
    spec = {"type": "text_similarity", "name": "close", "input": "{{ sample.output_text }}",
            "reference": "{{ item.reference }}", "evaluation_metric": "cosine"}  # fmt: skip
    grade = load_grader(json.dumps(spec), endpoint=f"{url}", model="tiny").fn
    assert grade(TEXTS[0], {"reference": TEXTS[0]})["score"] == pytest.approx(1.0, abs=1e-5)
    score = grade(TEXTS[0], {"reference": TEXTS[2]})["score"]
    assert score == pytest.approx(
        float(expected(model, tokenizer, TEXTS[0]) @ expected(model, tokenizer, TEXTS[2])), abs=1e-5
    )
