"""The loop: resume reproduces the uninterrupted run, gradient cache = plain gradients, recipe validation."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.train_helpers import make_toy_beir, write_random_negatives, write_recipe

from dretriever.errors import DretrieverError  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = make_toy_beir(tmp_path_factory.mktemp("toy"))
    write_random_negatives(root, root / "neg.jsonl")
    return root


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_resume_gives_the_same_next_step_loss(toy, tiny_model, tmp_path):
    from dretriever.cli import main

    common = dict(method="star", model=str(tiny_model), data=str(toy), negatives=str(toy / "neg.jsonl"),
                  neg_depth=10, temperature=0.05, batch_size=4, max_steps=5, save_steps=2, save_total_limit=5,
                  lr=1e-3, precision="fp32", progress=False)
    full = tmp_path / "full"
    assert main(["train", str(write_recipe(tmp_path / "a.yaml", output_dir=str(full), **common))]) == 0
    # an "interrupted" run: only the step-2 checkpoint of the full run survives
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-0000002", part / "checkpoints" / "step-0000002")
    assert main(["train", str(write_recipe(tmp_path / "b.yaml", output_dir=str(part), **common))]) == 0
    a, b = _losses(full), _losses(part)
    assert sorted(b) == [3, 4, 5]  # resumed at step 3
    for step in (3, 4, 5):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
    # and the final weights agree
    wa = torch.load(full / "checkpoints" / "step-0000005" / "model.pt")
    wb = torch.load(part / "checkpoints" / "step-0000005" / "model.pt")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_checkpoint_contents_and_limit(toy, tiny_model, tmp_path):
    from dretriever.cli import main

    out = tmp_path / "o"
    recipe = write_recipe(tmp_path / "r.yaml", method="star", model=str(tiny_model), data=str(toy),
                          negatives=str(toy / "neg.jsonl"), neg_depth=10, batch_size=4, max_steps=4, save_steps=1,
                          save_total_limit=2, precision="fp32", output_dir=str(out), progress=False)
    assert main(["train", str(recipe)]) == 0
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-0000003", "step-0000004"]
    files = {p.name for p in (out / "checkpoints" / "step-0000004").iterdir()}
    assert {"model.pt", "optimizer.pt", "scheduler.pt", "rng-0.pt", "method-0.pt", "state.json"} <= files
    state = json.loads((out / "checkpoints" / "step-0000004" / "state.json").read_text())
    assert state["step"] == 4


def test_stop_after_steps_keeps_the_schedule(toy, tiny_model, tmp_path):
    from dretriever.cli import main

    out = tmp_path / "stop"
    recipe = write_recipe(tmp_path / "r.yaml", method="star", model=str(tiny_model), data=str(toy),
                          negatives=str(toy / "neg.jsonl"), neg_depth=10, batch_size=8, max_steps=4, warmup=0.0,
                          stop_after_steps=2, lr=1e-3, precision="fp32", output_dir=str(out), progress=False)
    assert main(["train", str(recipe)]) == 0
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[-1]["lr"] == pytest.approx(1e-3 * 2 / 4)  # linear decay over 4 steps, not 2
    assert (out / "final" / "config.json").is_file() and (out / "checkpoints" / "step-0000002").is_dir()


def test_grad_cache_matches_plain_gradients(toy, tiny_model, tmp_path):
    from dretriever.encoder import BiEncoder
    from dretriever.train.config import TrainArgs
    from dretriever.train.gradcache import CachedEncoder
    from dretriever.train.star import Star, StarArgs

    ta = TrainArgs(method="star", model=str(tiny_model), output_dir=str(tmp_path), data=str(toy), batch_size=8,
                   precision="fp32")
    star = Star(StarArgs(negatives=str(toy / "neg.jsonl"), neg_depth=10, temperature=0.05, hard_negatives=2), ta)

    class Acc:
        num_processes, process_index = 1, 0

    enc = BiEncoder.from_pretrained(tiny_model)
    star.setup(enc, Acc())
    enc.eval()  # no dropout: the two passes must see identical networks
    batch = star.batches(0)[0]
    loss, _ = star.loss(enc, batch)
    loss.backward()
    plain = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
    enc.zero_grad(set_to_none=True)
    view = CachedEncoder(enc, chunk=3)
    loss2, _ = star.loss(view, batch)
    view.backward(loss2)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-5)
    cached = {n: p.grad for n, p in enc.named_parameters() if p.grad is not None}
    assert plain.keys() == cached.keys()
    for n in plain:
        torch.testing.assert_close(cached[n], plain[n], rtol=1e-3, atol=1e-6)


def test_grad_cache_training_runs(toy, tiny_model, tmp_path):
    from dretriever.cli import main

    out = tmp_path / "gc"
    recipe = write_recipe(tmp_path / "r.yaml", method="star", model=str(tiny_model), data=str(toy),
                          negatives=str(toy / "neg.jsonl"), neg_depth=10, batch_size=8, max_steps=2,
                          grad_cache_chunk=4, grad_accum=2, precision="fp32", output_dir=str(out), progress=False)
    assert main(["train", str(recipe)]) == 0
    assert sorted(_losses(out)) == [1, 2]


class _Probe:
    """A method that records, inside its loss, whether autocast is on, the dtype of its embeddings and score
    product, and the dtype of every transformer forward (its own encoder's and another's, as MoCo's key encoder)."""

    name = "probe"

    def __init__(self, toy: Path):
        self.texts = [json.loads(line)["text"] for line in (toy / "corpus.jsonl").open()][:8]
        self.seen, self.forwards = [], []

    def setup(self, encoder, accelerator):
        import copy

        self.other = copy.deepcopy(encoder)
        for model in (encoder, self.other):
            model.query_model.encoder.layer[0].intermediate.dense.register_forward_hook(
                lambda module, inputs, out: self.forwards.append(out.dtype))

    def batches(self, epoch):
        return [self.texts[:4], self.texts[4:]]

    def trainable_parameters(self, encoder):
        return list(encoder.parameters())

    def loss(self, encoder, batch):
        from dretriever.train.losses import contrastive_loss

        q = encoder.embed(encoder.tokenize(batch, "query"), "query")
        d = encoder(encoder.tokenize(batch, "doc"), "doc")
        with torch.no_grad(), encoder.autocast():
            k = self.other.embed(self.other.tokenize(batch, "doc"), "doc")
        scores = q @ d.T
        self.seen.append((torch.is_autocast_enabled("cpu"), q.dtype, d.dtype, k.dtype, scores.dtype))
        return contrastive_loss(q, d, torch.arange(len(batch)), 0.05), {}

    def after_step(self, encoder):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize("grad_cache_chunk", [0, 3])
def test_the_loss_runs_in_fp32_while_the_forwards_run_under_the_recipes_precision(toy, tiny_model, tmp_path,
                                                                                   grad_cache_chunk):
    """Issue 27 item 6: ``method.loss`` ran inside autocast, so its score products ran in bf16."""
    from dretriever.train.config import TrainArgs
    from dretriever.train.loop import train

    probe = _Probe(toy)
    args = TrainArgs(method="probe", model=str(tiny_model), output_dir=str(tmp_path / "o"), batch_size=4, max_steps=1,
                     precision="bf16", grad_cache_chunk=grad_cache_chunk, progress=False)
    assert train(args, probe)["steps"] == 1
    f32 = torch.float32
    assert probe.seen == [(False, f32, f32, f32, f32)]  # autocast off, fp32 embeddings and scores
    # every transformer forward in bf16: queries, documents, the other encoder; with the gradient cache queries
    # and documents in 2 chunks each, encoded again in the backward pass
    assert probe.forwards == [torch.bfloat16] * (9 if grad_cache_chunk else 3)


# ------------------------------------------------------------------------------------------- recipes
def _parse(tmp_path, **fields):
    from dretriever.train.config import parse_recipe

    return parse_recipe([str(write_recipe(tmp_path / "r.yaml", **fields))])


@pytest.fixture
def good(toy, tiny_model, tmp_path):
    return dict(method="star", model=str(tiny_model), data=str(toy), negatives=str(toy / "neg.jsonl"),
                output_dir=str(tmp_path / "o"))


def test_recipe_parses_with_overrides(good, tmp_path):
    from dretriever.train.config import parse_recipe

    path = write_recipe(tmp_path / "r.yaml", **good, lr=3.0e-5, neg_depth=50)
    ta, ma, cls = parse_recipe([str(path), "--lr", "1e-4", "--temperature", "0.1"])
    assert ta.lr == 1e-4 and ma.temperature == 0.1 and ma.neg_depth == 50 and cls.__name__ == "Star"


@pytest.mark.parametrize("change, field", [
    ({"method": "stra"}, "method"),
    ({"lr": -1.0}, "lr"),
    ({"lr": "fast"}, "lr"),
    ({"negatives": "/nonexistent/neg.jsonl"}, "negatives"),
    ({"data": "/nonexistent/scifact"}, "data"),
    ({"model": "/nonexistent/model"}, "model"),
    ({"learning_rate": 1e-5}, "learning_rate"),
    ({"precision": "fp8"}, "precision"),
    ({"batch_size": 0}, "batch_size"),
    ({"neg_depth": 0}, "neg_depth"),
    ({"dropout": 1.5}, "dropout"),
])
def test_bad_recipe_values_fail_naming_the_field(good, tmp_path, change, field):
    with pytest.raises(DretrieverError, match=field):
        _parse(tmp_path, **{**good, **change})


def test_missing_recipe_file_and_cli_exit_code(tmp_path, capsys):
    from dretriever.cli import main

    with pytest.raises(DretrieverError, match="recipe"):
        from dretriever.train.config import parse_recipe
        parse_recipe([str(tmp_path / "nope.yaml")])
    assert main(["train", str(write_recipe(tmp_path / "r.yaml", method="colbert", output_dir="x"))]) == 2
    assert "method" in capsys.readouterr().err


def test_dev_split_is_seeded_disjoint_and_may_take_all_only_when_no_training_queries_are_needed():
    from dretriever.train.data import split_dev

    qids = [f"q{i}" for i in range(20)]
    train, dev = split_dev(reversed(qids), 5)
    assert (train, dev) == split_dev(qids, 5)            # independent of the input order
    assert len(dev) == 5 and set(train) | set(dev) == set(qids) and not set(train) & set(dev)
    assert split_dev(qids, 20, need_train=False) == ([], sorted(qids))
    with pytest.raises(DretrieverError, match="dev_queries: 20 leaves no training queries"):
        split_dev(qids, 20)
    with pytest.raises(DretrieverError, match="dev_queries: 21 > the 20 queries"):
        split_dev(qids, 21, need_train=False)
