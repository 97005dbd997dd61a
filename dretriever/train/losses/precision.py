"""``fp32``: the one decorator that makes a loss compute in (at least) fp32 whatever its caller's autocast.

Under ``torch.autocast`` a matrix product runs in bf16 even on fp32 inputs: with ``q @ d.T`` in bf16, 64
logits at temperature 0.05 collapse to about 26 distinct values (errors up to 0.065), and a teacher target
cast to the student's bf16 loses its margins. DRhard turns autocast off for exactly these products. The
loop already runs ``method.loss`` outside autocast; the decorator makes each loss safe on its own too:

- autocast is off (for every device type among the tensor arguments) while the loss runs;
- every floating tensor argument is cast to one dtype, the widest of fp32 and the arguments' own (a bf16
  student is cast up to the teacher's fp32 or fp64, never the teacher down to the student).

Integer and bool tensors (labels, masks, ranks) and other arguments pass unchanged. Gradients flow back
through the casts to the inputs in their own dtype.
"""

from __future__ import annotations

import contextlib
import functools

import torch


def fp32(loss):
    """Decorate a loss function (or an ``nn.Module.forward``) to run without autocast on fp32-or-wider inputs."""

    @functools.wraps(loss)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a)]
        dtype = torch.float32
        for t in tensors:
            if t.is_floating_point():
                dtype = torch.promote_types(dtype, t.dtype)

        def up(a):
            return a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a

        with contextlib.ExitStack() as stack:
            for device_type in sorted({t.device.type for t in tensors}):
                stack.enter_context(torch.autocast(device_type, enabled=False))
            return loss(*map(up, args), **{k: up(v) for k, v in kwargs.items()})

    return wrapper
