"""The forward pass of an encoder as one ``(input_ids, attention_mask) -> vectors`` module, to run or export.

:class:`DenseGraph` is a SentenceTransformer's transformer, pooling (and any dense layers) and L2 normalisation:
``(batch, seq)`` ids and mask in, ``(batch, dim)`` pooled, normalised embeddings out. :class:`SpladeGraph` is a
SPLADE document encoder with its pooling fused into the graph: ``(batch, vocab)`` document vectors out, never the
``(batch, seq, vocab)`` activations. Since log(1 + ReLU(x)) is monotonic, the max over unmasked positions of
log(1 + ReLU(logits)) equals log(1 + ReLU(max over unmasked positions of the logits)): one reduction over the
MLM head's logits and one activation per vocabulary entry, where sentence-transformers' ``SpladePooling`` runs
mask, ReLU and log1p over every position first (Formal et al. 2021, "SPLADE v2", max pooling).

References:
    Formal, T., Lassance, C., Piwowarski, B., Clinchant, S. "SPLADE v2: Sparse Lexical and Expansion Model for
    Information Retrieval." arXiv:2109.10086, 2021.
"""

from __future__ import annotations

import torch
from torch import nn

from retrieval_kd.errors import UnavailableError

__all__ = ["DenseGraph", "SpladeGraph", "dense_graph", "sparse_graph", "splade_activation", "splade_pool"]


def splade_pool(logits: torch.Tensor, attention_mask: torch.Tensor, strategy: str = "max",
                activation: str = "relu") -> torch.Tensor:
    """SPLADE pooling of MLM logits ``(batch, seq, vocab)`` into ``(batch, vocab)``, padding masked out.

    ``activation`` ``relu`` is log(1 + ReLU(x)); ``log1p_relu`` applies log1p once more (OpenSearch's variant),
    as sentence-transformers' ``SpladePooling`` names them.
    """
    mask = attention_mask.unsqueeze(-1) != 0
    if strategy == "max":  # monotonic activation: reduce first, activate (batch, vocab) values only
        return splade_activation(logits.masked_fill(~mask, float("-inf")).amax(dim=1), activation)
    weights = torch.log1p(torch.relu(logits))
    if activation == "log1p_relu":
        weights = torch.log1p(weights)
    return (weights * mask.to(weights.dtype)).sum(dim=1)


def splade_activation(values: torch.Tensor, activation: str = "relu") -> torch.Tensor:
    """SPLADE's activation of (max-pooled) logits: log(1 + ReLU(x)), and log1p once more for ``log1p_relu``."""
    pooled = torch.log1p(torch.relu(values))
    return torch.log1p(pooled) if activation == "log1p_relu" else pooled


def _transformer(module, task: str):
    """The Hugging Face model inside a sentence-transformers ``Transformer`` module doing ``task``."""
    from sentence_transformers.base.modules import Transformer

    if not isinstance(module, Transformer):
        raise UnavailableError(f"the model starts with {type(module).__name__}, not a Transformer module; only "
                               "Transformer (+ pooling) pipelines can be exported: use encoding 'torch'")
    if getattr(module, "transformer_task", task) != task:
        raise UnavailableError(f"the Transformer module does {module.transformer_task!r}, expected {task!r}")
    return module.model


class DenseGraph(nn.Module):
    """A SentenceTransformer's forward pass on token ids: transformer, pooling (and dense layers), normalisation.

    Args:
        model: a loaded :class:`~sentence_transformers.SentenceTransformer` whose first module is a text
            ``Transformer`` and whose other modules take and return the features dict (Pooling, Dense, Normalize).
        normalize: L2-normalise the output (the project's dense vectors are cosine-normalised).
    """

    def __init__(self, model, normalize: bool = True):
        super().__init__()
        modules = list(model)
        self.transformer = _transformer(modules[0], "feature-extraction")
        self.rest = nn.ModuleList(modules[1:])
        self.normalize = normalize
        pooling = next((m for m in self.rest if type(m).__name__ == "Pooling"), None)
        self.include_prompt = bool(getattr(pooling, "include_prompt", True))
        self.lowercase = bool(getattr(modules[0], "do_lower_case", False))  # sentence-transformers lowercases texts

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_embeddings": out.last_hidden_state}
        for module in self.rest:
            features = module(features)
        embedding = features["sentence_embedding"]
        return nn.functional.normalize(embedding, p=2, dim=-1) if self.normalize else embedding


class SpladeGraph(nn.Module):
    """A SPLADE document encoder on token ids: MLM logits and fused pooling (:func:`splade_pool`).

    Args:
        mlm: the Hugging Face masked-LM model.
        strategy: ``max`` (SPLADE v2) or ``sum``.
        activation: ``relu`` (log(1 + ReLU)) or ``log1p_relu``.
    """

    def __init__(self, mlm: nn.Module, strategy: str = "max", activation: str = "relu"):
        super().__init__()
        self.mlm, self.strategy, self.activation = mlm, strategy, activation

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.mlm(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).logits
        return splade_pool(logits, attention_mask, self.strategy, self.activation)


def dense_graph(model, normalize: bool = True) -> DenseGraph:
    return DenseGraph(model, normalize).eval()


def sparse_graph(model) -> tuple[SpladeGraph, bool]:
    """The document side of a :class:`~sentence_transformers.SparseEncoder` as a :class:`SpladeGraph`, and whether
    queries take the same path (siamese; an inference-free student's queries are a static embedding instead)."""
    from sentence_transformers.base.modules import Router
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    modules, siamese = list(model), True
    if modules and isinstance(modules[0], Router):
        routes = modules[0].sub_modules
        if "document" not in routes:
            raise UnavailableError(f"the Router has routes {list(routes)}, none named 'document'; use encoding 'torch'")
        modules, siamese = list(routes["document"]), False
    if len(modules) != 2 or not isinstance(modules[1], SpladePooling):
        raise UnavailableError("only Transformer(fill-mask) + SpladePooling document encoders can be exported, not "
                               f"{[type(m).__name__ for m in modules]}; use encoding 'torch'")
    pooling = modules[1]
    graph = SpladeGraph(_transformer(modules[0], "fill-mask"), pooling.pooling_strategy, pooling.activation_function)
    graph.max_seq_length = modules[0].max_seq_length  # the document route's (a Router reports the largest)
    graph.lowercase = bool(getattr(modules[0], "do_lower_case", False))
    return graph.eval(), siamese
