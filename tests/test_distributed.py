"""Two CPU processes (gloo): gathered in-batch negatives get the right labels with hard negatives present,
and the per-process losses and gradients equal those of one process holding the global batch."""

import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp


WORLD, B, NEG, H = 2, 3, 2, 8  # processes, queries per process, hard negatives per query, dim


def _global_tensors():
    g = torch.Generator().manual_seed(0)
    f = lambda n: torch.nn.functional.normalize(torch.randn(n, H, generator=g), dim=-1)  # noqa: E731
    return f(WORLD * B), f(WORLD * B), f(WORLD * B * NEG)


def _reference(t: float):
    """Single process: per-rank losses and gradients of their mean, with the gathered layout built by hand."""
    from dretriever.train.losses import contrastive_loss, pairwise_softmax_loss

    Q, P, N = (x.clone().requires_grad_(True) for x in _global_tensors())
    docs = torch.cat([torch.cat([P[r * B:(r + 1) * B], N[r * B * NEG:(r + 1) * B * NEG]]) for r in range(WORLD)])
    per_rank = []
    for r in range(WORLD):
        labels = torch.arange(B) + r * (B + B * NEG)  # NOT r * B: hard negatives sit between the positives
        per_rank.append(contrastive_loss(Q[r * B:(r + 1) * B], docs, labels, t))
    torch.stack(per_rank).mean().backward()
    contrastive = ([l.item() for l in per_rank], Q.grad.clone(), P.grad.clone(), N.grad.clone())

    Q, P, N = (x.clone().requires_grad_(True) for x in _global_tensors())
    per_rank = []
    for r in range(WORLD):
        labels = torch.arange(B) + r * B  # positives gathered on their own
        mask = ~torch.eye(WORLD * B, dtype=torch.bool)[r * B:(r + 1) * B]
        per_rank.append(pairwise_softmax_loss(Q[r * B:(r + 1) * B], P, labels, mask, N, None, t))
    torch.stack(per_rank).mean().backward()
    pairwise = ([l.item() for l in per_rank], Q.grad.clone(), P.grad.clone(), N.grad.clone())
    return contrastive, pairwise


def _worker(rank: int, init_file: str, results):
    import torch.distributed as dist

    from dretriever.train import distributed as du
    from dretriever.train.losses import in_batch_contrastive, pairwise_softmax_loss

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        Qg, Pg, Ng = _global_tensors()
        sl = slice(rank * B, (rank + 1) * B)
        nsl = slice(rank * B * NEG, (rank + 1) * B * NEG)
        out = {}
        # --- in-batch InfoNCE with hard negatives
        q, p, n = (x.clone().requires_grad_(True) for x in (Qg[sl], Pg[sl], Ng[nsl]))
        docs = du.all_gather_with_grad(torch.cat([p, n]))
        labels = du.gathered_labels(B, B + B * NEG)
        out["labels"] = labels.tolist()
        out["label_rows_are_own_positives"] = bool(torch.equal(docs[labels].detach(), p.detach()))
        loss = in_batch_contrastive(q, p, n, temperature=0.05, gather=True)
        loss.backward()
        out["contrastive"] = (loss.item(), q.grad / WORLD, p.grad / WORLD, n.grad / WORLD)
        # --- STAR pairwise with gathered positives and hard negatives
        q, p, n = (x.clone().requires_grad_(True) for x in (Qg[sl], Pg[sl], Ng[nsl]))
        P = du.all_gather_with_grad(p)
        N = du.all_gather_with_grad(n)
        labels = torch.arange(B) + rank * B
        mask = ~torch.eye(WORLD * B, dtype=torch.bool)[sl]
        loss = pairwise_softmax_loss(q, P, labels, mask, N, None, 0.05)
        loss.backward()
        out["pairwise"] = (loss.item(), q.grad / WORLD, p.grad / WORLD, n.grad / WORLD)
        # --- gradient averaging helper
        w = torch.nn.Parameter(torch.zeros(3))
        w.grad = torch.full((3,), float(rank + 1))
        du.average_gradients([w])
        out["avg_grad"] = w.grad.tolist()
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_two_process_gather_labels_losses_and_gradients():
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, ctx.Manager() as manager:
        results = manager.dict()
        procs = [ctx.Process(target=_worker, args=(r, os.path.join(tmp, "rdzv"), results)) for r in range(WORLD)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        for p in procs:
            if p.is_alive():
                p.kill()
                pytest.fail("a gloo worker hung")
            assert p.exitcode == 0
        results = dict(results)
    (c_losses, cQ, cP, cN), (p_losses, pQ, pP, pN) = _reference(0.05)
    for r in range(WORLD):
        out = results[r]
        assert out["labels"] == [r * (B + B * NEG) + i for i in range(B)]
        assert out["label_rows_are_own_positives"]
        sl, nsl = slice(r * B, (r + 1) * B), slice(r * B * NEG, (r + 1) * B * NEG)
        for (loss, gq, gp, gn), losses, Q, P, N in ((out["contrastive"], c_losses, cQ, cP, cN),
                                                     (out["pairwise"], p_losses, pQ, pP, pN)):
            assert loss == pytest.approx(losses[r], rel=1e-5)
            torch.testing.assert_close(gq, Q[sl], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(gp, P[sl], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(gn, N[nsl], rtol=1e-4, atol=1e-6)
        assert out["avg_grad"] == [1.5, 1.5, 1.5]
