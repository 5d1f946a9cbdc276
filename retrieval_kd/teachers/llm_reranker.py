"""LLM reranker teachers on transformers causal LMs: FIRST listwise, query likelihood, yes/no. No generation loop.

Three modes, each one forward pass per prompt:

* ``first`` (Reddy et al. 2024, "FIRST: Faster Improved Listwise Reranking with Single Token Decoding"):
  a listwise prompt with the query and passages labelled by single-token identifiers ``[A]``, ``[B]``, ...; the
  assistant's answer is primed with ``[`` so the *first generated token* is an identifier, and its logits over
  the identifiers rank the window in one forward pass instead of generating ``[B] > [A] > ...`` token by
  token. Lists longer than ``window`` are covered by RankGPT's sliding window (Sun et al. 2023): windows of
  ``window`` passages, moving from the end of the list to the front by ``stride``, each reordering its
  passages by identifier logit. Window logits are not comparable across windows, so the merged score is
  rank-derived: ``n - final_position`` (higher is better), consistent over the whole list.
* ``qlm`` (UPR, Sachan et al. 2022, "Improving Passage Retrieval with Zero-Shot Question Generation"):
  the mean log-probability of the query's tokens given a passage prompt (teacher forcing).
* ``yesno``: pointwise relevance as ``logit("yes") - logit("no")`` for the answer's first token
  (log-sum-exp over casing/space variants that are single tokens).

Real use names e.g. ``castorini/first_mistral`` (FIRST), ``google/flan-t5-xl``-style LMs for UPR (causal ones
here), or any instruction-tuned causal LM; the offline pack has ``HuggingFaceTB/SmolLM2-135M-Instruct``.

References:
    Reddy, R. G., et al. (2024). FIRST: Faster Improved Listwise Reranking with Single Token Decoding. EMNLP.
    Sachan, D. S., et al. (2022). Improving Passage Retrieval with Zero-Shot Question Generation. EMNLP.
    Sun, W., et al. (2023). Is ChatGPT Good at Search? Investigating LLMs as Re-Ranking Agents. EMNLP.
"""

from __future__ import annotations

import logging
import string
from typing import Any

import numpy as np

from retrieval_kd.models.revision import model_revision
from retrieval_kd.teachers.base import Teacher

logger = logging.getLogger(__name__)

__all__ = ["LLMRerankerTeacher", "sliding_windows", "FIRST_TEMPLATE", "QLM_TEMPLATE", "YESNO_TEMPLATE"]

FIRST_TEMPLATE = (
    "I will provide you with {n} passages, each indicated by an identifier in brackets. "
    "Rank the passages based on their relevance to the search query: {query}\n\n{passages}\n\n"
    "Search Query: {query}\nRank the {n} passages above based on their relevance to the search query, "
    "in descending order, using their identifiers. The output format is [] > [], e.g. [B] > [A]. "
    "Only respond with the ranking."
)
QLM_TEMPLATE = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"
YESNO_TEMPLATE = (
    "Query: {query}\nPassage: {passage}\nIs the passage relevant to the query? Answer with yes or no."
)
IDENTIFIERS = string.ascii_uppercase


def sliding_windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``(start, end)`` of RankGPT's windows over a list of ``n``: from the back to the front."""
    if window <= 0 or stride <= 0:
        raise ValueError("window and stride must be positive")
    if stride > window:
        raise ValueError(f"stride {stride} > window {window} would leave passages unranked")
    if n <= window:
        return [(0, n)]
    spans, start = [], n - window
    while True:
        spans.append((start, start + window))
        if start == 0:
            return spans
        start = max(0, start - stride)


