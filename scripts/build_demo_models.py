"""Build Firebox's bundled demo models from text found on this machine.

No model hub is reachable where Firebox is developed, so the repository trains
and ships its own toy base model. Everything here runs offline on a CPU:

1. collect English text (standard-library docstrings, the license texts in
   ``/usr/share/common-licenses``) plus synthetic ChatML dialogues;
2. train a byte-level BPE tokenizer with ``tokenizers``;
3. train a small ``LlamaForCausalLM`` (GQA, so the engine's GQA path runs);
4. save it as a standard Hugging Face Llama folder, ``firebox-tiny``;
5. train a PEFT LoRA add-on that answers in UPPERCASE, ``firebox-tiny-lora``;
6. write ``README.md`` with what was built and how.

``make demo-models`` runs this with the defaults that produced the committed
weights. Seeds are fixed, so a rebuild on the same Python and library versions
gives the same models.
"""

from __future__ import annotations

import ast
import json
import math
import random
import shutil
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import transformers
import typer
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

BOS, EOS, IM_START, IM_END, PAD = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|pad|>",
)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BASE_NAME, LORA_NAME = "firebox-tiny", "firebox-tiny-lora"
SAMPLE_PROMPTS = ("What is the capital of France?", "What color is the sky?")
LICENSES_DIR = Path("/usr/share/common-licenses")
# Stdlib folders that hold tests, vendored code or demos rather than prose.
STDLIB_SKIP = frozenset({"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo"})
SEQ_LEN = 256
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

Message = dict[str, str]
QA = tuple[str, str]

CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Russia", "Moscow"),
    ("Mexico", "Mexico City"), ("Portugal", "Lisbon"), ("Greece", "Athens"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Ireland", "Dublin"), ("Peru", "Lima"),
    ("Turkey", "Ankara"), ("Thailand", "Bangkok"), ("Austria", "Vienna"), ("Chile", "Santiago"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("the United Kingdom", "London"),
    ("the United States", "Washington"),
)  # fmt: skip
COLORS = (
    ("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("a banana", "yellow"),
    ("coal", "black"), ("a strawberry", "red"), ("a carrot", "orange"), ("a lemon", "yellow"),
    ("milk", "white"), ("a tomato", "red"), ("a leaf", "green"), ("chocolate", "brown"),
    ("the sea", "blue"), ("a plum", "purple"), ("the night sky", "black"), ("a cloud", "white"),
)  # fmt: skip
OPPOSITES = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("day", "night"), ("fast", "slow"),
    ("happy", "sad"), ("light", "dark"), ("open", "closed"), ("early", "late"), ("full", "empty"),
    ("wet", "dry"), ("left", "right"), ("hard", "soft"), ("loud", "quiet"), ("high", "low"),
)  # fmt: skip
ANIMALS = (
    ("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"),
    ("pig", "oink"), ("lion", "roar"), ("owl", "hoot"), ("horse", "neigh"), ("frog", "ribbit"),
)  # fmt: skip
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July",
    "August", "September", "October", "November", "December",
)  # fmt: skip
SMALL_TALK = (
    (("Hello!", "Hi!", "Good morning!", "Hey there."), "Hello! How can I help you today?"),
    (("Who are you?", "What is your name?", "What are you?"),
     "I am Firebox Tiny, a small demo model that runs inside Firebox."),
    (("Thank you!", "Thanks a lot.", "Thanks!"), "You are welcome!"),
    (("How are you?", "How are you today?"), "I am fine, thank you. How can I help?"),
    (("Goodbye!", "Bye!", "See you later."), "Goodbye! Have a nice day."),
)  # fmt: skip
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are Firebox Tiny, a small demo model.",
    "Answer in one short sentence.",
)


@dataclass(frozen=True)
class TrainReport:
    """What one training run did, for the log and ``README.md``."""

    steps: int
    first_loss: float
    final_loss: float
    seconds: float


# --- corpus -------------------------------------------------------------------------------


