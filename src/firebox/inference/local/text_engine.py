"""The in-process text engine: a Llama-family model served with continuous batching.

``LocalTextEngine`` implements ``TextEngine`` for chat and completions on a
local Hugging Face folder (Llama, Mistral, Qwen2), on CPU or CUDA, with a
paged KV cache, a prefix cache and any number of registered LoRA add-ons
applied per row of a shared batch. All model work happens on one scheduler
thread (see ``scheduler``); ``generate`` only checks the context and waits
on its queue, so the event loop never runs a forward pass. The gateway
tokenizes ahead with ``tokenize_prompt`` on a worker thread (each thread its
own copy of the tokenizer), and a prompt whose byte length alone shows it
cannot fit is refused before it is tokenized (``token_bytes``).

Nothing is downloaded: the folder must hold config.json, safetensors
weights and tokenizer files.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import os
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from firebox.errors import InvalidArgument, NotFound
from firebox.inference.engine import (
    EngineCapabilities,
    GenerationEvent,
    GenerationRequest,
    TokenizedPrompt,
)
from firebox.inference.local.choice_output import ChoiceOutput, TokenTexts
from firebox.inference.local.kv_cache import BlockPool, KVCache, block_hashes
from firebox.inference.local.lora_files import AdapterSpec, read_adapter_spec
from firebox.inference.local.lora_slots import LoraSlots
from firebox.inference.local.prompting import ByteLimit, prompt_ids, resolve_max_tokens
from firebox.inference.local.running_batch import BatchLimits, RunningBatch
from firebox.inference.local.sampling import RowSampler, make_generator
from firebox.inference.local.scheduler import EngineClosed, Scheduler
from firebox.inference.local.sequence import Delivery, EventSink, RequestGroup, Sequence
from firebox.inference.local.stats import EngineStats
from firebox.inference.local.text_config import TextModelConfig, read_text_model_config
from firebox.inference.local.text_model import TextModel
from firebox.inference.local.text_weights import load_weights
from firebox.inference.local.token_bytes import max_bytes_per_token

LOCAL_TEXT_CAPABILITIES = EngineCapabilities(
    params=frozenset(
        {
            "max_tokens",
            "temperature",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
            "stop",
            "n",
            "logprobs",
            "top_logprobs",
            "echo",
            "seed",
            "top_k",
            "min_p",
            "repetition_penalty",
            "prompt_cache_max_len",
        }
    ),
    passthrough=frozenset(),
    vision=False,
)
MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 128
_DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
)


def _pick_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _pick_dtype(device: torch.device, dtype: str | None) -> torch.dtype:
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}.")
    if device.type == "cpu" and dtype == "float16":
        raise ValueError("float16 is not supported on CPU; use float32 or bfloat16.")
    return _DTYPES[dtype]


def _available_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


_MAX_AUTO_KV_TOKENS = 1 << 20  # beyond this, block bookkeeping costs more than it serves


def _auto_kv_tokens(config: TextModelConfig, device: torch.device, per_token: int) -> int:
    """A KV budget: 80% of free GPU memory after the weights, or a quarter of free RAM (<= 1 GiB).

    The rest of the GPU is headroom for a step's activations and LoRA stacks.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * 0.8)
    else:
        budget = min(1 << 30, _available_ram() // 4)
    return min(max(budget // per_token, config.max_positions // 4, 256), _MAX_AUTO_KV_TOKENS)


def _make_cache(
    config: TextModelConfig,
    device: torch.device,
    dtype: torch.dtype,
    tokens: int | None,
    block_size: int,
) -> KVCache:
    per_token = KVCache.bytes_per_token(
        config.num_layers, config.num_kv_heads, config.head_dim, dtype
    )
    tokens = tokens or _auto_kv_tokens(config, device, per_token)
    return KVCache(
        num_layers=config.num_layers,
        num_blocks=max(-(-tokens // block_size), 2),
        block_size=block_size,
        num_kv_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        device=device,
        dtype=dtype,
    )


class LocalTextEngine:
    """Serves one base model and its registered LoRA add-ons from this process."""

    def __init__(
        self,
        config: TextModelConfig,
        tokenizer: PreTrainedTokenizerBase,
        worker_tokenizer: PreTrainedTokenizerBase,
        texts: TokenTexts,
        scheduler: Scheduler,
        device: torch.device,
        dtype: torch.dtype,
        eos_ids: frozenset[int],
    ) -> None:
        """Use ``LocalTextEngine.load``; this wires already built parts."""
        self.capabilities = dataclasses.replace(
            LOCAL_TEXT_CAPABILITIES, vocab_size=config.vocab_size
        )
        self.config = config
        self.device = device
        self.dtype = dtype
        self.eos_token_ids = eos_ids
        self._tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        self._worker_tokenizer = worker_tokenizer  # used on the scheduler thread only
        self._texts = texts
        self._scheduler = scheduler
        # None: this tokenizer may drop text, so byte length bounds nothing.
        self.bytes_per_token = max_bytes_per_token(tokenizer)
        self._thread_tokenizers = threading.local()  # tokenize_prompt's, one per thread
        self._adapters: dict[str, AdapterSpec] = {}
        self._adapters_lock = threading.Lock()
        self._registrations = 0
        self._closed = False

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        kv_cache_tokens: int | None = None,
        max_batch_tokens: int = 512,
        max_adapters: int = 8,
        block_size: int = 16,
        max_running: int = 256,
        num_threads: int | None = None,
        eos_token_ids: Iterable[int] | None = None,
    ) -> LocalTextEngine:
        """Load the model in ``path`` and start the scheduler thread (blocking: seconds).

        ``device``: "cuda" when available, else "cpu". ``dtype``: bfloat16 (or
        float16) on CUDA, float32 on CPU. ``kv_cache_tokens``: KV cache size in
        tokens (default: most free GPU memory, or up to 1 GiB of RAM); it also
        caps a request's context. ``max_batch_tokens``: tokens per forward step
        (decodes plus prefill chunks); ``max_running``: sequences decoding at
        once (at most ``max_batch_tokens``). ``max_adapters``: LoRA add-ons
        loaded at once. ``num_threads``: torch CPU threads of the scheduler
        thread (default: torch's). ``eos_token_ids``: replaces the model's
        end-of-sequence ids (benchmarks pass ``()`` to always reach max_tokens).
        Raises ``UnsupportedModel`` for a model this engine cannot run.
        """
        config = read_text_model_config(path)
        torch_device = _pick_device(device)
        torch_dtype = _pick_dtype(torch_device, dtype)
        caller_tokenizer = AutoTokenizer.from_pretrained(str(config.path), local_files_only=True)
        worker_tokenizer = AutoTokenizer.from_pretrained(str(config.path), local_files_only=True)
        weights = load_weights(config, torch_device, torch_dtype)
        cache = _make_cache(config, torch_device, torch_dtype, kv_cache_tokens, block_size)
        lora = LoraSlots(config, max_adapters, torch_device, torch_dtype)
        model = TextModel(config, weights, cache, lora, torch_device)
        if eos_token_ids is None:
            eos = set(config.eos_token_ids)
            if caller_tokenizer.eos_token_id is not None:
                eos.add(int(caller_tokenizer.eos_token_id))
            eos_token_ids = eos
        eos_ids = frozenset(eos_token_ids)
        texts = TokenTexts(worker_tokenizer)
        limits = BatchLimits(max_batch_tokens, max_running=min(max_running, max_batch_tokens))
        batch = RunningBatch(
            model, cache, BlockPool(cache.num_blocks), lora, texts, eos_ids, limits
        )
        scheduler = Scheduler(batch, num_threads=num_threads)
        return cls(
            config,
            caller_tokenizer,
            worker_tokenizer,
            texts,
            scheduler,
            torch_device,
            torch_dtype,
            eos_ids,
        )

    # -- add-ons ---------------------------------------------------------------------------

    def register_adapter(self, name: str, path: str | Path) -> None:
        """Make the PEFT LoRA folder ``path`` addressable as ``GenerationRequest.adapter == name``.

        Checks its adapter_config.json now; the weights load on first use.
        Registering the same folder again is a no-op; another folder under the
        same name replaces it for new requests.
        """
        with self._adapters_lock:
            current = self._adapters.get(name)
            if current is not None and current.path == Path(path).expanduser():
                return
            self._registrations += 1
            self._adapters[name] = read_adapter_spec(
                name, path, key=f"{name}#{self._registrations}"
            )

    def _adapter(self, name: str | None) -> AdapterSpec | None:
        if not name:
            return None
        with self._adapters_lock:
            spec = self._adapters.get(name)
        if spec is None:
            raise NotFound(
                f"Add-on {name!r} is not registered with the local engine.",
                code="adapter_not_found",
            )
        return spec

    # -- generation --------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream ``request``'s events; closing the iterator cancels it and frees its KV blocks."""
        if self._closed:
            raise EngineClosed("The local text engine is closed; it accepts no more requests.")
        queue: asyncio.Queue[Delivery] = asyncio.Queue()
        group = self._group(request, EventSink(asyncio.get_running_loop(), queue))
        self._scheduler.submit(group)
        done = False
        try:
            while not done:
                for item in await queue.get():
                    if item is None:
                        done = True
                        break
                    if isinstance(item, BaseException):
                        done = True
                        raise item
                    yield item
        finally:
            if not done:
                self._scheduler.cancel(group)

    def tokenize_prompt(self, request: GenerationRequest) -> TokenizedPrompt:
        """``request``'s prompt ids, checked against the context (``PromptTokenizer``).

        Blocking and thread-safe: each calling thread tokenizes with its own
        copy of the tokenizer, so threads never wait on each other. A prompt
        that cannot fit by its byte length is refused before it is tokenized.
        """
        self._check_params(request)
        context = self._context(request)
        limit = None if self.bytes_per_token is None else ByteLimit(self.bytes_per_token, context)
        tokenizer = self._thread_tokenizer()
        ids = prompt_ids(tokenizer, request, self.config.vocab_size, limit)
        params = request.params
        resolve_max_tokens(len(ids), params.max_tokens, context, request.truncate_max_tokens)
        echo_text = ""
        if request.kind == "completion" and params.echo:
            prompt = request.prompt
            echo_text = prompt if isinstance(prompt, str) else str(tokenizer.decode(ids))
        return TokenizedPrompt(ids, echo_text)

    def _thread_tokenizer(self) -> PreTrainedTokenizerBase:
        tokenizer: PreTrainedTokenizerBase | None = getattr(
            self._thread_tokenizers, "tokenizer", None
        )
        if tokenizer is None:
            with self._tokenizer_lock:
                tokenizer = copy.deepcopy(self._tokenizer)
            self._thread_tokenizers.tokenizer = tokenizer
        return tokenizer

    def _check_params(self, request: GenerationRequest) -> None:
        params = request.params
        if not 1 <= params.n <= MAX_CHOICES:
            raise InvalidArgument(f"n must be between 1 and {MAX_CHOICES}.", param="n")
        if not 0 <= params.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidArgument(
                f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}.", param="top_logprobs"
            )

    def _context(self, request: GenerationRequest) -> int:
        """Tokens a sequence of ``request`` may hold: the model's context, and the KV cache's."""
        stats = self._scheduler.stats()
        # one sequence must fit the cache alone (with the blocks its siblings copy)
        capacity = (stats.blocks_total - (request.params.n - 1)) * stats.block_size
        context = (
            request.context_length if request.context_length > 0 else self.config.max_positions
        )
        return min(context, capacity)

    def _group(self, request: GenerationRequest, sink: EventSink) -> RequestGroup:
        params = request.params
        self._check_params(request)
        adapter = self._adapter(request.adapter)
        if request.tokenized is not None:  # tokenized ahead by the gateway, off the loop
            ids = list(request.tokenized.ids)
            prompt_text = request.tokenized.echo_text
        else:
            limit = (
                None
                if self.bytes_per_token is None
                else ByteLimit(self.bytes_per_token, self._context(request))
            )
            with self._tokenizer_lock:
                ids = prompt_ids(self._tokenizer, request, self.config.vocab_size, limit)
                prompt_text = ""
                if request.kind == "completion" and params.echo:
                    prompt = request.prompt
                    prompt_text = (
                        prompt if isinstance(prompt, str) else str(self._tokenizer.decode(ids))
                    )
        stats = self._scheduler.stats()
        max_tokens = resolve_max_tokens(
            len(ids), params.max_tokens, self._context(request), request.truncate_max_tokens
        )
        cap = (
            len(ids)
            if request.prompt_cache_max_len is None
            else max(request.prompt_cache_max_len, 0)
        )
        echo_logprobs = request.kind == "completion" and params.echo and params.logprobs
        group = RequestGroup(
            request_id=request.request_id,
            kind=request.kind,
            params=params,
            prompt_ids=ids,
            prompt_text=prompt_text,
            max_tokens=max_tokens,
            adapter=adapter,
            cache_cap=0 if echo_logprobs else cap,
            prompt_hashes=block_hashes(ids, stats.block_size, adapter.key if adapter else ""),
            sink=sink,
            prompt_id_set=self._prompt_set(ids, params.repetition_penalty != 1.0),
            background=request.background,
        )
        echo_offset = len(group.prompt_text) if request.kind == "completion" and params.echo else 0
        for index in range(params.n):
            seed = None if params.seed is None else params.seed + index
            group.sequences.append(
                Sequence(
                    group=group,
                    index=index,
                    tokens=list(ids),
                    output=ChoiceOutput(
                        index=index,
                        kind=request.kind,
                        tokenizer=self._worker_tokenizer,
                        texts=self._texts,
                        prompt_ids=ids,
                        stops=params.stop,
                        logprobs=params.logprobs,
                        text_offset=echo_offset,
                    ),
                    sampler=RowSampler(
                        params, make_generator(seed, self.device), group.prompt_id_set, []
                    ),
                )
            )
        return group

    def _prompt_set(self, ids: list[int], needed: bool) -> torch.Tensor:
        if not needed:
            return torch.empty(0, dtype=torch.long, device=self.device)
        return torch.tensor(sorted(set(ids)), dtype=torch.long, device=self.device)

    # -- lifecycle -----------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        """Blocks used/free/cached, running/waiting counts, loaded add-ons, forward passes."""
        return self._scheduler.stats()

    def shutdown(self, timeout: float | None = None) -> None:
        """Blocking ``close``: fail unfinished requests and stop the thread. Idempotent."""
        self._closed = True
        self._scheduler.stop(timeout)

    async def close(self) -> None:
        """Stop accepting requests, fail unfinished ones and stop the scheduler thread."""
        await asyncio.to_thread(self.shutdown)
