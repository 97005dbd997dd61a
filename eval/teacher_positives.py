"""Where a teacher ranks the judged positives of its queries: the check that tells, before hours of training,
whether distilling it samples useful (positive, negative) pairs on a dataset with many positives per query.

    python eval/teacher_positives.py --teacher outputs/teachers/nfcorpus.train.adore-minilm-bm25-interp.jsonl \
        --qrels ../shared/beir/nfcorpus/qrels/train.tsv --depth 200

Prints the median rank of a judged positive in the teacher's list, the share of positives inside the top 10 and
beyond the mined ``depth`` (``dretriever teacher`` appends those below its top ``depth``), and, for one positive
drawn per query as TAS-Balanced draws it, the share of that query's top-``depth`` candidates the teacher scores
above it (the pairs whose teacher margin is negative).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dretriever.cli import parse, run_script
from dretriever.data.beir import load_qrels
from dretriever.teacher import read_teacher_scores


@dataclass
class TeacherPositivesArgs:
    teacher: str = field(metadata={"help": "teacher score file (dretriever teacher)"})
    qrels: str = field(metadata={"help": "the qrels of the teacher's split (BEIR TSV)"})
    depth: int = field(default=200, metadata={"help": "the teacher's --depth"})
    seed: int = 0


def main(argv) -> int:
    args = parse(TeacherPositivesArgs, argv)
    scores = read_teacher_scores(args.teacher)
    qrels = load_qrels(args.qrels)
    rng = np.random.default_rng(args.seed)
    ranks, above = [], []
    for qid, hits in scores.items():
        positives = {d for d, r in qrels.get(qid, {}).items() if r > 0}
        rank = {d: n + 1 for n, (d, _) in enumerate(hits)}
        found = sorted(rank[d] for d in positives if d in rank)
        if not found:
            continue
        ranks += found
        drawn = hits[found[rng.integers(len(found))] - 1][1]  # one positive per query, uniformly
        candidates = [s for d, s in hits[:args.depth] if d not in positives]
        if candidates:
            above.append(float(np.mean([s > drawn for s in candidates])))
    ranks = np.array(ranks)
    print(f"{args.teacher}: {len(scores)} queries, {len(ranks)} judged positives in the lists")
    print(f"median rank of a positive {np.median(ranks):.0f}; in the top 10 {np.mean(ranks <= 10):.1%}; "
          f"beyond the top {args.depth} {np.mean(ranks > args.depth):.1%}")
    print(f"one positive drawn per query: the teacher scores {np.mean(above):.1%} of its query's candidates "
          f"above it (mean over {len(above)} queries)")
    return 0


if __name__ == "__main__":
    run_script(main)
