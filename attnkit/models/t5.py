"""T5, the text-to-text Transformer (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer"), as released (v1.0) and as T5 v1.1.

An encoder-decoder like :class:`~attnkit.models.Transformer`, with these differences:

- no absolute positions: every attention score gets a learned bias per head and per *bucket* of the
  relative distance ``key position - query position`` (:func:`relative_position_bucket`). The buckets
  are bidirectional in the encoder and causal in the decoder; the bias is computed once per stack (T5
  keeps its table in the first layer) and added in every layer of that stack. Encoder/decoder attention
  has no position bias;
- scores are not scaled by 1/sqrt(d_kv): T5 folds that factor into the initialization of the queries;
- pre-norm with an RMS norm that has neither a bias nor a mean subtraction, and a final norm per stack;
- no biases in any projection; one token embedding for the encoder and the decoder;
- v1.0 (``feed_forward="relu"``, ``tie_embeddings=True``): the output layer is the token embedding and
  the decoder output is scaled by d_model**-0.5 before it. v1.1 (``"gated-gelu"``, untied): the
  feed-forward is gelu(x W0) * (x W1) (tanh-approximated GELU) and the output layer has its own weights.

    model = T5(T5Config(vocab_size=32128))          # t5-small's shape
    logits = model(src, shift_right(targets, model.config.decoder_start_id))
    out = model.generate(src, max_new_tokens=20)    # (B, 1 + n), starting with decoder_start_id
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config, check_choice, check_dropout, check_positive
from ..functional import causal_mask, check_key_mask, key_to_attn_mask
from ..generation import check_sampling, search
from ..nn import BlockCache, KVCache, MultiHeadAttention, RMSNorm
from .common import LMCache, cache_length, check_same_batch, check_tokens, resolve_key_mask, run_blocks

FEED_FORWARDS = ("relu", "gated-gelu")  # T5 v1.0, T5 v1.1
ATTENTION_IMPLS = ("auto", "reference", "sdpa")


@dataclass
class T5Config(Config):
    """Configuration of :class:`T5`; the defaults are t5-small's (60M parameters).

    ``d_kv`` is the width of each head (``n_heads * d_kv`` need not equal ``d_model``); ``n_layers``
    counts encoder layers, ``n_decoder_layers`` decoder layers (default ``n_layers``). The relative
    position buckets: ``relative_attention_num_buckets`` of them, logarithmically wider up to
    ``relative_attention_max_distance``. ``feed_forward``: "relu" (v1.0) or "gated-gelu" (v1.1).
    ``tie_embeddings``: the output layer is the token embedding, applied to the decoder output scaled by
    d_model**-0.5 (v1.0); False gives the output layer its own weights and no scaling (v1.1).
    ``pad_id`` marks source padding (the default source key mask is ``src != pad_id``),
    ``decoder_start_id`` starts every target (T5 uses the pad id) and ``eos_id`` ends one.
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    n_layers: int = 6  # encoder layers
    n_decoder_layers: int | None = None  # default: n_layers
    n_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout: float = 0.1
    layer_norm_eps: float = 1e-6
    feed_forward: str = "relu"
    tie_embeddings: bool = True
    pad_id: int = 0
    decoder_start_id: int = 0
    eos_id: int = 1

    def __post_init__(self):
        name = type(self).__name__
        check_positive(self, "vocab_size", "d_model", "d_kv", "d_ff", "n_layers", "n_heads",
                       "relative_attention_num_buckets", "relative_attention_max_distance")
        if self.n_decoder_layers is not None:
            check_positive(self, "n_decoder_layers")
        check_dropout(self, "dropout")
        check_choice(self, "feed_forward", FEED_FORWARDS)
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
            raise ValueError(f"{name}.layer_norm_eps must be a finite number > 0, got {eps!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"{name}.tie_embeddings must be True or False, got {self.tie_embeddings!r}")
        for field in ("pad_id", "decoder_start_id", "eos_id"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}.{field} must be a token id in [0, vocab_size={self.vocab_size}), "
                                 f"got {value!r}")
        n_buckets = self.relative_attention_num_buckets
        if n_buckets < 4:
            raise ValueError(
                f"{name}.relative_attention_num_buckets must be >= 4 (the encoder splits them by direction, "
                f"then into exact and logarithmic ones), got {n_buckets}"
            )
        if self.relative_attention_max_distance <= n_buckets // 2:
            raise ValueError(
                f"{name}.relative_attention_max_distance must exceed relative_attention_num_buckets // 2 "
                f"(= {n_buckets // 2}, the distances the decoder's buckets hold exactly), "
                f"got {self.relative_attention_max_distance}"
            )


