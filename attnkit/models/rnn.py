"""The baseline the Transformer replaced: an RNN encoder-decoder with additive attention
(Bahdanau, Cho, Bengio 2015), as in the classic "translation with a sequence to sequence network
and attention" setup. A bidirectional GRU/LSTM reads the source; at each target step the decoder
scores every encoder state against its previous state, e_j = v^T tanh(W s + U h_j), and feeds the
attention-weighted context together with the previous target token into its recurrent cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..config import Config, check_choice, check_dropout, check_positive
from ..generation import check_sampling, search
from .common import check_same_batch, check_tokens, resolve_key_mask


@dataclass
class RNNSeq2SeqConfig(Config):
    """Configuration of :class:`RNNSeq2Seq`, the GRU/LSTM encoder-decoder with additive attention.

    ``d_embed``: token embedding width; ``d_hidden``: recurrent state width (the encoder is
    bidirectional, so its states are ``2 * d_hidden`` wide). ``cell``: "gru" or "lstm". ``n_layers``:
    stacked recurrent layers in the encoder and in the decoder (``dropout`` applies between them only
    when there are several, and to the embeddings and output features). ``max_len`` bounds generation.
    ``pad_id``: when set, a missing source key mask is derived as ``src != pad_id``.
    """

    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    d_embed: int = 256
    d_hidden: int = 512
    cell: str = "gru"  # gru | lstm
    n_layers: int = 1
    dropout: float = 0.1
    max_len: int = 256
    pad_id: int | None = None

    def __post_init__(self):
        check_positive(self, "src_vocab_size", "tgt_vocab_size", "d_embed", "d_hidden", "n_layers", "max_len")
        check_choice(self, "cell", ("gru", "lstm"))
        check_dropout(self, "dropout")


@dataclass(frozen=True)
class RNNState:
    """The decoder's recurrent state, batch first: ``h`` (B, n_layers, d_hidden), and the LSTM's cell
    state ``c`` (same shape; None for a GRU). A dataclass, so that beam search can reorder it."""

    h: Tensor
    c: Tensor | None = None

    @classmethod
    def from_torch(cls, state) -> RNNState:
        """From nn.GRU's h or nn.LSTM's (h, c), each (n_layers, B, d_hidden)."""
        if isinstance(state, tuple):
            return cls(state[0].transpose(0, 1).contiguous(), state[1].transpose(0, 1).contiguous())
        return cls(state.transpose(0, 1).contiguous())

    def to_torch(self):
        """The layout nn.GRU/nn.LSTM take: h, or (h, c), each (n_layers, B, d_hidden)."""
        h = self.h.transpose(0, 1).contiguous()
        return h if self.c is None else (h, self.c.transpose(0, 1).contiguous())


class RNNEncoding(NamedTuple):
    """What :meth:`RNNSeq2Seq.encode` returns: everything the decoder reads from the source."""

    states: Tensor  # (B, S, 2 * d_hidden): the encoder's states, attended to
    keys_proj: Tensor  # (B, S, d_hidden): their projection U h_j, computed once
    state: RNNState  # the decoder's first state
    src_key_mask: Tensor | None  # (B, S), True = real token


class AdditiveAttention(nn.Module):
    """score(s, h_j) = v^T tanh(W s + U h_j), softmax over the unmasked j, context = sum_j a_j h_j."""

    def __init__(self, d_query: int, d_key: int, d_attn: int):
        super().__init__()
        self.W = nn.Linear(d_query, d_attn, bias=False)
        self.U = nn.Linear(d_key, d_attn)
        self.v = nn.Linear(d_attn, 1, bias=False)

    def forward(
        self, s: Tensor, keys_proj: Tensor, keys: Tensor, key_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """s (B, d_query), keys_proj = U(keys) (B, S, d_attn), keys (B, S, d_key), key_mask (B, S)
        -> context (B, d_key), weights (B, S)."""
        scores = self.v(torch.tanh(self.W(s)[:, None] + keys_proj)).squeeze(-1)  # (B, S)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        return (weights[:, :, None] * keys).sum(1), weights


class RNNSeq2Seq(nn.Module):
    """GRU/LSTM encoder-decoder with additive attention. Same interface as :class:`Transformer`:
    ``forward(src, tgt) -> logits``, ``generate(src, max_new_tokens, bos_id=..., eos_id=...)``."""

    def __init__(self, config: RNNSeq2SeqConfig):
        super().__init__()
        c = self.config = config
        rnn = nn.GRU if c.cell == "gru" else nn.LSTM
        H = c.d_hidden
        self.src_embed = nn.Embedding(c.src_vocab_size, c.d_embed)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.d_embed)
        inner_dropout = c.dropout if c.n_layers > 1 else 0.0
        self.encoder = rnn(c.d_embed, H, c.n_layers, batch_first=True, bidirectional=True, dropout=inner_dropout)
        self.bridge = nn.Linear(2 * H, H)  # last encoder states (both directions) -> first decoder state
        self.attention = AdditiveAttention(H, 2 * H, H)
        self.decoder = rnn(c.d_embed + 2 * H, H, c.n_layers, batch_first=True, dropout=inner_dropout)
        self.out = nn.Sequential(nn.Linear(H + 2 * H + c.d_embed, H), nn.Tanh(), nn.Linear(H, c.tgt_vocab_size))
        self.dropout = nn.Dropout(c.dropout)

    def encode(self, src: Tensor, src_key_mask: Tensor | None = None) -> RNNEncoding:
        """src (B, S) -> :class:`RNNEncoding` (encoder states, their projection for attention, the first
        decoder state, the source key mask). ``src_key_mask`` (B, S): True for real tokens (default
        ``src != pad_id`` when the config has a ``pad_id``); real tokens must come first."""
        check_tokens(src, self.config.src_vocab_size, "src")
        src_key_mask = resolve_key_mask(src, src_key_mask, self.config.pad_id, "src_key_mask")
        x = self.dropout(self.src_embed(src))  # (B, S, E)
        if src_key_mask is not None:
            lengths = src_key_mask.sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            states, last = self.encoder(packed)
            states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=src.shape[1])
        else:
            states, last = self.encoder(x)  # (B, S, 2H)
        h = last[0] if isinstance(last, tuple) else last  # (2 * n_layers, B, H)
        B = src.shape[0]
        h = h.view(self.config.n_layers, 2, B, -1)
        h0 = torch.tanh(self.bridge(torch.cat([h[:, 0], h[:, 1]], dim=-1)))  # (n_layers, B, H)
        state = RNNState.from_torch((h0, torch.zeros_like(h0)) if self.config.cell == "lstm" else h0)
        return RNNEncoding(states, self.attention.U(states), state, src_key_mask)

    def _decode(self, tgt: Tensor, memory: RNNEncoding, state: RNNState) -> tuple[Tensor, RNNState]:
        """Teacher-forced or incremental decoding of tgt (B, T) from ``state`` -> logits (B, T, V), state."""
        emb = self.dropout(self.tgt_embed(tgt))  # (B, T, E)
        hidden = state.to_torch()  # (n_layers, B, H), or LSTM's (h, c)
        logits = []
        for t in range(tgt.shape[1]):
            top = (hidden[0] if isinstance(hidden, tuple) else hidden)[-1]  # (B, H)
            context, _ = self.attention(top, memory.keys_proj, memory.states, memory.src_key_mask)  # (B, 2H)
            out, hidden = self.decoder(torch.cat([emb[:, t], context], dim=-1)[:, None], hidden)
            features = torch.cat([out[:, 0], context, emb[:, t]], dim=-1)
            logits.append(self.out(self.dropout(features)))
        return torch.stack(logits, dim=1), RNNState.from_torch(hidden)

    def forward(
        self, src: Tensor, tgt: Tensor, src_key_mask: Tensor | None = None, tgt_key_mask: Tensor | None = None
    ) -> Tensor:
        """src (B, S), tgt (B, T) shifted right -> logits (B, T, tgt_vocab_size). ``tgt_key_mask`` is
        unused (a recurrent decoder only reads earlier tokens); it is accepted for interface parity."""
        memory = self.encode(src, src_key_mask)
        check_tokens(tgt, self.config.tgt_vocab_size, "tgt")
        check_same_batch(src=src, tgt=tgt)
        return self._decode(tgt, memory, memory.state)[0]

    @torch.no_grad()
    def generate(self, src: Tensor, max_new_tokens: int, *, bos_id: int, eos_id: int | Sequence[int] | None = None,
                 src_key_mask: Tensor | None = None, beam_size: int = 1, length_penalty: float = 1.0,
                 **sampling) -> Tensor:
        """Translate ``src`` (B, S): target tokens (B, 1 + n) starting with ``bos_id``; greedy by
        default, beam search with ``beam_size > 1``, sampling options as :meth:`Transformer.generate`."""
        check_sampling(beam_size=beam_size, max_new_tokens=max_new_tokens, length_penalty=length_penalty)
        memory = self.encode(src, src_key_mask)
        if beam_size > 1:
            expand = lambda t: None if t is None else t.repeat_interleave(beam_size, 0)  # noqa: E731
            state = RNNState(expand(memory.state.h), expand(memory.state.c))
            memory = RNNEncoding(expand(memory.states), expand(memory.keys_proj), state, expand(memory.src_key_mask))

        def step(tokens: Tensor, state: RNNState | None) -> tuple[Tensor, RNNState]:
            return self._decode(tokens, memory, memory.state if state is None else state)

        start = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)
        return search(step, start, max_new_tokens, beam_size=beam_size, eos_id=eos_id,
                      length_penalty=length_penalty, **sampling)
