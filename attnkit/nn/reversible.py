"""Reversible residual layers (Gomez et al. 2017, "The Reversible Residual Network"; Reformer, section 3).

The activations are split into two streams; each branch adds its output to one stream, computed from
the other:

    Y1 = X1 + F(X2),   Y2 = X2 + G(Y1)      and back:   X2 = Y2 - G(Y1),   X1 = Y1 - F(X2)

so a layer's inputs can be rebuilt from its outputs. A :class:`ReversibleSequence` keeps only the last
layer's outputs; backward walks the layers in reverse, rebuilding each layer's inputs and recomputing its
branches with gradients, so activation memory does not grow with depth. Branches that draw random numbers
(dropout, LSH hash seeds) see the same random state when recomputed: the generator states captured before
each branch in forward are replayed in backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ReversibleSequence(nn.Module):
    """A stack of reversible residual branches.

    Branch ``i`` updates stream ``i % 2`` from the other stream: ``[attn, ff, attn, ff, ...]`` gives
    ``Y1 = X1 + attn(X2), Y2 = X2 + ff(Y1)`` per layer; a decoder layer can be ``[self_attn, cross_attn, ff]``.

    Each branch is called as ``branch(x, **kwargs)`` with the keyword tensors given to ``forward`` (it
    ignores those it does not use). A branch marked ``position_wise`` (such as
    :class:`~attnkit.nn.ChunkedFeedForward`: ``chunks`` and ``forward_chunk(x)``) is also differentiated slice
    by slice along the sequence in backward.

    Args:
        branches: the residual branches, in order.
        reversible: if False, run the same two-stream computation with ordinary autograd (keeping every
            activation): for comparison and for short sequences.
    """

    def __init__(self, branches: Sequence[nn.Module], reversible: bool = True):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.reversible = reversible

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        """x (B, L, d_model) -> (B, L, d_model): both streams start as x; the result is their mean."""
        if not isinstance(x, Tensor) or x.dim() < 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a tensor of shape (B, L, d_model), got {got}")
        if not self.reversible or not torch.is_grad_enabled():
            streams = [x, x]
            for i, branch in enumerate(self.branches):
                streams[i % 2] = streams[i % 2] + branch(streams[1 - i % 2], **kwargs)
            return (streams[0] + streams[1]) / 2
        names = sorted(kwargs)
        kw_values = [kwargs[k] for k in names]
        params = [p for p in self.parameters() if p.requires_grad]
        return _ReversibleFunction.apply(x, self.branches, names, len(kw_values), *kw_values, *params)

    def step(self, x: Tensor, caches: Sequence | None = None, **kwargs) -> tuple[Tensor, tuple]:
        """Inference over new positions x (B, T, d_model) after the cached ones -> (output, caches).

        A branch with ``step(x, cache, **kwargs) -> (y, cache)`` (attention, which looks at other positions)
        gets its cache from ``caches`` (None on the first call) and returns the next; the others are
        position-wise and run as in forward (their cache entry is None). The output equals forward's over
        the whole sequence, at the new positions.
        """
        streams = [x, x]
        new = []
        for i, branch in enumerate(self.branches):
            if hasattr(branch, "step"):
                y, cache = branch.step(streams[1 - i % 2], None if caches is None else caches[i], **kwargs)
            else:
                y, cache = branch(streams[1 - i % 2], **kwargs), None
            streams[i % 2] = streams[i % 2] + y
            new.append(cache)
        return (streams[0] + streams[1]) / 2, tuple(new)


def _autocast_state(device_type: str) -> dict:
    """The autocast setting in force, as ``torch.autocast`` keywords: backward recomputes under it too
    (autocast is thread-local, and backward may run on another thread)."""
    if device_type not in ("cpu", "cuda"):
        return {"device_type": device_type, "enabled": False}
    return {
        "device_type": device_type,
        "enabled": torch.is_autocast_enabled(device_type),
        "dtype": torch.get_autocast_dtype(device_type),
    }


class _RNGState:
    """The global generator states (CPU, and the tensor's accelerator if any) at one moment."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.device = device if device.type == "cuda" else None
        self.accel = torch.cuda.get_rng_state(device) if self.device is not None else None

    @contextlib.contextmanager
    def replay(self):
        """A context in which the global generators start from this state (restored afterwards)."""
        devices = [self.device] if self.device is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.device is not None:
                torch.cuda.set_rng_state(self.accel, self.device)
            yield


class _ReversibleFunction(torch.autograd.Function):
    """x -> mean of the two streams after every branch.

    The final streams are kept (not returned), so backward owns them and rebuilds each layer's inputs in
    place; the two stream gradients are the only other full-size buffers.
    """

    @staticmethod
    def forward(ctx, x, branches, names, n_kw, *rest):
        kw_values, params = rest[:n_kw], rest[n_kw:]
        kwargs = dict(zip(names, kw_values))
        streams = [x.detach(), x.detach()]
        owned = [False, False]  # a stream still aliasing x gets a new tensor, then is updated in place
        states = []
        with torch.no_grad():
            for i, branch in enumerate(branches):
                states.append(_RNGState(x.device))
                fx = branch(streams[1 - i % 2], **kwargs)
                if owned[i % 2]:
                    streams[i % 2].add_(fx)
                else:
                    streams[i % 2] = streams[i % 2] + fx
                    owned[i % 2] = True
                del fx
        ctx.branches, ctx.names, ctx.states, ctx.n_kw = branches, names, states, n_kw
        ctx.autocast = _autocast_state(x.device.type)
        ctx.param_index = {id(p): j for j, p in enumerate(params)}
        ctx.save_for_backward(streams[0], streams[1], *[t if isinstance(t, Tensor) else None for t in kw_values])
        ctx.kw_other = [None if isinstance(t, Tensor) else t for t in kw_values]
        return (streams[0] + streams[1]) / 2

    @staticmethod
    def backward(ctx, dy):
        saved = ctx.saved_tensors
        kw_saved = saved[2:]
        kw_values = [t if t is not None else o for t, o in zip(kw_saved, ctx.kw_other)]
        # Keyword tensors that need gradients (an encoder's output, for example) get leaf stand-ins.
        kw_leaves = [
            t.detach().requires_grad_() if isinstance(t, Tensor) and t.requires_grad else t for t in kw_values
        ]
        kw_grad_inputs = [t for t in kw_leaves if isinstance(t, Tensor) and t.requires_grad]
        kwargs = dict(zip(ctx.names, kw_leaves))
        kw_grads = [None] * len(kw_grad_inputs)
        param_grads: list[Tensor | None] = [None] * len(ctx.param_index)

        # The saved final streams are private to this function: rebuilt in place, layer by layer (a second
        # backward through the same graph then fails loudly on their version counters).
        streams = [saved[0], saved[1]]
        grads = [dy * 0.5, dy * 0.5]  # d(mean)/d(stream)
        for i in reversed(range(len(ctx.branches))):
            branch = ctx.branches[i]
            out_s, in_s = i % 2, 1 - i % 2  # the branch read stream in_s and added to stream out_s
            params = [p for p in branch.parameters() if id(p) in ctx.param_index]
            with ctx.states[i].replay(), torch.enable_grad(), torch.autocast(**ctx.autocast):
                chunks = branch.chunks if getattr(branch, "position_wise", False) else 1
                if chunks > 1:
                    # Position-wise: recompute and differentiate one slice at a time, updating in place.
                    for xs, ys, gs, dxs in zip(*(t.chunk(chunks, dim=-2) for t in (
                        streams[in_s], streams[out_s], grads[out_s], grads[in_s]
                    ))):
                        xs = xs.detach().requires_grad_()
                        fx = branch.forward_chunk(xs)
                        g = torch.autograd.grad(fx, [xs, *params], gs, allow_unused=True)
                        ys.sub_(fx.detach())  # rebuild the branch's input stream
                        if g[0] is not None:
                            dxs.add_(g[0])
                        _accumulate(param_grads, ctx.param_index, params, g[1:])
                        del xs, fx, g
                else:
                    x = streams[in_s].detach().requires_grad_()
                    fx = branch(x, **kwargs)
                    g = torch.autograd.grad(fx, [x, *params, *kw_grad_inputs], grads[out_s], allow_unused=True)
                    streams[out_s].sub_(fx.detach())  # rebuild the branch's input stream
                    if g[0] is not None:
                        grads[in_s].add_(g[0])
                    _accumulate(param_grads, ctx.param_index, params, g[1 : 1 + len(params)])
                    for j, gk in enumerate(g[1 + len(params) :]):
                        if gk is not None:
                            kw_grads[j] = gk if kw_grads[j] is None else kw_grads[j] + gk
                    del x, fx, g

        kw_grad_iter = iter(kw_grads)
        kw_out = [next(kw_grad_iter) if isinstance(t, Tensor) and t.requires_grad else None for t in kw_leaves]
        dx = grads[0].add_(grads[1])  # both streams started as x
        del grads, streams
        return (dx, None, None, None, *kw_out, *param_grads)


def _accumulate(store: list, index: dict, params: list, grads) -> None:
    for p, g in zip(params, grads):
        if g is None:
            continue
        j = index[id(p)]
        store[j] = g if store[j] is None else store[j] + g