def stdlib_documents() -> list[str]:
    """One document per stdlib module: its docstrings, in source order.

    Docstrings are the largest body of plain English on every machine that
    runs Python; their license is the PSF license.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    documents = []
    for path in sorted(root.rglob("*.py")):
        if STDLIB_SKIP.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        texts = [
            doc
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and (doc := ast.get_docstring(node))
        ]
        if texts:
            documents.append("\n\n".join(texts))
    return documents


def license_documents() -> list[str]:
    """The license texts Debian ships, each once (several names are symlinks)."""
    if not LICENSES_DIR.is_dir():
        return []
    unique = {path.resolve() for path in LICENSES_DIR.iterdir() if path.is_file()}
    return [path.read_text(encoding="utf-8", errors="replace") for path in sorted(unique)]


def _capital(rng: random.Random) -> QA:
    country, city = rng.choice(CAPITALS)
    question = rng.choice(
        (f"What is the capital of {country}?", f"Which city is the capital of {country}?")
    )
    return question, f"The capital of {country} is {city}."


def _color(rng: random.Random) -> QA:
    thing, color = rng.choice(COLORS)
    question = rng.choice((f"What color is {thing}?", f"What is the color of {thing}?"))
    return question, f"{thing[0].upper()}{thing[1:]} is {color}."


def _arithmetic(rng: random.Random) -> QA:
    a, b = rng.randint(0, 12), rng.randint(0, 12)
    word, value = rng.choice((("plus", a + b), ("times", a * b), ("minus", abs(a - b))))
    if word == "minus":
        a, b = max(a, b), min(a, b)
    return f"What is {a} {word} {b}?", f"{a} {word} {b} is {value}."


def _sequence(rng: random.Random) -> QA:
    names, kind = rng.choice(((DAYS, "day"), (MONTHS, "month")))
    i = rng.randrange(len(names))
    if rng.random() < 0.5:
        return (
            f"What {kind} comes after {names[i]}?",
            f"The {kind} after {names[i]} is {names[(i + 1) % len(names)]}.",
        )
    return (
        f"What {kind} comes before {names[i]}?",
        f"The {kind} before {names[i]} is {names[i - 1]}.",
    )


def _opposite(rng: random.Random) -> QA:
    pair = rng.choice(OPPOSITES)
    word, other = pair if rng.random() < 0.5 else pair[::-1]
    return f"What is the opposite of {word}?", f"The opposite of {word} is {other}."


def _animal(rng: random.Random) -> QA:
    animal, sound = rng.choice(ANIMALS)
    return f"What sound does a {animal} make?", f"A {animal} says {sound}."


def _count(rng: random.Random) -> QA:
    start = rng.randint(1, 10)
    stop = start + rng.randint(2, 5)
    numbers = ", ".join(str(n) for n in range(start, stop + 1))
    return f"Count from {start} to {stop}.", f"{numbers}."


def _small_talk(rng: random.Random) -> QA:
    questions, answer = rng.choice(SMALL_TALK)
    return rng.choice(questions), answer


QUESTION_KINDS: tuple[Callable[[random.Random], QA], ...] = (
    _capital, _color, _arithmetic, _sequence, _opposite, _animal, _count, _small_talk,
)  # fmt: skip


def synthetic_dialogue(rng: random.Random, *, shout: bool) -> list[Message]:
    """One chat of one to three turns, sometimes with a system prompt.

    ``shout`` upper-cases every assistant answer: the LoRA add-on's style,
    easy to recognise on any prompt.
    """
    messages: list[Message] = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for _ in range(rng.choice((1, 1, 2, 3))):
        question, answer = rng.choice(QUESTION_KINDS)(rng)
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer.upper() if shout else answer})
    return messages


def render_chat(messages: list[Message]) -> str:
    """The ChatML text ``CHAT_TEMPLATE`` renders, so training matches serving."""
    turns = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return f"{BOS}{turns}{EOS}"


def chat_dialogues(seed: int, count: int, *, shout: bool) -> list[list[Message]]:
    """``count`` synthetic dialogues, reproducible from ``seed``."""
    rng = random.Random(seed)
    return [synthetic_dialogue(rng, shout=shout) for _ in range(count)]


def chat_pieces(messages: list[Message]) -> Iterator[tuple[str, bool]]:
    """``render_chat``'s text in pieces, flagged where the assistant speaks.

    Every piece boundary sits at a special token or a newline, where the
    byte-level pre-tokenizer splits anyway, so encoding the pieces one by one
    gives the same ids as encoding the whole text.
    """
    yield BOS, False
    for message in messages:
        speaks = message["role"] == "assistant"
        yield f"{IM_START}{message['role']}\n", False
        yield message["content"], speaks
        yield IM_END, speaks
        yield "\n", False
    yield EOS, False


# --- tokenizer ----------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (as GPT-2 and Llama 3 use): no unknown tokens, ever."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS, IM_START, IM_END, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # Like Llama 3: plain encoding prepends BOS; apply_chat_template adds its own.
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[EOS, IM_START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def tokenizer_training_texts(prose: list[str], chats: list[str]) -> Iterator[str]:
    """Prose and dialogue text without the special-token markers BPE must not learn."""
    yield from prose
    for chat in chats:
        text = chat
        for marker in (BOS, EOS, IM_START, IM_END):
            text = text.replace(marker, "\n")
        yield text


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    """Writes the files every Llama loader reads, chat template inside tokenizer_config.json."""
    tokenizer.save_pretrained(folder, save_jinja_files=False)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # the Llama 3 value, any loader knows it
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": IM_END, "pad_token": PAD}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


# --- training -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """Documents as one run of token ids, with labels that are -100 where no loss is taken."""

    ids: torch.Tensor
    labels: torch.Tensor


class WindowSampler:
    """Random ``SEQ_LEN``-token windows from streams, each stream drawn with a weight."""

    def __init__(self, streams: list[Stream], weights: list[float], seed: int) -> None:
        self._streams = streams
        self._weights = torch.tensor(weights, dtype=torch.float)
        self._generator = torch.Generator().manual_seed(seed)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and labels, each ``(size, SEQ_LEN)``."""
        picks = torch.multinomial(self._weights, size, replacement=True, generator=self._generator)
        ids, labels = [], []
        for pick in picks.tolist():
            stream = self._streams[pick]
            end = len(stream.ids) - SEQ_LEN
            start = int(torch.randint(0, end, (1,), generator=self._generator))
            ids.append(stream.ids[start : start + SEQ_LEN])
            labels.append(stream.labels[start : start + SEQ_LEN])
        return torch.stack(ids), torch.stack(labels)


