"""SPLADE max pooling fused with the MLM output projection, for training the sparse students.

SPLADE's document vector is ``max_t log(1 + relu(h_t W^T + b))`` over the tokens ``t``. sentence-transformers
computes it as written: the ``[batch, tokens, vocab]`` logits (about 1 GB for 64 passages of 128 tokens and
BERT's 30,522 word pieces), then relu, log1p and the max over that whole tensor, and its backward pass is a
second dense ``[batch, tokens, vocab] x [vocab, hidden]`` product. Because ``log1p . relu`` is non-decreasing, the
max can be taken first: ``log1p(relu(max_t (h_t W^T + b)))`` is the same vector. The max's gradient reaches one
token per (passage, word piece), and the word pieces whose max is negative get none through the relu, so the
backward pass only touches the few hundred active word pieces of each passage instead of the dense product.

:func:`fused_splade_pooling` swaps this in for a model's training (no library offers it: sentence-transformers'
``SpladePooling`` and SPLADE's reference code both materialise the logits) and puts the model back as it was, so
a checkpoint saved meanwhile and the saved student are ordinary sentence-transformers ``SparseEncoder`` folders.
The forward values are those of ``SpladePooling`` up to float rounding; the gradients are the same (tested).
"""
from __future__ import annotations

import contextlib
import logging
import types

import torch

from retrieval_kd.encoders.graphs import splade_activation

logger = logging.getLogger(__name__)

#: tokens per slice of the forward product (bounds its memory to batch x TOKEN_CHUNK x vocab floats)
TOKEN_CHUNK = 16


class _ProjectMax(torch.autograd.Function):
    """``max_t (hidden[:, t] @ weight.T + bias)`` over the unmasked tokens, without keeping the logits."""

    @staticmethod
    def forward(ctx, hidden, mask, weight, bias):
        batch, tokens, _ = hidden.shape
        best = torch.full((batch, weight.shape[0]), float("-inf"), dtype=hidden.dtype, device=hidden.device)
        arg = torch.zeros((batch, weight.shape[0]), dtype=torch.long, device=hidden.device)
        projection = weight.t().to(hidden.dtype)      # once, not per slice (autocast does not cache this cast)
        for start in range(0, tokens, TOKEN_CHUNK):
            logits = torch.matmul(hidden[:, start:start + TOKEN_CHUNK], projection)
            if bias is not None:
                logits += bias.to(logits.dtype)
            logits.masked_fill_(~mask[:, start:start + TOKEN_CHUNK, None], float("-inf"))
            value, index = logits.max(dim=1)
            value = value.to(best.dtype)
            better = value > best
            best = torch.where(better, value, best)
            arg = torch.where(better, index + start, arg)
        ctx.save_for_backward(hidden, weight, arg)
        ctx.has_bias = bias is not None
        return best

    @staticmethod
    def backward(ctx, grad):
        # The gradient of the pooled [batch, vocab] matrix reaches one token per (passage, word piece): as a sparse
        # [batch * tokens, vocab] matrix G, d hidden = G W and d W = G^T hidden (no [pairs, hidden] intermediate).
        hidden, weight, arg = ctx.saved_tensors
        batch, tokens, width = hidden.shape
        rows, cols = grad.nonzero(as_tuple=True)          # (passage, word piece) pairs with a gradient
        values = grad[rows, cols].to(torch.float32)
        flat = torch.sparse_coo_tensor(torch.stack([rows * tokens + arg[rows, cols], cols]), values,
                                       (batch * tokens, weight.shape[0]), check_invariants=False).coalesce()
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = torch.sparse.mm(flat, weight.to(torch.float32)).view(batch, tokens, width).to(hidden.dtype)
        if ctx.needs_input_grad[2]:
            grad_weight = torch.sparse.mm(flat.t(), hidden.reshape(batch * tokens, width).to(torch.float32))
            grad_weight = grad_weight.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = grad.to(torch.float32).sum(0).to(weight.dtype)
        return grad_hidden, None, grad_weight, grad_bias


def project_max(hidden, attention_mask, weight, bias=None):
    """``max_t (hidden_t W^T + b)`` per sequence over its unmasked tokens: ``[batch, vocab]``."""
    return _ProjectMax.apply(hidden, attention_mask.bool(), weight, bias)


class _Hidden(torch.nn.Module):
    """Stands in for the MLM's output projection: passes the hidden states through, keeps its parameters
    under their own names (``weight``, ``bias``), so a state dict saved meanwhile is unchanged."""

    def __init__(self, projection: torch.nn.Linear):
        super().__init__()
        self.weight = projection.weight
        self.bias = projection.bias

    def forward(self, hidden):
        return hidden


def _fused_forward(pooling, features):
    """``SpladePooling.forward`` on the MLM head's hidden states (bound to the pooling module in the block)."""
    head = pooling.__dict__["_fused_head"]       # the _Hidden module: its parameters as they are now
    pooled = splade_activation(project_max(features["token_embeddings"], features["attention_mask"], head.weight,
                                           head.bias), pooling.activation_function)
    features["sentence_embedding"] = pooled
    if pooling.embedding_dimension is None:
        pooling.embedding_dimension = pooled.shape[1]
    return features


@contextlib.contextmanager
def fused_splade_pooling(transformer, pooling):
    """Within the block, ``transformer`` (a fill-mask ``Transformer`` module) hands the MLM head's hidden states
    to ``pooling`` (its ``SpladePooling``), which projects and max-pools them in one step (module docstring).
    Yields whether the swap was made: sum pooling, inputs flattened without padding (flash attention), or a model
    whose output projection is not a ``Linear`` keep the library's path. Meant for one training run in this
    process: a deep copy made in the block stays fused, and the model cannot be pickled while in it."""
    model = transformer.auto_model
    projection = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = [name for name, module in model.named_modules() if module is projection]
    flattened = bool(getattr(transformer, "can_flatten_inputs", False))   # unpadded inputs: no attention mask
    if not isinstance(projection, torch.nn.Linear) or not names or pooling.pooling_strategy != "max" or flattened:
        logger.info("SPLADE pooling not fused (%s pooling, output projection %s): the library's path",
                    pooling.pooling_strategy, type(projection).__name__)
        yield False
        return
    parent_name, _, attr = names[0].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    head = _Hidden(projection)
    setattr(parent, attr, head)
    object.__setattr__(pooling, "_fused_head", head)          # not a submodule of the pooling: saved once
    pooling.forward = types.MethodType(_fused_forward, pooling)
    try:
        yield True
    finally:
        setattr(parent, attr, projection)
        del pooling.forward
        del pooling.__dict__["_fused_head"]
