"""Choosing each sequence's next token, with the request's own sampling parameters.

Every row of a step may sample differently: greedy next to temperature 0.8
with top-p, penalties on one row only, a seed on another. Rows are
processed one by one (a step holds at most a few hundred of them), except
for the common all-greedy, no-penalty case, which is one ``argmax``. The
warpers run in transformers' order (penalties, temperature, top-k, top-p,
min-p); a seeded request draws from its own ``torch.Generator`` so that the
same seed gives the same choice whatever else shares the batch.

Logprobs are those of the model's raw distribution (before penalties and
temperature), as vLLM reports them by default.

One row's fault is that row's alone: ``sample`` returns the exception in
place of a token for a row it could not sample (non-finite weights, an
empty distribution), and the batch fails only that row's request. Nothing
here may raise for one row and so take the whole step (every tenant's
requests) down with it; and a distribution is checked before
``torch.multinomial``, which on CUDA would trip a device-side assert.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from firebox.inference.engine import SamplingParams

GREEDY_EPSILON = 1e-5


@dataclass(slots=True)
class RowSampler:
    """What one sequence needs to sample: its parameters, generator and token history."""

    params: SamplingParams
    generator: torch.Generator | None
    prompt_ids: torch.Tensor  # unique prompt token ids (for the repetition penalty)
    output_ids: list[int]

    @property
    def greedy(self) -> bool:
        return self.params.temperature < GREEDY_EPSILON

    @property
    def penalized(self) -> bool:
        p = self.params
        return p.presence_penalty != 0 or p.frequency_penalty != 0 or p.repetition_penalty != 1.0


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The chosen token's log-probability and the ``k`` most likely alternatives."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


class UnsampleableRow(ValueError):
    """A row's sampling distribution has no finite, positive mass to draw from."""


def _penalize(logits: torch.Tensor, row: RowSampler) -> torch.Tensor:
    p = row.params
    if p.repetition_penalty != 1.0:
        seen = row.prompt_ids
        if row.output_ids:
            extra = sorted(set(row.output_ids).difference(row.prompt_ids.tolist()))
            out = torch.tensor(extra, dtype=torch.long, device=logits.device)
            seen = torch.cat([seen, out])
        if seen.numel():
            picked = logits[seen]
            logits[seen] = torch.where(
                picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty
            )
    if (p.presence_penalty or p.frequency_penalty) and row.output_ids:
        out = torch.tensor(row.output_ids, dtype=torch.long, device=logits.device)
        counts = torch.bincount(out, minlength=logits.shape[0]).to(logits.dtype)
        logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
    # A penalty near 0 divides a positive logit past the float range: +inf would
    # make the softmax NaN. The largest finite value keeps the intended order.
    limit = torch.finfo(logits.dtype).max
    return logits.clamp_(-limit, limit)


def _warp(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p; removed tokens get -inf."""
    logits = logits / p.temperature
    vocab = logits.shape[0]
    if 0 < p.top_k < vocab:
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = ordered.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of strictly more likely tokens
        drop = before >= p.top_p
        drop[0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    if p.min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    return logits


def sample(logits: torch.Tensor, rows: list[RowSampler]) -> list[int | Exception]:
    """The next token of each row of ``logits`` [rows, vocab] (float32), or why there is none.

    A row that cannot be sampled gets its exception instead of a token; the
    other rows are sampled exactly as if it were not there.
    """
    if all(r.greedy and not r.penalized for r in rows):
        return [int(t) for t in logits.argmax(-1).tolist()]
    chosen: list[int | Exception] = []
    for i, row in enumerate(rows):
        try:
            chosen.append(_sample_row(logits[i], row))
        except Exception as exc:  # this row's fault: its request ends, the batch goes on
            chosen.append(exc)
    return chosen


def _sample_row(x: torch.Tensor, row: RowSampler) -> int:
    if row.penalized:
        x = _penalize(x.clone(), row)
    if row.greedy:
        return int(x.argmax())
    probs = _warp(x, row.params).softmax(-1)
    # NaN, inf or no mass cannot be drawn from, and on CUDA multinomial would trip a
    # device-side assert that breaks the whole process: draw from a harmless stand-in
    # instead, and read the verdict with the token in the one host sync int() costs.
    usable = torch.isfinite(probs).all() & (probs.sum() > 0)
    safe = torch.where(usable, probs, torch.ones_like(probs))
    drawn = torch.multinomial(safe, 1, generator=row.generator)
    token, ok = torch.cat([drawn, usable.reshape(1).long()]).tolist()
    if not ok:
        raise UnsampleableRow(
            "the next-token distribution is not finite (sampling parameters "
            f"temperature={row.params.temperature!r}, top_p={row.params.top_p!r}, "
            f"min_p={row.params.min_p!r}, repetition_penalty={row.params.repetition_penalty!r})"
        )
    return int(token)


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: list[int]) -> list[TokenLogprob]:
    """Logprob of ``tokens[i]`` under row ``i`` of ``logits``, with ``top[i]`` alternatives."""
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(1, torch.tensor(tokens, device=logits.device)[:, None]).squeeze(1).tolist()
    k = max(top, default=0)
    best_values: list[list[float]] = [[] for _ in tokens]
    best_ids: list[list[int]] = [[] for _ in tokens]
    if k:
        values, ids = torch.topk(logp, k, dim=-1)
        best_values, best_ids = values.tolist(), ids.tolist()
    return [
        TokenLogprob(
            token=tok,
            logprob=float(picked[i]),
            top=tuple(zip(best_ids[i][: top[i]], best_values[i][: top[i]], strict=True)),
        )
        for i, tok in enumerate(tokens)
    ]


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A private generator for a seeded choice; None (the global one) otherwise."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed % (2**63))
    return generator