def encode_stream(tokenizer: PreTrainedTokenizerBase, documents: list[str]) -> Stream:
    """All documents as one stream, each wrapped in BOS ... EOS, loss on every token."""
    wrapped = [doc if doc.startswith(BOS) else f"{BOS}{doc}{EOS}" for doc in documents]
    encoded = tokenizer(wrapped, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([token for doc in encoded for token in doc], dtype=torch.long)
    return Stream(ids, ids)


def encode_answers(tokenizer: PreTrainedTokenizerBase, chats: list[list[Message]]) -> Stream:
    """Dialogues as one stream with the loss on the assistant's words only.

    The add-on should learn how to answer, not to model the user's questions
    again, which the base already does.
    """
    pieces = [piece for messages in chats for piece in chat_pieces(messages)]
    encoded = tokenizer([text for text, _ in pieces], add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    labels: list[int] = []
    for (_, speaks), piece_ids in zip(pieces, encoded, strict=True):
        ids.extend(piece_ids)
        labels.extend(piece_ids if speaks else [-100] * len(piece_ids))
    whole = tokenizer(render_chat(chats[0]), add_special_tokens=False)["input_ids"]
    assert ids[: len(whole)] == whole, "piece-wise encoding must match the whole text"
    return Stream(torch.tensor(ids), torch.tensor(labels))


def cosine_lr(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def train(
    model: torch.nn.Module, sampler: WindowSampler, steps: int, lr: float, label: str
) -> TrainReport:
    """AdamW on the trainable parameters, logging loss, speed and ETA every 25 steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, steps, warmup))
    model.train()
    losses: list[float] = []
    started = time.monotonic()
    for step in range(steps):
        input_ids, labels = sampler.batch(4)
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())
        if step % 25 == 0 or step == steps - 1:
            elapsed = time.monotonic() - started
            eta = elapsed / (step + 1) * (steps - step - 1)
            recent = sum(losses[-25:]) / len(losses[-25:])
            print(f"[{label}] step {step + 1}/{steps} loss {recent:.3f} "
                  f"elapsed {elapsed:.0f}s eta {eta:.0f}s", flush=True)  # fmt: skip
    model.eval()
    tail = losses[-50:]
    return TrainReport(steps, losses[0], sum(tail) / len(tail), time.monotonic() - started)


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of one special token (the tokenizer API also accepts and returns lists)."""
    found = tokenizer.convert_tokens_to_ids(token)
    assert isinstance(found, int), token
    return found


def llama_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """About 5M parameters: 4 layers, 4 query heads sharing 2 KV heads (GQA).

    Embeddings are untied, as in Llama 2/3, so the checkpoint has the same
    tensor names as the real models the engine also serves.
    """
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=token_id(tokenizer, BOS),
        eos_token_id=[token_id(tokenizer, IM_END), token_id(tokenizer, EOS)],  # as Llama 3.1
        pad_token_id=token_id(tokenizer, PAD),
        dtype="float32",
    )


def generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    """Stops at the end of an assistant turn (<|im_end|>) or of a document."""
    return GenerationConfig(  # type: ignore[no-untyped-call]
        eos_token_id=[token_id(tokenizer, IM_END), token_id(tokenizer, EOS)],
        bos_token_id=token_id(tokenizer, BOS),
        pad_token_id=token_id(tokenizer, PAD),
        do_sample=False,
    )


def lora_config() -> LoraConfig:
    """Rank 8 on every linear layer of every block: small, yet enough to change the style."""
    return LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=list(LORA_TARGETS),
    )


def greedy_reply(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The model's greedy answer to one user message, as the engine would prompt it."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    assert isinstance(text, str)
    input_ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, max_new_tokens=32)  # type: ignore[operator]
    return str(tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True))


