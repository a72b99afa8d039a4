"""The tokenizer, transformer and pooling of one sentence-transformers folder.

This is the part that touches torch. It reproduces what sentence-transformers
computes for a Transformer -> Pooling [-> Normalize] model (same tokenization
and truncation, same masked pooling, same L2 normalization) with plain
transformers ``AutoTokenizer``/``AutoModel``, so the engine does not carry
sentence-transformers' training stack and its per-call overhead.

A ``SentenceEncoder`` is not thread-safe: exactly one thread (the engine's
worker) may call ``tokenize`` and ``encode``. Loading it reads the weights from
disk and builds the model: for all-MiniLM-L6-v2 on a 2-CPU host about 0.4-1 s
warm and 5 s on a cold page cache, so construct it once at start-up, never per
request.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from firebox.inference.local.embedding_config import (
    ModelFolderError,
    PoolingMode,
    SentenceModelConfig,
)


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The folder's tokenizer, from local files only."""
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        str(path), local_files_only=True
    )
    return tokenizer


def resolve_max_seq_length(
    config: SentenceModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    max_position_embeddings: int | None,
) -> int:
    """sentence_bert_config.json's ``max_seq_length``, else the tokenizer's limit capped at the
    model's positions (as sentence-transformers does)."""
    if config.max_seq_length is not None:
        return config.max_seq_length
    limit = int(tokenizer.model_max_length)
    if max_position_embeddings is not None and max_position_embeddings > 0:
        limit = min(limit, max_position_embeddings)
    return limit