# ------------------------------------------------------------------------------- relative positions


def relative_position_bucket(
    relative_position: Tensor, *, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
) -> Tensor:
    """The bucket of each relative position ``key position - query position`` (T5, section 2.1).

    Distances below half the buckets get a bucket each; larger ones share buckets whose width grows
    logarithmically up to ``max_distance``, and all farther ones share the last bucket. Bidirectional
    (encoder): the buckets are split in two halves, the lower for keys at or before the query, the upper
    for keys after it, each half laid out as above. Causal (decoder): all buckets go to keys at or before
    the query; later keys (which the causal mask hides anyway) share bucket 0 with the query itself.

    With 32 buckets and max_distance 128, causal: distance d = query - key in 0..15 -> bucket d,
    16 -> 16, 20 -> 17, 32 -> 21, 64 -> 26, 127 and beyond -> 31. Bidirectional: key - query = -3 -> 3,
    +3 -> 16 + 3 = 19, -20 -> 10, +20 -> 26, beyond +-128 -> 15 or 31.

    Args:
        relative_position: integer tensor of key position minus query position, any shape.
        bidirectional: encoder (True) or decoder (False) buckets.
        num_buckets, max_distance: T5's ``relative_attention_num_buckets`` and ``..._max_distance``.

    Returns:
        A long tensor of the same shape with values in [0, num_buckets).
    """
    if bidirectional:
        num_buckets //= 2
        half = torch.where(relative_position > 0, num_buckets, 0)  # keys after the query: the upper half
        distance = relative_position.abs()
    else:
        half = torch.zeros_like(relative_position)
        distance = (-relative_position).clamp(min=0)  # how far back the key is; later keys count as 0
    n_exact = num_buckets // 2  # distances 0 .. n_exact - 1 have a bucket each
    # the remaining num_buckets - n_exact buckets split [n_exact, max_distance) evenly on a log scale
    far = distance.clamp(min=n_exact).float()
    log_fraction = torch.log(far / n_exact) / math.log(max_distance / n_exact)  # 0 at n_exact, 1 at max_distance
    far_bucket = (n_exact + (log_fraction * (num_buckets - n_exact)).long()).clamp(max=num_buckets - 1)
    return half + torch.where(distance < n_exact, distance, far_bucket)


class RelativePositionBias(nn.Module):
    """A learned bias per head for each relative-position bucket: the (1, H, T, S) term T5 adds to the
    attention scores of every self-attention layer of a stack."""

    def __init__(self, n_heads: int, num_buckets: int, max_distance: int, *, bidirectional: bool):
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.embedding = nn.Embedding(num_buckets, n_heads)

    def forward(self, first_query: int, T: int, S: int) -> Tensor:
        """The bias for queries at absolute positions first_query .. first_query + T - 1 and keys at
        0 .. S - 1 -> (1, H, T, S). A cached decoding step passes the number of cached positions."""
        device = self.embedding.weight.device
        query = torch.arange(first_query, first_query + T, device=device)
        key = torch.arange(S, device=device)
        buckets = relative_position_bucket(
            key[None, :] - query[:, None], bidirectional=self.bidirectional,
            num_buckets=self.num_buckets, max_distance=self.max_distance,
        )  # (T, S)
        return self.embedding(buckets).permute(2, 0, 1)[None]  # (1, H, T, S)


# --------------------------------------------------------------------------------------- the layers


