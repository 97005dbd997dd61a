"""Write teacher score files for distillation (cross-encoder, bi-encoder, BM25 or their fusion).

    dretriever teacher --data ${BEIR_DATA}/scifact --split train --teacher fusion \\
        --model sentence-transformers/all-MiniLM-L6-v2 --output outputs/teachers/scifact.train.jsonl
"""

from __future__ import annotations

from ..cli import command_line, parse
from ..teacher import TeacherArgs, read_teacher_scores, write_teacher_scores


def main(argv) -> int:
    args = parse(TeacherArgs, argv)
    out = write_teacher_scores(args, command_line())
    scores = read_teacher_scores(out)
    pairs = sum(len(v) for v in scores.values())
    print(f"{out}: {len(scores)} queries, {pairs} scored candidates ({args.teacher})")
    return 0
