"""``dretriever train recipes/<method>.yaml [--field value ...]``: one loop, the method from the recipe.

Several CPU processes: ``torchrun --nproc_per_node 2 -m dretriever train recipes/star.yaml``; GPUs:
``accelerate launch --config_file recipes/accelerate/multi-gpu.yaml -m dretriever train recipes/star.yaml``
(accelerate starts several CPU processes only through mpirun). Each process logs its world size and rank.
"""

from __future__ import annotations

from ..cli import command_line
from ..train.config import parse_recipe


def main(argv) -> int:
    train_args, method_args, method_cls = parse_recipe(argv)
    from ..train.loop import train

    method = method_cls(method_args, train_args)
    result = train(train_args, method, command=command_line())
    if result.get("wall_s") is not None:  # the main process
        print(f"final model: {result['final']}" + (f"   best on dev: {result['best']}" if result.get("best") else ""))
    return 0
