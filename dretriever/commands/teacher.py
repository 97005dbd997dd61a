"""Write teacher score files for distillation (cross-encoder, bi-encoder, BM25 or their fusion).

    dretriever teacher --data ${BEIR_DATA}/scifact --split train --teacher fusion \\
        --model sentence-transformers/all-MiniLM-L6-v2 --output outputs/teachers/scifact.train.jsonl

A trained cross-encoder (``recipes/cross-encoder.yaml``) re-scoring a first stage's top 200, raw logits:

    dretriever teacher --data ${BEIR_DATA}/scifact --split train --teacher cross-encoder \\
        --cross_encoder outputs/cross-encoder-scifact/best --candidates bm25 --depth 200 \\
        --output outputs/teachers/scifact.train.cross-encoder.jsonl
"""

from __future__ import annotations

import json

from ..cli import command_line, parse
from ..teacher import TeacherArgs, read_teacher_scores, write_teacher_scores


def main(argv) -> int:
    args = parse(TeacherArgs, argv)
    out = write_teacher_scores(args, command_line())
    scores = read_teacher_scores(out)
    pairs = sum(len(v) for v in scores.values())
    print(f"{out}: {len(scores)} queries, {pairs} scored candidates ({args.teacher})")
    cost = json.loads(out.with_name(out.name + ".meta.json").read_text()).get("cost")
    if cost:  # this run's scoring (a resumed run counts only what it scored)
        print(f"cost: {cost['pairs_scored']} pairs scored in {cost['scoring_s']} s ({cost['pairs_per_s']} pairs/s)")
    return 0
