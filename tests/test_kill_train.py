"""``dretriever train`` killed (SIGKILL) at random moments and rerun each time: it resumes from its last
checkpoint and ends with exactly the uninterrupted run's steps, losses and final weights (tests/kill_harness.py).
Two kills here; eval/reliability.py runs more."""

import os
import logging
import random
import re
import sys

import torch

from dretriever.cli import main as cli_main
from tests.kill_harness import compare_training, kill_at_progress, last_step
from tests.train_helpers import make_toy_beir, write_random_negatives, write_recipe


def train_kill_run(tmp_path, model, kills: int, seed: int = 0, max_steps: int = 16, caplog=None):
    """A tiny STAR recipe: its clean run and a second run killed ``kills`` times at random steps (each kill a
    random fraction of a second after the step's log line), both finished in this process; returns the kill
    report and the number of steps compared."""
    data = make_toy_beir(tmp_path / "toy")
    write_random_negatives(data, data / "neg.jsonl")
    common = dict(method="star", model=str(model), data=str(data), negatives=str(data / "neg.jsonl"), neg_depth=10,
                  temperature=0.05, batch_size=4, max_steps=max_steps, save_steps=2, save_total_limit=2, lr=1e-3,
                  precision="fp32", progress=False, seed=seed)
    recipes = {name: str(write_recipe(tmp_path / f"{name}.yaml", output_dir=str(tmp_path / name), **common))
               for name in ("clean", "killed")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed runs (OMP_NUM_THREADS=1): the same float sums everywhere
    try:
        assert cli_main(["train", recipes["clean"]]) == 0
        points = sorted(random.Random(seed).sample(range(1, max_steps), kills))
        report = kill_at_progress([sys.executable, "-m", "dretriever", "train", recipes["killed"]],
                                  lambda: last_step(tmp_path / "killed"), points, seed=seed,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert cli_main(["train", recipes["killed"]]) == 0  # the rerun to completion
        if caplog is not None:  # it resumed from the last kill's checkpoint (a checkpoint every 2 steps)
            resumed = re.search(r"resuming from \S+ \(step (\d+),", caplog.text)
            assert resumed and points[-1] - 2 <= int(resumed.group(1)) <= max_steps, caplog.text[-2000:]
    finally:
        torch.set_num_threads(threads)
    return report, compare_training(tmp_path / "clean", tmp_path / "killed")


def test_train_killed_at_random_moments_ends_like_an_uninterrupted_run(tiny_model, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dretriever.train.loop")
    report, steps = train_kill_run(tmp_path, tiny_model, kills=2, caplog=caplog)
    assert steps == 16
    assert report.kills_landed == 2, report  # both kills fell inside the run, before its end


def test_a_rerun_removes_what_a_killed_write_left(tiny_model, tmp_path):
    """A kill inside an atomic write leaves its temporary, named by the dead process; the next run in the folder
    removes every such leftover (the random kills above land there only by chance)."""
    data = make_toy_beir(tmp_path / "toy")
    write_random_negatives(data, data / "neg.jsonl")
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "star.yaml", output_dir=str(out), method="star", model=str(tiny_model),
                          data=str(data), negatives=str(data / "neg.jsonl"), neg_depth=10, batch_size=4, max_steps=2,
                          save_steps=2, precision="fp32", progress=False)
    assert cli_main(["train", str(recipe)]) == 0
    left = [out / ".train_args.json.tmp-999999", out / "final" / ".config.json.tmp-999999",
            out / ".final.tmp-999999" / "model.safetensors", out / "checkpoints" / ".tmp-step-0000004" / "model.pt"]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half-written")
    assert cli_main(["train", str(recipe)]) == 0  # resumes at its last checkpoint (the end) and saves final again
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert (out / "final").is_dir() and (out / "train_args.json").is_file()
