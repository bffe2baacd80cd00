"""An ELMo-style bidirectional LSTM language model (Peters et al. 2018, "Deep contextualized word
representations").

Two language models read the same tokens: a forward LSTM LM predicts token t+1 from tokens <= t, a
backward LSTM LM predicts token t-1 from tokens >= t. They share the token embedding and the softmax
(the paper ties both between the directions) and are trained jointly on the sum of the two
log-likelihoods. Each direction is a stack of LSTM layers with a residual connection from every layer's
input to its output from the second layer on (the paper adds one between its two layers; the first
layer's input is the token embedding, as wide as the LSTM here only by choice).

For downstream tasks the model exposes its layers: layer 0 is the token embedding written twice (the
paper's "x_k duplicated" so that every layer is [forward; backward]), layer j >= 1 is the j-th forward
and backward LSTM states concatenated. A task learns :class:`ScalarMix`, ELMo_k = gamma * sum_j s_j h_kj
with s = softmax(w), on top of them; :class:`BiLMClassifier` does that, pools and classifies, with the
BiLM frozen (the paper's setting) or fine-tuned.

Differences from the paper: the token representation is a word embedding, not a character CNN, and the
LSTMs have no projection layer (the paper: 4096 cells projected to 512).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config, check_dropout, check_positive
from .common import check_tokens, resolve_key_mask


@dataclass
class BiLMConfig(Config):
    """Configuration of :class:`BiLM`, the ELMo-style bidirectional LSTM language model.

    ``d_embed``: token embedding width; ``d_hidden``: LSTM state width of each direction (a layer's
    representation is ``2 * d_hidden`` wide). ``n_layers``: LSTM layers per direction (the paper: 2).
    ``dropout``: on the embeddings, between layers and before the softmax. ``tie_embeddings``: the
    softmax reuses the token embedding (needs ``d_embed == d_hidden``). ``pad_id``: when set, a missing
    ``key_mask`` is derived as ``tokens != pad_id``.
    """

    vocab_size: int = 8000
    d_embed: int = 256
    d_hidden: int = 256
    n_layers: int = 2
    dropout: float = 0.1
    tie_embeddings: bool = True
    pad_id: int | None = None

    def __post_init__(self):
        check_positive(self, "vocab_size", "d_embed", "d_hidden", "n_layers")
        check_dropout(self, "dropout")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"BiLMConfig.tie_embeddings must be True or False, got {self.tie_embeddings!r}")
        if self.tie_embeddings and self.d_embed != self.d_hidden:
            raise ValueError(
                f"BiLMConfig.tie_embeddings needs d_embed == d_hidden (got {self.d_embed} and {self.d_hidden}): "
                "make the widths equal or set tie_embeddings=False"
            )
        if self.pad_id is not None and (
            isinstance(self.pad_id, bool) or not isinstance(self.pad_id, int)
            or not 0 <= self.pad_id < self.vocab_size
        ):
            raise ValueError(f"BiLMConfig.pad_id must be None or an id in [0, {self.vocab_size}), got {self.pad_id!r}")


class BiLMOutput(NamedTuple):
    """What :meth:`BiLM.forward` returns."""

    forward_logits: Tensor  # (B, T, V): position t predicts token t+1 from tokens <= t
    backward_logits: Tensor  # (B, T, V): position t predicts token t-1 from tokens >= t
    layers: tuple[Tensor, ...]  # n_layers + 1 of them: (B, T, 2 * d_embed), then (B, T, 2 * d_hidden) each


def right_padded_lengths(key_mask: Tensor) -> Tensor:
    """The lengths (B,) of a right-padded key mask (B, T); ValueError if a real token follows padding."""
    lengths = key_mask.sum(1)
    positions = torch.arange(key_mask.shape[1], device=key_mask.device)
    if not torch.equal(key_mask, positions < lengths[:, None]):
        raise ValueError(
            "key_mask must be right-padded: each row True for its real tokens, then False to the end "
            "(a real token after padding found)"
        )
    return lengths


def reverse_within_lengths(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of x (B, T, ...) within its own length, leaving the padding where it is:
    row b becomes x[b, L-1], ..., x[b, 0], x[b, L], ..., x[b, T-1] with L = lengths[b]. Its own inverse.
    ``lengths`` None: every row is full, a plain flip."""
    if lengths is None:
        return x.flip(1)
    B, T = x.shape[:2]
    positions = torch.arange(T, device=x.device)
    source = torch.where(positions < lengths[:, None], lengths[:, None] - 1 - positions, positions)  # (B, T)
    source = source.view(B, T, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, source)