def biased_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None = None,
    attn_mask: Tensor | None = None,
    *,
    dropout_p: float = 0.0,
    impl: str = "auto",
) -> Tensor:
    """T5's attention: ``softmax(q k^T + bias + M) v``, with an additive bias and no 1/sqrt(d) scale.

    Args:
        q: (B, H, T, D); k, v: (B, H, S, D).
        bias: float, broadcastable to (B, H, T, S) (the relative position bias), or None.
        attn_mask: boolean, True = may attend, broadcastable to (B, H, T, S), or None. A query with no key
            it may attend to gets zeros.
        dropout_p: dropout on the attention weights (pass 0.0 in eval mode).
        impl: "reference" (the formula written out) or "sdpa"/"auto" (PyTorch's
            ``scaled_dot_product_attention`` with the bias as a float mask); tests hold them equal.

    Returns:
        (B, H, T, D).
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    empty = None if attn_mask is None else ~attn_mask.any(dim=-1, keepdim=True)  # rows with no key
    if impl == "reference":
        scores = q @ k.transpose(-2, -1)  # (B, H, T, S)
        if bias is not None:
            scores = scores + bias
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        if empty is not None:
            weights = weights.masked_fill(empty, 0.0)  # softmax over no keys gave NaN
        return F.dropout(weights, p=dropout_p) @ v if dropout_p > 0 else weights @ v

    mask = attn_mask
    if mask is not None and bool(empty.any()):
        mask = mask | empty  # let such rows attend everywhere (finite), then zero them below
    if bias is not None and mask is not None:
        mask = bias.masked_fill(~mask, float("-inf"))  # (.., T, S), broadcast over both
    elif bias is not None:
        mask = bias
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=1.0)
    return out if empty is None else out.masked_fill(empty, 0.0)


class T5FeedForward(nn.Module):
    """T5's feed-forward without biases: down(relu(up(x))) (v1.0), or with ``gated=True``
    down(gelu(gate(x)) * up(x)) with the tanh approximation of GELU (v1.1). (..., d_model) -> (..., d_model)."""

    def __init__(self, d_model: int, d_ff: int, *, gated: bool, dropout: float):
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=False) if gated else None
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is None:
            h = F.relu(self.up(x))
        else:
            h = F.gelu(self.gate(x), approximate="tanh") * self.up(x)
        return self.down(self.dropout(h))


class T5Block(nn.Module):
    """One pre-norm T5 layer: ``x + attn(norm(x))``, then (decoder) ``x + cross_attn(norm(x), memory)``,
    then ``x + ff(norm(x))``; dropout on each sublayer's output."""

    def __init__(self, d_model: int, n_heads: int, d_kv: int, d_ff: int, *, cross_attention: bool, gated: bool,
                 dropout: float, eps: float):
        super().__init__()
        attention = lambda: MultiHeadAttention(d_model, n_heads, d_head=d_kv, bias=False)
        self.self_attn, self.self_attn_norm = attention(), RMSNorm(d_model, eps)
        if cross_attention:
            self.cross_attn, self.cross_attn_norm = attention(), RMSNorm(d_model, eps)
        else:
            self.cross_attn = self.cross_attn_norm = None
        self.ff, self.ff_norm = T5FeedForward(d_model, d_ff, gated=gated, dropout=dropout), RMSNorm(d_model, eps)
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def _attend(self, attn: MultiHeadAttention, x: Tensor, bias: Tensor | None, attn_mask: Tensor | None,
                context: Tensor | None, cache: KVCache | None) -> tuple[Tensor, KVCache]:
        q, k, v = attn.project(x, context, cache)  # (B, H, T, D), (B, H, S, D) with the cached keys first
        y = biased_attention(q, k, v, bias, attn_mask, dropout_p=self.attn_dropout if self.training else 0.0)
        B, T, _ = x.shape
        y = y.transpose(1, 2).reshape(B, T, attn.n_heads * attn.d_head)  # (B, T, H * D)
        return attn.out_proj(y), KVCache(k, v)

    def forward(
        self,
        x: Tensor,
        *,
        bias: Tensor,
        attn_mask: Tensor | None = None,
        context: Tensor | None = None,
        context_attn_mask: Tensor | None = None,
        cache: BlockCache | None = None,
    ) -> tuple[Tensor, BlockCache]:
        """x (B, T, d_model) -> (B, T, d_model), and the caches of both attentions.

        ``bias`` (1, H, T, S): the stack's relative position bias; ``attn_mask``/``context_attn_mask``:
        boolean attention masks (True = may attend) of the self- and the encoder/decoder attention;
        ``context`` (B, S_src, d_model): the encoder output.
        """
        cache = BlockCache() if cache is None else cache
        y, self_cache = self._attend(self.self_attn, self.self_attn_norm(x), bias, attn_mask, None, cache.self_attn)
        x = x + self.dropout(y)
        cross_cache = None
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has encoder/decoder attention: pass context (the encoder output)")
            y, cross_cache = self._attend(self.cross_attn, self.cross_attn_norm(x), None, context_attn_mask,
                                          context, cache.cross_attn)
            x = x + self.dropout(y)
        x = x + self.dropout(self.ff(self.ff_norm(x)))
        return x, BlockCache(self_cache, cross_cache)


