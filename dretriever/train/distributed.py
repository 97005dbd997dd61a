"""Cross-process helpers: a differentiable all-gather (in-batch negatives from every process) and labels.

``all_gather_with_grad(x)`` concatenates ``x`` from every process in rank order. Its backward sums the
incoming gradient over processes (all-reduce) and returns this process's slice, so each process gets the
gradient of *every* process's loss with respect to its own embeddings. With each process's parameter
gradients then averaged (the loop does it), the update equals that of one process holding the global batch
and minimising the mean of the per-process losses.

Labels: when each process contributes ``n_docs`` documents (positives *and* hard negatives), the
positive of local query ``i`` on rank ``r`` sits at column ``r * n_docs + i`` of the gathered matrix. Using
``r * local_batch`` there instead is the classic bug once hard negatives are present.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.n = x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        r = dist.get_rank()
        return grad[r * ctx.n:(r + 1) * ctx.n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every process) over processes, keeping gradients."""
    if not is_distributed():
        return x
    return _AllGather.apply(x)


@torch.no_grad()
def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def gathered_labels(local_batch: int, docs_per_process: int, device=None) -> torch.Tensor:
    """Column of each local query's positive among the gathered documents (positives first on every process)."""
    return torch.arange(local_batch, device=device) + rank() * docs_per_process


def average_gradients(params) -> None:
    """All-reduce and average the gradients of ``params`` over processes (one flat buffer per dtype)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    by_dtype: dict = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    w = dist.get_world_size()
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= w
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


class Runtime:
    """The loop's view of the process group: accelerate's, or a gloo group of its own on CPU.

    ``accelerate launch`` starts several CPU processes only through ``mpirun``; under ``torchrun`` (or any
    launcher that sets ``WORLD_SIZE``/``RANK``) accelerate 1.x stays single-process on CPU, so the loop
    joins a gloo group itself and every process gets its real rank.
    """

    def __init__(self, accelerator):
        import os

        self.accelerator = accelerator
        self.device = accelerator.device
        if accelerator.num_processes == 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            if not dist.is_initialized():
                dist.init_process_group("gloo")
            self.num_processes, self.process_index = dist.get_world_size(), dist.get_rank()
        else:
            self.num_processes, self.process_index = accelerator.num_processes, accelerator.process_index
        self.is_main_process = self.process_index == 0

    def wait_for_everyone(self) -> None:
        if self.num_processes > 1:
            dist.barrier()