class _LSTMStack(nn.Module):
    """One direction: LSTM layers, each reading the previous one's output (dropped out), with a residual
    connection from layer 2 on. Reads left to right; the backward LM feeds it reversed sequences."""

    def __init__(self, d_embed: int, d_hidden: int, n_layers: int, dropout: float):
        super().__init__()
        self.lstms = nn.ModuleList(
            nn.LSTM(d_embed if i == 0 else d_hidden, d_hidden, batch_first=True) for i in range(n_layers)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x (B, T, d_embed), already dropped out -> every layer's states, each (B, T, d_hidden).

        Right padding needs no packing: a left-to-right LSTM's state at a real position depends only on
        earlier positions, all real."""
        states = []
        for i, lstm in enumerate(self.lstms):
            h, _ = lstm(self.dropout(x) if i else x)  # (B, T, d_hidden)
            if i:
                h = h + x
            states.append(h)
            x = h
        return states


def _layers(e: Tensor, forward_states: list[Tensor], backward_states: list[Tensor]) -> tuple[Tensor, ...]:
    """Layer 0: the embedding twice (B, T, 2 * d_embed); layer j: [forward; backward] states (B, T, 2 * d_hidden)."""
    pairs = (torch.cat([f, b], dim=-1) for f, b in zip(forward_states, backward_states))
    return (torch.cat([e, e], dim=-1), *pairs)


class BiLM(nn.Module):
    """ELMo's bidirectional LSTM language model: forward and backward LSTM LMs sharing the token
    embedding and the softmax.

    ``forward(tokens, key_mask=None) -> BiLMOutput(forward_logits, backward_logits, layers)``;
    ``loss(tokens, key_mask=None)`` for pre-training; ``representations(tokens, key_mask=None)`` for
    downstream tasks (the layers without the softmax). Sequences are right-padded.
    """

    def __init__(self, config: BiLMConfig):
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.d_embed)
        # small enough that the tied softmax starts near uniform, large enough to drive the LSTMs
        nn.init.normal_(self.embed.weight, std=c.d_embed**-0.5)
        self.forward_lm = _LSTMStack(c.d_embed, c.d_hidden, c.n_layers, c.dropout)
        self.backward_lm = _LSTMStack(c.d_embed, c.d_hidden, c.n_layers, c.dropout)
        self.softmax = nn.Linear(c.d_hidden, c.vocab_size)  # one for both directions, as in the paper
        if c.tie_embeddings:
            self.softmax.weight = self.embed.weight
        self.dropout = nn.Dropout(c.dropout)

    def _states(self, tokens: Tensor, key_mask: Tensor | None) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """-> the token embedding (B, T, d_embed) and each direction's layer states, each (B, T, d_hidden),
        all in the original token order."""
        check_tokens(tokens, self.config.vocab_size)
        key_mask = resolve_key_mask(tokens, key_mask, self.config.pad_id)
        lengths = None if key_mask is None else right_padded_lengths(key_mask)
        e = self.embed(tokens)  # (B, T, d_embed)
        x = self.dropout(e)
        forward_states = self.forward_lm(x)
        # the backward LM reads each sequence from its own last real token back to its first
        backward_states = self.backward_lm(reverse_within_lengths(x, lengths))
        backward_states = [reverse_within_lengths(h, lengths) for h in backward_states]
        return e, forward_states, backward_states

    def representations(self, tokens: Tensor, key_mask: Tensor | None = None) -> tuple[Tensor, ...]:
        """The n_layers + 1 contextual layers of tokens (B, T): the embedding twice (B, T, 2 * d_embed),
        then each layer's [forward; backward] states (B, T, 2 * d_hidden). ``key_mask`` (B, T): True for
        real tokens, right-padded (default ``tokens != pad_id`` when the config has a ``pad_id``)."""
        return _layers(*self._states(tokens, key_mask))

    def forward(self, tokens: Tensor, key_mask: Tensor | None = None) -> BiLMOutput:
        """tokens (B, T) -> :class:`BiLMOutput`: forward and backward LM logits (B, T, vocab_size) and the
        layers of :meth:`representations`. Logits at padding positions are meaningless."""
        e, fwd, bwd = self._states(tokens, key_mask)
        layers = _layers(e, fwd, bwd)
        return BiLMOutput(self.softmax(self.dropout(fwd[-1])), self.softmax(self.dropout(bwd[-1])), layers)

    def loss(self, tokens: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """The mean of the forward and backward LMs' cross-entropies, each averaged over the real tokens
        that have a real neighbour to predict (T - 1 per sequence of T real tokens)."""
        key_mask = resolve_key_mask(tokens, key_mask, self.config.pad_id)
        out = self(tokens, key_mask)
        # the pair (t, t+1) counts when t+1 is real, and then so is t (right padding)
        real = torch.ones_like(tokens[:, 1:], dtype=torch.bool) if key_mask is None else key_mask[:, 1:]
        if not real.any():
            raise ValueError("loss needs at least one sequence of two or more real tokens")
        forward_ce = F.cross_entropy(out.forward_logits[:, :-1][real], tokens[:, 1:][real])
        backward_ce = F.cross_entropy(out.backward_logits[:, 1:][real], tokens[:, :-1][real])
        return (forward_ce + backward_ce) / 2


class ScalarMix(nn.Module):
    """ELMo's task-specific combination of the layers: gamma * sum_j softmax(w)_j * layer_j, with w
    (one scalar per layer, initialised equal) and gamma (initialised 1) learned."""

    def __init__(self, n_layers: int):
        super().__init__()
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"ScalarMix n_layers must be a positive int (the layers mixed), got {n_layers!r}")
        self.weights = nn.Parameter(torch.zeros(n_layers))
        self.gamma = nn.Parameter(torch.ones(()))

    def layer_weights(self) -> Tensor:
        """The normalized weights s = softmax(w), (n_layers,), summing to 1."""
        return self.weights.softmax(0)

    def forward(self, layers: Sequence[Tensor]) -> Tensor:
        """n_layers tensors of one shape (B, T, D) -> their mix (B, T, D)."""
        if len(layers) != len(self.weights):
            raise ValueError(f"ScalarMix was built for {len(self.weights)} layers, got {len(layers)}")
        shapes = {tuple(x.shape) for x in layers}
        if len(shapes) > 1:
            raise ValueError(f"ScalarMix needs layers of one shape, got shapes {sorted(shapes)}")
        s = self.layer_weights()
        return self.gamma * sum(s[j] * x for j, x in enumerate(layers))


class BiLMClassifier(nn.Module):
    """A sequence classifier on a (pre-trained) :class:`BiLM`: ScalarMix over its layers, mean over the
    real tokens, dropout, a linear head.

    Args:
        bilm: the language model (its layers must be equally wide: ``d_embed == d_hidden``).
        num_labels: the number of classes.
        freeze_bilm: keep the BiLM's weights fixed and train only the mix and the head (the paper's
            setting); :meth:`freeze_bilm` changes it later.
        dropout: on the pooled features.
    """

    def __init__(self, bilm: BiLM, num_labels: int, *, freeze_bilm: bool = False, dropout: float = 0.1):
        super().__init__()
        c = bilm.config
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"BiLMClassifier num_labels must be a positive int, got {num_labels!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"BiLMClassifier dropout must be in [0, 1), got {dropout!r}")
        if c.d_embed != c.d_hidden:
            raise ValueError(
                f"BiLMClassifier mixes all layers, which needs d_embed == d_hidden in the BiLM's config "
                f"(got {c.d_embed} and {c.d_hidden})"
            )
        self.bilm = bilm
        self.mix = ScalarMix(c.n_layers + 1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * c.d_hidden, num_labels)
        self.frozen = False
        self.freeze_bilm(freeze_bilm)

    def freeze_bilm(self, frozen: bool = True) -> None:
        """Fix the BiLM's weights (no gradients; an optimizer skips them) or release them for fine-tuning."""
        self.frozen = frozen
        self.bilm.requires_grad_(not frozen)

    def forward(self, tokens: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """tokens (B, T), key_mask (B, T) (True = real token, right-padded) -> logits (B, num_labels)."""
        key_mask = resolve_key_mask(tokens, key_mask, self.bilm.config.pad_id)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            layers = self.bilm.representations(tokens, key_mask)
        mixed = self.mix(layers)  # (B, T, 2 * d_hidden)
        m = torch.ones_like(tokens, dtype=mixed.dtype) if key_mask is None else key_mask.to(mixed.dtype)  # (B, T)
        pooled = (mixed * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)  # (B, 2 * d_hidden)
        return self.head(self.dropout(pooled))