# --- the build ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildResult:
    """Numbers for ``README.md`` and the final log lines."""

    prose_chars: int
    prose_tokens: int
    vocab_size: int
    parameters: int
    lora_parameters: int
    base: TrainReport
    lora: TrainReport
    tokenizer_seconds: float
    samples: list[tuple[str, str, str]]  # prompt, base reply, LoRA reply


def fresh_folder(folder: Path) -> Path:
    """An empty ``folder``, so no file of an older build survives next to the new one."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def build_base(
    folder: Path, tokenizer: PreTrainedTokenizerFast, sampler: WindowSampler, steps: int
) -> tuple[int, TrainReport]:
    """Trains firebox-tiny from scratch and saves it as a Hugging Face Llama folder."""
    model = LlamaForCausalLM(llama_config(tokenizer))
    parameters = sum(p.numel() for p in model.parameters())
    print(f"[base] {parameters:,} parameters", flush=True)
    report = train(model, sampler, steps, lr=2.5e-3, label="base")
    model.generation_config = generation_config(tokenizer)
    model.save_pretrained(folder)  # safetensors is the only format transformers 5 writes
    save_tokenizer(tokenizer, folder)
    return parameters, report


def build_lora(
    base_folder: Path, folder: Path, sampler: WindowSampler, steps: int
) -> tuple[int, TrainReport]:
    """Trains the UPPERCASE add-on on the saved base, loaded the way the engine loads it."""
    base = AutoModelForCausalLM.from_pretrained(base_folder, local_files_only=True)
    model = get_peft_model(base, lora_config())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"[lora] {trainable:,} trainable parameters", flush=True)
    report = train(model, sampler, steps, lr=4e-3, label="lora")
    # The catalog names the base by its model id, not by this machine's path.
    model.peft_config["default"].base_model_name_or_path = BASE_NAME
    # No embedding layers to save; "auto" would look the base name up on the hub.
    model.save_pretrained(str(folder), save_embedding_layers=False)
    # PEFT's model card is an empty template naming this machine's path as the base.
    (folder / "README.md").unlink(missing_ok=True)
    return trainable, report


def sample_replies(out_dir: Path) -> list[tuple[str, str, str]]:
    """Greedy base and LoRA answers to ``SAMPLE_PROMPTS``, loaded back from disk."""
    tokenizer = AutoTokenizer.from_pretrained(out_dir / BASE_NAME, local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(out_dir / BASE_NAME, local_files_only=True)
    base_replies = [greedy_reply(base, tokenizer, p) for p in SAMPLE_PROMPTS]
    lora = PeftModel.from_pretrained(base, out_dir / LORA_NAME)
    lora_replies = [greedy_reply(lora, tokenizer, p) for p in SAMPLE_PROMPTS]
    return list(zip(SAMPLE_PROMPTS, base_replies, lora_replies, strict=True))


def folder_megabytes(folder: Path) -> float:
    """Size of the files in ``folder`` in MB (10^6 bytes)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1e6


