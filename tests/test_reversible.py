"""Reversible layers, chunked feed-forward and loss, axial positional embeddings."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnkit.nn import (
    AxialPositionalEmbedding,
    ChunkedFeedForward,
    LSHSelfAttention,
    ReversibleSequence,
    chunked_cross_entropy,
)
from attnkit.nn.axial import axial_shape


class _Attn(nn.Module):
    def __init__(self, d, causal=True, dropout=0.0):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = LSHSelfAttention(d, 2, n_hashes=2, bucket_size=8, causal=causal, dropout=dropout)

    def forward(self, x, key_mask=None, **_):
        return self.attn(self.norm(x), key_mask=key_mask)


class _Cross(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.proj = nn.Linear(d, d)

    def forward(self, x, context=None, **_):
        return torch.tanh(self.proj(x) + context.mean(1, keepdim=True))


class _Lin(nn.Linear):
    def forward(self, x, **_):
        return super().forward(x)


def _pair(branches_fn, seed=0):
    torch.manual_seed(seed)
    rev = ReversibleSequence(branches_fn(), reversible=True).double()
    plain = ReversibleSequence(branches_fn(), reversible=False).double()
    plain.load_state_dict(rev.state_dict())
    return rev, plain


def _grads(model, x, seed, **kw):
    x = x.clone().requires_grad_()
    kw = {k: (t.clone().requires_grad_() if torch.is_tensor(t) and t.is_floating_point() else t) for k, t in kw.items()}
    torch.manual_seed(seed)
    y = model(x, **kw)
    (y * torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)).sum().backward()
    extra = [t.grad for t in kw.values() if torch.is_tensor(t) and t.is_floating_point()]
    return y.detach(), x.grad, [p.grad for p in model.parameters()], extra


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_reversible_gradients_equal_plain(dropout):
    d = 16

    def branches():
        out = []
        for _ in range(3):
            out += [_Attn(d, dropout=dropout), ChunkedFeedForward(d, 32, chunks=3, dropout=dropout)]
        return out

    rev, plain = _pair(branches)
    x = torch.randn(2, 41, d, dtype=torch.float64)
    mask = torch.ones(2, 41, dtype=torch.bool)
    mask[1, 30:] = False
    y_r, gx_r, gp_r, _ = _grads(rev, x, seed=5, key_mask=mask)
    y_p, gx_p, gp_p, _ = _grads(plain, x, seed=5, key_mask=mask)
    torch.testing.assert_close(y_r, y_p)
    torch.testing.assert_close(gx_r, gx_p)
    for a, b in zip(gp_r, gp_p):
        torch.testing.assert_close(a, b)


def test_reversible_gradients_reach_keyword_tensors():
    d = 8
    rev, plain = _pair(lambda: [_Lin(d, d), _Cross(d), ChunkedFeedForward(d, 16, chunks=2), _Lin(d, d), _Cross(d)])
    x = torch.randn(2, 10, d, dtype=torch.float64)
    context = torch.randn(2, 7, d, dtype=torch.float64)
    _, gx_r, gp_r, (gc_r,) = _grads(rev, x, seed=0, context=context)
    _, gx_p, gp_p, (gc_p,) = _grads(plain, x, seed=0, context=context)
    torch.testing.assert_close(gx_r, gx_p)
    torch.testing.assert_close(gc_r, gc_p)
    for a, b in zip(gp_r, gp_p):
        torch.testing.assert_close(a, b)


def test_reversible_works_with_autograd_grad():
    rev, _ = _pair(lambda: [nn.Linear(4, 4), nn.Linear(4, 4)])
    x = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    y = rev(x)
    grads = torch.autograd.grad(y.sum(), [x, *rev.parameters()])
    assert all(g is not None for g in grads)


def _saved_bytes(model, x):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return total


def test_reversible_memory_does_not_grow_with_depth():
    d = 16

    def stack(n):
        torch.manual_seed(0)
        return ReversibleSequence(
            [m for _ in range(n) for m in (_Attn(d), ChunkedFeedForward(d, 64, chunks=2))], reversible=True
        )

    x = torch.randn(1, 256, d, generator=torch.Generator().manual_seed(0), requires_grad=True)
    act = x.numel() * x.element_size()  # one activation, (1, 256, 16) float32: 16 KiB
    one, six = _saved_bytes(stack(1), x), _saved_bytes(stack(6), x)
    # The budget, derived: a reversible stack saves its two final streams (two activations) and nothing
    # per layer. Parameters are not saved tensors, and the random states replayed in backward (a few KiB
    # per branch, whatever the sequence length) live on the autograd context. The bound this replaces,
    # one * 1.05 + 6 * 64 * 1024, let each layer keep 64 KiB, four activations, unnoticed.
    assert one <= 2 * act
    assert six - one < act / 4  # five more layers add less than a quarter of one activation in all
    plain = ReversibleSequence(stack(6).branches, reversible=False)
    assert _saved_bytes(plain, x) >= 12 * act  # each of the 12 branches keeps at least its input


def test_reversible_backward_recomputes_a_position_wise_branch_one_slice_at_a_time():
    # Backward differentiates such a branch slice by slice, each slice computed once; calling the whole
    # branch instead would checkpoint each slice, computing it twice (forward and recompute).
    class Counted(ChunkedFeedForward):
        calls: list = []

        def forward_chunk(self, x):
            Counted.calls.append(x.shape[-2])
            return super().forward_chunk(x)

    torch.manual_seed(0)
    rev = ReversibleSequence([_Lin(8, 8), Counted(8, 16, chunks=4)], reversible=True)
    x = torch.randn(2, 32, 8, requires_grad=True)
    y = rev(x)
    assert Counted.calls == [8, 8, 8, 8]  # forward: four slices of 32 positions
    Counted.calls.clear()
    y.sum().backward()
    assert Counted.calls == [8, 8, 8, 8]


def test_reversible_rejects_bad_input():
    seq = ReversibleSequence([nn.Identity()])
    with pytest.raises(ValueError, match="x must be"):
        seq(torch.randn(3))


def test_reversible_backward_twice_fails_loudly():
    seq = ReversibleSequence([nn.Linear(4, 4), nn.Linear(4, 4)])
    y = seq(torch.randn(2, 3, 4, requires_grad=True)).sum()
    y.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_chunked_feed_forward_equals_unchunked():
    torch.manual_seed(0)
    a = ChunkedFeedForward(8, 32, chunks=4)
    b = ChunkedFeedForward(8, 32, chunks=1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 13, 8, requires_grad=True)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb)
    ga = torch.autograd.grad(ya.square().sum(), [x, *a.parameters()])
    gb = torch.autograd.grad(yb.square().sum(), [x, *b.parameters()])
    for u, w in zip(ga, gb):
        torch.testing.assert_close(u, w)
    with pytest.raises(ValueError, match="chunks"):
        ChunkedFeedForward(8, 32, chunks=0)


@pytest.mark.parametrize("chunks", [1, 3])
def test_chunked_cross_entropy(chunks):
    torch.manual_seed(0)
    head = nn.Linear(8, 11, bias=False)
    h = torch.randn(2, 9, 8, requires_grad=True)
    t = torch.randint(0, 11, (2, 9))
    t[0, :3] = -100
    loss = chunked_cross_entropy(h, head, t, chunks=chunks)
    ref = F.cross_entropy(head(h).flatten(0, 1), t.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, ref)
    g = torch.autograd.grad(loss, [h, head.weight])
    g_ref = torch.autograd.grad(ref, [h, head.weight])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="targets"):
        chunked_cross_entropy(h, head, t[:, :4])


def test_axial_positional_embedding():
    emb = AxialPositionalEmbedding(10, (4, 8))
    pos = torch.arange(32)
    e = emb(pos)
    assert e.shape == (32, 10)
    torch.testing.assert_close(e[9], torch.cat([emb.rows[1], emb.cols[1]]))
    assert emb(pos[None]).shape == (1, 32, 10)
    assert sum(p.numel() for p in emb.parameters()) == 4 * 5 + 8 * 5
    with pytest.raises(ValueError, match="positions"):
        emb(torch.tensor([32]))
    with pytest.raises(TypeError, match="integers"):
        emb(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="dims"):
        AxialPositionalEmbedding(10, (4, 8), dims=(3, 3))
    n1, n2 = axial_shape(65536)
    assert n1 * n2 >= 65536 and n2 == 256
    assert axial_shape(1000)[0] * axial_shape(1000)[1] >= 1000


def test_reversible_recomputes_under_the_forward_autocast():
    # Backward recomputes each branch, to rebuild its input and to differentiate it. Under the forward's
    # bf16 autocast, replayed, it repeats the forward's arithmetic, so the gradients are those of the
    # same network run without reversibility (here: parameter gradients bit for bit, the input's within
    # 1e-6). Recomputed in float32 instead, the rebuilt inputs and the gradients move by bf16 rounding:
    # 2e-2 to 1e-1 here, far outside the tolerance.
    def branches():
        torch.manual_seed(0)
        return [nn.Sequential(nn.Linear(16, 16), nn.GELU()) for _ in range(4)]

    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(1))

    def grads(reversible, autocast):
        seq = ReversibleSequence(branches(), reversible=reversible)
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = seq(xi)
        y.float().square().sum().backward()
        return [xi.grad, *(p.grad for p in seq.parameters())]

    rev, plain, fp32 = grads(True, True), grads(False, True), grads(False, False)
    for a, b in zip(rev, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # bf16 shows at that tolerance: the same network's float32 gradients are 1e-2 and more away
    assert max((a - b).abs().max().item() for a, b in zip(plain, fp32)) > 1e-2