class T5Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, with encoder/decoder attention): dropout on the
    embeddings, the blocks, a final RMS norm and dropout. One relative position bias serves every block."""

    def __init__(self, n_layers: int, *, causal: bool, d_model: int, n_heads: int, d_kv: int, d_ff: int,
                 gated: bool, dropout: float, eps: float, num_buckets: int, max_distance: int):
        super().__init__()
        self.relative_bias = RelativePositionBias(n_heads, num_buckets, max_distance, bidirectional=not causal)
        self.blocks = nn.ModuleList(
            T5Block(d_model, n_heads, d_kv, d_ff, cross_attention=causal, gated=gated, dropout=dropout, eps=eps)
            for _ in range(n_layers)
        )
        self.final_norm = RMSNorm(d_model, eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, *, attn_mask: Tensor | None = None, context: Tensor | None = None,
                context_attn_mask: Tensor | None = None, cache: LMCache | None = None) -> tuple[Tensor, LMCache]:
        """Embedded tokens x (B, T, d_model) after the cached positions -> (B, T, d_model), and the caches."""
        past, T = cache_length(cache), x.shape[1]
        # the new positions are past .. past + T - 1: their bias comes from their absolute positions
        bias = self.relative_bias(past, T, past + T)  # (1, H, T, past + T), shared by all blocks
        x, cache = run_blocks(self.blocks, self.dropout(x), cache, bias=bias, attn_mask=attn_mask, context=context,
                              context_attn_mask=context_attn_mask)
        return self.dropout(self.final_norm(x)), cache


# ---------------------------------------------------------------------------------------- the model


class DecoderOutput(NamedTuple):
    """What :meth:`T5.decode` returns: the logits and the caches to pass to the next step."""

    logits: Tensor  # (B, T, vocab_size)
    cache: LMCache


def shift_right(targets: Tensor, decoder_start_id: int) -> Tensor:
    """The decoder input for teacher forcing: ``decoder_start_id`` followed by ``targets`` without its
    last token. (B, T) -> (B, T)."""
    start = targets.new_full((targets.shape[0], 1), decoder_start_id)
    return torch.cat([start, targets[:, :-1]], dim=1)


class T5(nn.Module):
    """The T5 encoder-decoder (see the module docstring for how it differs from the Transformer).

    ``forward(src, tgt) -> logits`` with teacher forcing (``tgt = shift_right(targets, decoder_start_id)``);
    ``encode`` and ``decode`` (with a cache) for inference; ``generate`` decodes from ``decoder_start_id``.
    """

    def __init__(self, config: T5Config):
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)  # shared by the encoder and the decoder
        stack = dict(d_model=c.d_model, n_heads=c.n_heads, d_kv=c.d_kv, d_ff=c.d_ff,
                     gated=c.feed_forward == "gated-gelu", dropout=c.dropout, eps=c.layer_norm_eps,
                     num_buckets=c.relative_attention_num_buckets, max_distance=c.relative_attention_max_distance)
        self.encoder = T5Stack(c.n_layers, causal=False, **stack)
        self.decoder = T5Stack(c.n_decoder_layers or c.n_layers, causal=True, **stack)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.reset_parameters()
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """T5's initialization (Mesh TensorFlow's, as transformers reproduces it): normal with std
        1/sqrt(fan-in), except the queries, which take an extra 1/sqrt(d_kv) in place of scaling the
        scores, and the token embedding, std 1 (the tied output layer rescales the decoder output)."""
        c = self.config
        nn.init.normal_(self.embed.weight, std=1.0)
        # transformers draws an untied output layer with std 1 too; 1/sqrt(d_model) keeps the initial
        # logits at the tied layer's scale
        nn.init.normal_(self.lm_head.weight, std=c.d_model**-0.5)
        for stack in (self.encoder, self.decoder):
            nn.init.normal_(stack.relative_bias.embedding.weight, std=c.d_model**-0.5)
            for block in stack.blocks:
                for attn in (block.self_attn, block.cross_attn):
                    if attn is None:
                        continue
                    nn.init.normal_(attn.q_proj.weight, std=(c.d_model * c.d_kv) ** -0.5)
                    nn.init.normal_(attn.k_proj.weight, std=c.d_model**-0.5)
                    nn.init.normal_(attn.v_proj.weight, std=c.d_model**-0.5)
                    nn.init.normal_(attn.out_proj.weight, std=(c.n_heads * c.d_kv) ** -0.5)
                for layer in (block.ff.gate, block.ff.up):
                    if layer is not None:
                        nn.init.normal_(layer.weight, std=c.d_model**-0.5)
                nn.init.normal_(block.ff.down.weight, std=c.d_ff**-0.5)
        for module in self.modules():
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def _src_key_mask(self, src: Tensor, src_key_mask: Tensor | None) -> Tensor:
        check_tokens(src, self.config.vocab_size, "src")
        return resolve_key_mask(src, src_key_mask, self.config.pad_id, "src_key_mask")

    def encode(self, src: Tensor, src_key_mask: Tensor | None = None) -> Tensor:
        """src (B, S) -> memory (B, S, d_model), the encoder output after its final norm.

        ``src_key_mask`` (B, S): True for real tokens; default ``src != pad_id``.
        """
        return self._encode(src, self._src_key_mask(src, src_key_mask))

    def _encode(self, src: Tensor, src_key_mask: Tensor | None) -> Tensor:
        # src and its key mask already checked
        memory, _ = self.encoder(self.embed(src), attn_mask=key_to_attn_mask(src_key_mask))
        return memory

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor,
        src_key_mask: Tensor | None = None,
        tgt_key_mask: Tensor | None = None,
        cache: LMCache | None = None,
    ) -> DecoderOutput:
        """tgt (B, T) after the cached positions, memory (B, S, d_model) -> ``DecoderOutput(logits (B, T, V),
        cache)``.

        ``src_key_mask`` (B, S): the real source positions (None: all). ``tgt_key_mask`` (B, T): the real
        target positions, combined with the causal mask; None by default, and never derived from
        ``pad_id``, since T5's targets start with the pad id (ignored with a cache: the new positions see
        all cached ones). With a cache, the new positions' relative bias is that of their absolute
        positions, so decoding step by step gives the logits of decoding all at once.
        """
        c = self.config
        check_tokens(tgt, c.vocab_size, "tgt")
        if not isinstance(memory, Tensor) or memory.dim() != 3 or memory.shape[-1] != c.d_model:
            got = tuple(memory.shape) if isinstance(memory, Tensor) else type(memory).__name__
            raise ValueError(f"memory must have shape (B, S, d_model={c.d_model}), got {got}")
        check_same_batch(tgt=tgt, memory=memory)
        src_key_mask = check_key_mask(src_key_mask, *memory.shape[:2], name="src_key_mask")
        past, T = cache_length(cache), tgt.shape[1]
        attn_mask = causal_mask(T, past + T, device=tgt.device)  # (T, past + T)
        if cache is None and tgt_key_mask is not None:
            attn_mask = attn_mask & key_to_attn_mask(check_key_mask(tgt_key_mask, *tgt.shape, name="tgt_key_mask"))
        x, cache = self.decoder(self.embed(tgt), attn_mask=attn_mask, context=memory,
                                context_attn_mask=key_to_attn_mask(src_key_mask), cache=cache)
        if c.tie_embeddings:
            x = x * c.d_model**-0.5  # v1.0: the embedding as output layer sees a rescaled decoder output
        return DecoderOutput(self.lm_head(x), cache)

    def forward(self, src: Tensor, tgt: Tensor, src_key_mask: Tensor | None = None,
                tgt_key_mask: Tensor | None = None) -> Tensor:
        """src (B, S), tgt (B, T) (the targets shifted right, see :func:`shift_right`) -> logits (B, T, V).

        ``src_key_mask`` (B, S): True for real source tokens (default ``src != pad_id``); ``tgt_key_mask``
        (B, T): True for real target tokens (default None: the causal mask alone).
        """
        src_key_mask = self._src_key_mask(src, src_key_mask)
        memory = self._encode(src, src_key_mask)
        return self.decode(tgt, memory, src_key_mask, tgt_key_mask).logits

    @torch.no_grad()
    def generate(
        self,
        src: Tensor,
        max_new_tokens: int,
        *,
        src_key_mask: Tensor | None = None,
        beam_size: int = 1,
        length_penalty: float = 1.0,
        stop_at_eos: bool = True,
        **sampling,
    ) -> Tensor:
        """Decode ``src`` (B, S) into (B, 1 + n) tokens, starting with ``decoder_start_id``.

        Greedy by default; ``beam_size > 1`` for beam search; ``sampling`` (temperature, top_k, top_p,
        repetition_penalty, generator, on_token) goes to :func:`attnkit.generation.generate`. A row stops
        at ``eos_id`` (and repeats it while others go on) unless ``stop_at_eos=False``.
        """
        check_sampling(beam_size=beam_size, max_new_tokens=max_new_tokens, length_penalty=length_penalty)
        c = self.config
        src_key_mask = self._src_key_mask(src, src_key_mask)
        memory = self._encode(src, src_key_mask)
        start = torch.full((src.shape[0], 1), c.decoder_start_id, dtype=torch.long, device=src.device)
        if beam_size > 1:
            memory = memory.repeat_interleave(beam_size, 0)
            src_key_mask = None if src_key_mask is None else src_key_mask.repeat_interleave(beam_size, 0)
        step = lambda tokens, cache: self.decode(tokens, memory, src_key_mask, cache=cache)
        return search(step, start, max_new_tokens, beam_size=beam_size, eos_id=c.eos_id if stop_at_eos else None,
                      length_penalty=length_penalty, **sampling)