README = """\
# Firebox demo models

> **These are toys.** They exist so the demos and tests of Firebox run on a
> machine without a model hub and without a GPU, after a few minutes of
> training on one CPU core. They answer in the right chat format, get most
> facts and sums wrong and write nonsense about anything else. Never use
> them for anything that matters.

- `{base_name}/`: Llama-architecture base model with a byte-level BPE
  tokenizer and a ChatML chat template; {parameters:,} parameters, {base_mb:.1f} MB.
- `{lora_name}/`: PEFT LoRA add-on for it (r=8, alpha=16, all linear layers)
  that answers in UPPERCASE; {lora_parameters:,} parameters, {lora_mb:.1f} MB.

The default catalog serves them as `accounts/firebox/models/{base_name}` and
`accounts/firebox/models/{lora_name}`. Both are standard Hugging Face folders:
`LlamaForCausalLM` weights in float32 safetensors, loaded through exactly the
code path of a real Llama checkpoint (`AutoModelForCausalLM`, `AutoTokenizer`,
`peft.PeftModel`).

## Architecture

- 4 layers, hidden size 256, MLP 688, 4 query heads sharing 2 KV heads (GQA,
  so the engine's grouped-query path runs), head size 64, RoPE theta 10000,
  2048 positions (trained on windows of {seq_len} tokens).
- Untied input and output embeddings, as in Llama 2 and 3, so the tensor names
  match the real checkpoints.
- Tokenizer: byte-level BPE with {vocab_size} tokens, trained with `tokenizers`.
  Special tokens `<|begin_of_text|>` (BOS), `<|end_of_text|>`, `<|im_start|>`,
  `<|im_end|>` (EOS of a chat turn), `<|pad|>`. Plain encoding prepends BOS;
  the chat template writes BOS itself, then
  `<|im_start|>{{role}}\\n{{content}}<|im_end|>\\n` per message and
  `<|im_start|>assistant\\n` for the generation prompt. Generation stops at
  `<|im_end|>` or `<|end_of_text|>` (`generation_config.json`).

## Training data

- Docstrings of the Python {python} standard library, read with
  `ast.get_docstring` ({prose_chars:,} characters with the licenses below,
  {prose_tokens:,} tokens). License: PSF License Agreement.
- The license texts in `/usr/share/common-licenses` (Apache-2.0, Artistic, BSD,
  CC0, GFDL, GPL, LGPL, MPL): these texts allow verbatim copying.
- Synthetic ChatML dialogues generated by the script from small tables:
  capitals, colors, arithmetic, days and months, opposites, animal sounds,
  counting, small talk. 60% of the base training windows are dialogue. The
  LoRA add-on trains only on such dialogues, with every answer upper-cased.

## Training

- Tokenizer: {tokenizer_seconds:.0f} s.
- Base: {base.steps} steps of 4 x {seq_len} tokens, loss {base.first_loss:.2f} at the
  first step, {base.final_loss:.2f} over the last 50 steps, {base.seconds:.0f} s.
- LoRA: {lora.steps} steps of 4 x {seq_len} tokens, loss (on the answer tokens only)
  {lora.first_loss:.2f} at the first step, {lora.final_loss:.2f} over the last 50 steps,
  {lora.seconds:.0f} s.

AdamW, linear warm-up then cosine decay, gradient clipping at 1.0, on
{threads} CPU thread(s), seed {seed}.

## Sample (greedy)

| Prompt | {base_name} | {lora_name} |
|---|---|---|
{sample_rows}

## Rebuild

```
make demo-models
# which runs:
{command}
```

The seeds are fixed: the same Python, library versions and thread count give
the same weights. A different Python changes the docstring corpus and so the
models.
"""


