"""``dretriever train recipes/<method>.yaml [--field value ...]``: one loop, the method from the recipe.

Runs under ``accelerate launch`` too: ``accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml
-m dretriever train recipes/star.yaml``.
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
