"""``POST /v1/embeddings`` for ``openrft serve``: OpenAI's embeddings call, answered by the served model.

A text's embedding is the mean of the served model's last hidden states over its tokens (after the
final norm; the adapter of the named model applied), scaled to length 1 as OpenAI's are, so that a
dot product is the cosine similarity. This is what a ``text_similarity`` grader's ``cosine`` metric
asks its endpoint for; a causal LM is not an embedding model, so the numbers mean less than those of
one trained for it, but they need no other server. ``input`` is a string, a list of strings, a list
of token ids or a list of such lists (at most 2048 inputs, each within the model's context);
``encoding_format`` ``float`` or ``base64`` (little-endian float32, which the ``openai`` SDK asks for);
``dimensions`` only at the model's own size (a causal LM's hidden state cannot be shortened as OpenAI's
Matryoshka embeddings can).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from openrft.rollout.chat_api import HTTPError
from openrft.rollout.completions_api import prompt_token_ids

MAX_INPUTS = 2048  # OpenAI's limit on inputs in one request
CHUNK = 16  # inputs run through the model at once


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: str = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


def add_embeddings_route(app: FastAPI, host: Any) -> None:
    """``/v1/embeddings`` on the served model (404 where the engine has no model here: a job's remote one)."""
    engine = host.engine

    @app.post("/v1/embeddings")
    async def embeddings(request: EmbeddingRequest) -> dict[str, Any]:
        name = host.resolve(request.model)
        if getattr(engine, "model", None) is None or host.fixed:
            raise HTTPError(404, "this server's model gives no embeddings here", code="not_found")
        if request.encoding_format not in ("float", "base64"):
            raise HTTPError(400, f"encoding_format must be 'float' or 'base64', not {request.encoding_format!r}",
                            param="encoding_format")  # fmt: skip
        if isinstance(request.input, list) and len(request.input) > MAX_INPUTS:
            raise HTTPError(
                400, f"input holds {len(request.input)} items; at most {MAX_INPUTS}", param="input"
            )
        if request.input == "" or (isinstance(request.input, list) and "" in request.input):
            raise HTTPError(400, "input must not hold an empty string", param="input")
        token_lists = prompt_token_ids(engine.tokenizer, request.input, what="input")
        limit = getattr(engine, "max_positions", None)
        if limit and max(map(len, token_lists)) > limit:
            raise HTTPError(400, f"an input holds {max(map(len, token_lists))} tokens; this model's context is "
                            f"{limit}", param="input")  # fmt: skip
        vectors = await run_in_threadpool(_embed, host, name, token_lists)
        if request.dimensions is not None and request.dimensions != vectors.shape[1]:
            raise HTTPError(400, f"dimensions must be this model's size, {vectors.shape[1]}, or left out",
                            param="dimensions")  # fmt: skip
        data = [
            {"object": "embedding", "index": i, "embedding": _encoded(v, request.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        tokens = sum(map(len, token_lists))
        return {"object": "list", "data": data, "model": request.model or name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


def _encoded(vector: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _embed(host: Any, name: str, token_lists: list[list[int]]) -> np.ndarray:
    """The unit-length mean of the last hidden states of each token list, as ``[inputs, hidden]``."""
    import torch

    model = host.engine.model
    with host.lock, host.selected(name), torch.inference_mode():
        body = _decoder(model)
        device = next(model.parameters()).device
        out = []
        for start in range(0, len(token_lists), CHUNK):
            chunk = token_lists[start : start + CHUNK]
            width = max(map(len, chunk))
            ids_bt = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
            mask_bt = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
            for row, ids in enumerate(chunk):  # right-padded: positions count from 0 in every row
                ids_bt[row, : len(ids)] = torch.tensor(ids, device=device)
                mask_bt[row, : len(ids)] = 1
            hidden_btd = body(input_ids=ids_bt, attention_mask=mask_bt).last_hidden_state.float()
            weights_bt1 = mask_bt.unsqueeze(-1).float()
            mean_bd = (hidden_btd * weights_bt1).sum(1) / weights_bt1.sum(1)
            out.append(torch.nn.functional.normalize(mean_bd, dim=-1).cpu().numpy())
    return np.concatenate(out)


def _decoder(model: Any) -> Any:
    """The transformer without its LM head (its LoRA layers stay in place), so no logits are made."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    if decoder is None:
        raise HTTPError(404, "this server's model gives no embeddings (it has no decoder to read)",
                        code="not_found")  # fmt: skip
    return decoder