class LLMRerankerTeacher(Teacher):
    """Args:
    model: hub id or folder of a causal LM.
    mode: ``first``, ``qlm`` or ``yesno``.
    window, stride: FIRST's sliding window (window <= 26 single-letter identifiers).
    max_passage_tokens: passages are truncated to this many tokens in prompts.
    batch_size: prompts per forward pass (``qlm``, ``yesno``).
    use_chat_template: wrap prompts in the tokenizer's chat template when it has one.
    """

    kind = "llm"
    listwise = False

    def __init__(self, model: str = "HuggingFaceTB/SmolLM2-135M-Instruct", mode: str = "first", window: int = 20,
                 stride: int = 10, max_passage_tokens: int = 100, batch_size: int = 8, use_chat_template: bool = True,
                 device: str | None = None, dtype: str = "float32"):
        if mode not in ("first", "qlm", "yesno"):
            raise ValueError(f"unknown LLM reranker mode {mode!r}; use first, qlm or yesno")
        if mode == "first" and not 1 <= window <= len(IDENTIFIERS):
            raise ValueError(f"FIRST windows hold 1..{len(IDENTIFIERS)} passages (single-letter identifiers)")
        if mode == "first" and not 1 <= stride <= window:
            raise ValueError(f"stride={stride} must be in 1..window ({window}): a larger one leaves passages unranked")
        self.model_name = model
        self.mode = mode
        self.window = window
        self.stride = stride
        self.max_passage_tokens = max_passage_tokens
        self.batch_size = batch_size
        self.use_chat_template = use_chat_template
        self.device = device or "cpu"
        self.dtype = dtype
        self.listwise = mode == "first"
        self._model = None
        self._tokenizer = None
        self.forward_passes = 0  # counted, so tests and benchmarks can check "one forward pass per window"

    def config(self) -> dict[str, Any]:
        cfg = {"model": self.model_name, "revision": model_revision(self.model_name), "mode": self.mode,
               "max_passage_tokens": self.max_passage_tokens, "chat_template": self.use_chat_template}
        if self.mode == "first":
            cfg.update(window=self.window, stride=self.stride, template=FIRST_TEMPLATE)
        else:
            cfg["template"] = QLM_TEMPLATE if self.mode == "qlm" else YESNO_TEMPLATE
        return cfg

    @property
    def name(self) -> str:
        return f"llm-{self.mode}:{self.model_name}"

    # -- model -------------------------------------------------------------------------------------------------
    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from retrieval_kd.models.resolve import resolve_model

            resolve_model(self.model_name, "teacher model")
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_name)
            if self._tokenizer.pad_token is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
            self._model = AutoModelForCausalLM.from_pretrained(self.model_name, dtype=getattr(torch, self.dtype))
            self._model.to(self.device).eval()
        return self._model, self._tokenizer

    def set_model(self, model, tokenizer) -> LLMRerankerTeacher:
        """Use an already loaded model and tokenizer (tests, notebooks)."""
        self._model, self._tokenizer = model.eval(), tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return self

    def _truncate(self, text: str) -> str:
        _, tok = self._load()
        ids = tok.encode(text, add_special_tokens=False)[: self.max_passage_tokens]
        return tok.decode(ids)

    def _prompt(self, user: str, answer_prefix: str = "") -> str:
        _, tok = self._load()
        if self.use_chat_template and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                           add_generation_prompt=True)
        else:
            text = user + "\nAnswer: "
        return text + answer_prefix

    def _last_logits(self, prompts: list[str]):
        """Logits of the next token after each prompt (left padding), one forward pass per batch."""
        import torch

        model, tok = self._load()
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.inference_mode():
            logits = model(**enc).logits[:, -1, :].float()
        self.forward_passes += 1
        return logits

    def _single_token_ids(self, words: list[str]) -> list[int]:
        _, tok = self._load()
        ids = []
        for w in words:
            enc = tok.encode(w, add_special_tokens=False)
            if len(enc) == 1:
                ids.append(enc[0])
        return sorted(set(ids))

    # -- FIRST -------------------------------------------------------------------------------------------------
    def identifier_ids(self, n: int) -> list[int]:
        _, tok = self._load()
        ids = []
        for letter in IDENTIFIERS[:n]:
            enc = tok.encode(letter, add_special_tokens=False)
            if len(enc) != 1:
                raise ValueError(f"identifier {letter!r} is {len(enc)} tokens for {self.model_name}; FIRST needs one")
            ids.append(enc[0])
        return ids

    def first_prompt(self, query: str, passages: list[str]) -> str:
        body = "\n".join(f"[{IDENTIFIERS[i]}] {self._truncate(p)}" for i, p in enumerate(passages))
        return self._prompt(FIRST_TEMPLATE.format(n=len(passages), query=query, passages=body), answer_prefix="[")

    def window_logits(self, query: str, passages: list[str]) -> np.ndarray:
        """One forward pass: the first generated token's logits over the window's identifiers."""
        logits = self._last_logits([self.first_prompt(query, passages)])[0]
        return logits[self.identifier_ids(len(passages))].cpu().numpy()

    def _score_first(self, query: str, doc_texts: list[str]) -> np.ndarray:
        n = len(doc_texts)
        order = list(range(n))  # the candidates' given order (e.g. first-stage rank) seeds the windows
        for start, end in sliding_windows(n, self.window, self.stride):
            span = order[start:end]
            logits = self.window_logits(query, [doc_texts[i] for i in span])
            order[start:end] = [span[j] for j in np.argsort(-logits, kind="stable")]
        scores = np.empty(n, dtype=np.float32)
        scores[order] = np.arange(n, 0, -1, dtype=np.float32)  # first place gets n, last gets 1
        return scores

    # -- query likelihood --------------------------------------------------------------------------------------
    def _score_qlm(self, query: str, doc_texts: list[str]) -> np.ndarray:
        import torch

        model, tok = self._load()
        target = tok.encode(" " + query.strip(), add_special_tokens=False)
        out = []
        for b in range(0, len(doc_texts), self.batch_size):
            prompts = [tok.encode(self._prompt(QLM_TEMPLATE.format(passage=self._truncate(t))), add_special_tokens=False)
                       for t in doc_texts[b:b + self.batch_size]]
            seqs = [p + target for p in prompts]
            width = max(len(s) for s in seqs)
            pad = tok.pad_token_id
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
            with torch.inference_mode():
                logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            self.forward_passes += 1
            for i, p in enumerate(prompts):
                positions = torch.arange(len(p) - 1, len(p) - 1 + len(target), device=self.device)
                token_logp = logp[i, positions, torch.tensor(target, device=self.device)]
                out.append(float(token_logp.mean()))
        return np.asarray(out, dtype=np.float32)

    # -- yes / no ----------------------------------------------------------------------------------------------
    def _score_yesno(self, query: str, doc_texts: list[str]) -> np.ndarray:
        import torch

        yes = self._single_token_ids(["yes", "Yes", " yes", " Yes"])
        no = self._single_token_ids(["no", "No", " no", " No"])
        if not yes or not no:
            raise ValueError(f"{self.model_name}: 'yes'/'no' are not single tokens; the yes/no mode cannot score")
        out = []
        for b in range(0, len(doc_texts), self.batch_size):
            prompts = [self._prompt(YESNO_TEMPLATE.format(query=query, passage=self._truncate(t)))
                       for t in doc_texts[b:b + self.batch_size]]
            logits = self._last_logits(prompts)
            diff = torch.logsumexp(logits[:, yes], dim=-1) - torch.logsumexp(logits[:, no], dim=-1)
            out.extend(diff.cpu().tolist())
        return np.asarray(out, dtype=np.float32)

    def score(self, query: str, doc_ids: list[str], doc_texts: list[str]) -> np.ndarray:
        if not doc_texts:
            return np.zeros(0, dtype=np.float32)
        if self.mode == "first":
            return self._score_first(query, doc_texts)
        if self.mode == "qlm":
            return self._score_qlm(query, doc_texts)
        return self._score_yesno(query, doc_texts)

    def generate_permutation(self, query: str, passages: list[str], max_new_tokens: int | None = None) -> str:
        """The slow path FIRST replaces: generate ``[B] > [A] > ...`` token by token (for benchmarks)."""
        import torch

        model, tok = self._load()
        enc = tok([self.first_prompt(query, passages)], return_tensors="pt", add_special_tokens=False).to(self.device)
        budget = max_new_tokens or 4 * len(passages) + 2
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=budget, min_new_tokens=budget, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        return "[" + tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
