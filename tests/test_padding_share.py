"""eval/padding_share.py: padding's share of the encoder FLOPs, by hand and on SciFact's training batches."""

from types import SimpleNamespace

import numpy as np
import pytest

from eval.padding_share import main as padding_share
from eval.padding_share import share

# one layer, hidden 4, intermediate 8: a row of n tokens costs 2n(4*16 + 2*32) + 4n^2*4 = 256n + 16n^2 FLOPs
CONFIG = SimpleNamespace(hidden_size=4, intermediate_size=8, num_hidden_layers=1)


def test_share_counts_padded_tokens_and_token_pairs():
    group = [np.array([2, 4])]
    useful = (256 * 2 + 16 * 4) + (256 * 4 + 16 * 16)  # 1856
    padded = 2 * (256 * 4 + 16 * 16)  # both rows at 4 tokens: 2560
    assert share(CONFIG, group, 1) == pytest.approx(1 - useful / padded)
    assert share(CONFIG, group, 2) == pytest.approx(0.0)  # one row per sub-batch: no padding
    # sums over groups before dividing (a step's share, not the mean of its groups' shares)
    two = [np.array([2, 4]), np.array([3, 3])]
    assert share(CONFIG, two, 1) == pytest.approx(1 - (useful + 2 * (256 * 3 + 16 * 9)) / (padded + 2 * (256 * 3 + 16 * 9)))


def test_scifact_training_batches(scifact_dir, capsys):
    assert padding_share(["--data", str(scifact_dir), "--batches", "3", "--batch", "8", "--pieces", "2"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if line.strip().startswith("scifact")}
    assert set(rows) == {"queries", "positives", "negatives", "step"}
    for line in rows.values():
        padded, halves = (float(line.split(k)[1].split("%")[0]) for k in ("padded", "sorted/2"))
        assert 0 <= halves <= padded < 100  # sorting into halves never adds padding
    assert float(rows["queries"].split("padded")[1].split("%")[0]) > 0  # 8 queries of different lengths