def cpu_thread_budget() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup v2 quota.

    torch's default counts the host's cores, which oversubscribes a container
    limited to a few of them.
    """
    budget = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    budget = budget or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            budget = min(budget, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return budget


def default_num_threads() -> int:
    """All usable CPUs on a small host; one left for the event loop from four CPUs up."""
    budget = cpu_thread_budget()
    return budget if budget < 4 else budget - 1


class SpecialTokens:
    """Where the model's special tokens go around a single sequence.

    Found once by encoding a probe text with and without special tokens, so that
    token-array inputs get exactly the ``[CLS] ... [SEP]`` (or ``<s> ... </s>``)
    framing that the same text would get.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        probe = "hello world"
        framed: list[int] = tokenizer.encode(probe, add_special_tokens=True)
        plain: list[int] = tokenizer.encode(probe, add_special_tokens=False)
        for start in range(len(framed) - len(plain) + 1):
            if framed[start : start + len(plain)] == plain:
                self.prefix = framed[:start]
                self.suffix = framed[start + len(plain) :]
                return
        raise ModelFolderError("Cannot tell where this tokenizer places its special tokens.")

    @property
    def count(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def frame(self, ids: Sequence[int], max_length: int) -> list[int]:
        """``ids`` truncated so that, framed by the special tokens, they fit ``max_length``."""
        room = max(0, max_length - self.count)
        return [*self.prefix, *ids[:room], *self.suffix]


def pool(
    token_states: torch.Tensor, attention_mask: torch.Tensor, modes: Sequence[PoolingMode]
) -> torch.Tensor:
    """Pool ``(batch, seq, dim)`` token states into ``(batch, dim * len(modes))`` vectors.

    Mirrors sentence-transformers' ``Pooling`` for padded batches: padding
    positions (mask 0) never contribute, whichever mode.
    """
    outputs: list[torch.Tensor] = []
    mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
    for mode in modes:
        if mode == "cls":
            first = attention_mask.to(torch.int).argmax(dim=1)  # first real token, any padding side
            index = first.view(-1, 1, 1).expand(-1, 1, token_states.shape[-1])
            outputs.append(torch.gather(token_states, 1, index).squeeze(1))
        elif mode == "max":
            masked = token_states.masked_fill(mask.expand_as(token_states) == 0, float("-inf"))
            outputs.append(masked.max(dim=1).values)
        else:  # mean, mean_sqrt_len_tokens
            summed = (token_states * mask).sum(dim=1)
            counts = torch.clamp(mask.sum(dim=1), min=1e-9)
            outputs.append(summed / (counts if mode == "mean" else torch.sqrt(counts)))
    return torch.cat(outputs, dim=-1)


class SentenceTokenizer:
    """Turns texts and token arrays into the exact id sequences the model is fed.

    Special tokens are added and sequences truncated to ``max_seq_length``, as
    sentence-transformers does. Not thread-safe (the Rust tokenizer's settings
    are mutable): each thread that tokenizes needs its own instance or a lock.
    """

    def __init__(self, config: SentenceModelConfig, max_position_embeddings: int | None) -> None:
        self.lower_case = config.do_lower_case
        self.tokenizer = load_tokenizer(config.path)
        self.max_seq_length = resolve_max_seq_length(
            config, self.tokenizer, max_position_embeddings
        )
        self.special = SpecialTokens(self.tokenizer)

    def tokenize(self, inputs: Sequence[str | Sequence[int]]) -> list[list[int]]:
        """Token ids as fed to the model: special tokens added, truncated to max_seq_length.

        A token array is the content only (as ``tokenizer.encode(text,
        add_special_tokens=False)`` gives it); it is framed like a text would be.
        """
        texts = [(i.lower() if self.lower_case else i) for i in inputs if isinstance(i, str)]
        encoded: list[list[int]] = []
        if texts:
            batch = self.tokenizer(
                texts,
                add_special_tokens=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            encoded = [list(ids) for ids in batch["input_ids"]]
        text_ids = iter(encoded)
        return [
            next(text_ids) if isinstance(i, str) else self.special.frame(i, self.max_seq_length)
            for i in inputs
        ]


class SentenceEncoder:
    """Tokenizes inputs and turns padded batches of token ids into sentence vectors."""

    def __init__(
        self,
        config: SentenceModelConfig,
        *,
        device: str | None = None,
        num_threads: int | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.num_threads = num_threads if num_threads is not None else default_num_threads()
        model: PreTrainedModel = AutoModel.from_pretrained(
            str(config.path), local_files_only=True, dtype=torch.float32
        )
        # In place; transformers' @wraps(Module.to) hides the real signature from mypy.
        model.to(self.device)  # type: ignore[arg-type]
        model.train(False)  # eval mode: no dropout
        self.model = model
        hidden = getattr(self.model.config, "hidden_size", config.token_dimension)
        if hidden != config.token_dimension:
            raise ModelFolderError(
                f"The pooling expects {config.token_dimension}-wide token states but the model "
                f"produces {hidden}."
            )
        self.max_position_embeddings: int | None = getattr(
            self.model.config, "max_position_embeddings", None
        )
        self.tokens = SentenceTokenizer(config, self.max_position_embeddings)
        self.max_seq_length = self.tokens.max_seq_length
        embeddings = self.model.get_input_embeddings()
        self.vocab_size = (  # ids at or above it would index past the embedding table
            embeddings.num_embeddings
            if isinstance(embeddings, torch.nn.Embedding)
            else len(self.tokens.tokenizer)
        )
        pad = self.tokens.tokenizer.pad_token_id
        self.pad_id = int(pad) if isinstance(pad, int) else 0  # masked out either way

    def attach_thread(self) -> None:
        """Called once on the worker thread: size torch's CPU pool for the forward passes.

        OpenMP keeps the count per thread once a thread has run torch code, so it
        is set on the worker itself. torch also records it as the default for
        threads that start using torch later, so it is, in effect, process-wide.
        """
        if self.device.type == "cpu":
            torch.set_num_threads(self.num_threads)

    def tokenize(self, inputs: Sequence[str | Sequence[int]]) -> list[list[int]]:
        """See ``SentenceTokenizer.tokenize``."""
        return self.tokens.tokenize(inputs)

    def encode(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """One forward pass over ``sequences`` (right-padded into one batch)."""
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            vectors = pool(states, mask, self.config.pooling_modes)
            if self.config.normalize:
                vectors = F.normalize(vectors, p=2, dim=-1)
        result: list[list[float]] = vectors.float().cpu().tolist()
        return result
