"""Sampled update metrics (``sample_updates=N``): gradient, parameter and update norms of every N-th
optimizer step, computed on the parameters' device without a synchronisation."""

from __future__ import annotations

from typing import Any

import torch

from .device import _Deferred


def _group_tensors(group):
    params = [p for p in group["params"] if p.grad is not None]
    return params, [p.grad for p in params]


def _norm(tensors) -> Any:
    """L2 norm over a list of tensors, as a float32 tensor on their device (no sync)."""
    if not tensors:
        return None
    dense = [t.detach().coalesce().values() if t.is_sparse else t.detach() for t in tensors]
    norms = torch._foreach_norm(dense)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


def _sample_before(groups, grad_scale=None):
    """Per group: params, a copy of them, grad norm and param norm, before a sampled step.

    A fused optimizer under GradScaler gets the gradients still scaled (its kernel unscales them,
    ``grad_scale`` is set on the optimizer for the step): divide, so grad_norm is the real one.
    """
    with torch.no_grad():
        out = []
        for g in groups:
            params, grads = _group_tensors(g)
            gn = _norm(grads)
            if gn is not None and isinstance(grad_scale, torch.Tensor):
                gn = gn / grad_scale.to(gn.device)
            before = [p.detach().clone() for p in params]
            out.append((params, before, gn, _norm(params)))
        return out


def _sample_after(sampled):
    """Per group (grad_norm, param_norm, update_norm): floats on CPU; on a device, a copy read later
    by the writer thread, so a sampled step does not synchronise either."""
    with torch.no_grad():
        result = []
        for params, before, gn, pn in sampled:
            if not params:
                result.append((None, None, None))
                continue
            torch._foreach_sub_(before, [p.detach() for p in params])  # the copy becomes -update
            un = _norm(before)
            values = torch.stack([gn, pn, un])
            result.append(tuple(values.tolist()) if values.device.type == "cpu" else _Deferred(values))
        return tuple(result)