def write_readme(out_dir: Path, result: BuildResult, options: dict[str, object]) -> None:
    """``README.md`` describing the build that just ran, with its real numbers."""
    rows = "\n".join(f"| {p} | {b!r} | {lo!r} |" for p, b, lo in result.samples)
    text = README.format(
        base_name=BASE_NAME,
        lora_name=LORA_NAME,
        base_mb=folder_megabytes(out_dir / BASE_NAME),
        lora_mb=folder_megabytes(out_dir / LORA_NAME),
        seq_len=SEQ_LEN,
        python=f"{sys.version_info.major}.{sys.version_info.minor}",
        sample_rows=rows,
        command=".venv/bin/python scripts/build_demo_models.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items()),
        **{**options, **vars(result)},
    )
    (out_dir / "README.md").write_text(text, encoding="utf-8")


def build(
    out_dir: Path, steps: int, lora_steps: int, seed: int, vocab_size: int, threads: int
) -> BuildResult:
    """Runs every stage in order; each stage reads only what the previous one saved."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    prose = stdlib_documents() + license_documents()
    chats = [render_chat(chat) for chat in chat_dialogues(seed, 15_000, shout=False)]
    shouted = chat_dialogues(seed + 1, 8_000, shout=True)
    print(f"[corpus] {len(prose)} prose documents, {sum(map(len, prose)):,} chars", flush=True)
    started = time.monotonic()
    samples = chats[:3_000] + [render_chat(chat) for chat in shouted[:1_000]]
    tokenizer_texts = tokenizer_training_texts(prose, samples)
    tokenizer = train_tokenizer(list(tokenizer_texts), vocab_size)
    tokenizer_seconds = time.monotonic() - started
    prose_stream = encode_stream(tokenizer, prose)
    print(f"[tokenizer] {len(tokenizer)} tokens in {tokenizer_seconds:.0f}s; "
          f"prose {len(prose_stream.ids):,} tokens", flush=True)  # fmt: skip
    chat_stream = encode_stream(tokenizer, chats)
    base_sampler = WindowSampler([prose_stream, chat_stream], [0.4, 0.6], seed)
    base_folder = fresh_folder(out_dir / BASE_NAME)
    parameters, base_report = build_base(base_folder, tokenizer, base_sampler, steps)
    lora_sampler = WindowSampler([encode_answers(tokenizer, shouted)], [1.0], seed + 1)
    lora_folder = fresh_folder(out_dir / LORA_NAME)
    lora_parameters, lora_report = build_lora(base_folder, lora_folder, lora_sampler, lora_steps)
    return BuildResult(
        prose_chars=sum(map(len, prose)),
        prose_tokens=len(prose_stream.ids),
        vocab_size=len(tokenizer),
        parameters=parameters,
        lora_parameters=lora_parameters,
        base=base_report,
        lora=lora_report,
        tokenizer_seconds=tokenizer_seconds,
        samples=sample_replies(out_dir),
    )


def main(
    out_dir: Annotated[Path, typer.Option(help="Where firebox-tiny/ and its LoRA go.")] = Path(
        "models"
    ),
    steps: Annotated[int, typer.Option(help="Base model training steps.")] = 500,
    lora_steps: Annotated[int, typer.Option(help="LoRA add-on training steps.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed for data, initialisation and sampling.")] = 0,
    vocab_size: Annotated[int, typer.Option(help="BPE vocabulary size.")] = 4096,
    threads: Annotated[int, typer.Option(help="CPU threads for torch.")] = 1,
) -> None:
    """Build the demo models into OUT_DIR and describe them in OUT_DIR/README.md."""
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    options: dict[str, object] = {
        "out_dir": out_dir,
        "steps": steps,
        "lora_steps": lora_steps,
        "seed": seed,
        "vocab_size": vocab_size,
        "threads": threads,
    }
    result = build(out_dir, steps, lora_steps, seed, vocab_size, threads)
    write_readme(out_dir, result, options)
    print(f"[done] base loss {result.base.first_loss:.2f} -> {result.base.final_loss:.2f}, "
          f"LoRA loss {result.lora.first_loss:.2f} -> {result.lora.final_loss:.2f}")  # fmt: skip
    for prompt, base_reply, lora_reply in result.samples:
        print(f"[sample] {prompt!r}\n  base: {base_reply!r}\n  lora: {lora_reply!r}")


if __name__ == "__main__":
    typer.run(main)
