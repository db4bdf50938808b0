"""Stage-0 ``<cls>`` probes of base checkpoints, next to their reference points.

Why: issue 12's probe criterion (every default task ≥ majority + 0.2 and ≥ 0.8 × the raw-expression
probe at stage 0) depends only on the base stage, so model and objective variants can be compared
without training the continual stages. Prints one line per task and seed, then the mean.

    python benchmarks/stage0_probes.py --params params.yaml --base checkpoints/base
    python benchmarks/stage0_probes.py --params /tmp/p.yaml --base /tmp/exp/base --raw
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gil.config import load_config
from gil.data.layout import ProcessedData, Split
from gil.files import read_json
from gil.reference import check_reference
from gil.scoring import EvaluationInputs
from gil.train.checkpoint import load_checkpoint, stage_path
from gil.train.loop import load_stage_model, run_fingerprint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--base", type=Path, default=Path("checkpoints/base"))
    parser.add_argument("--processed", type=Path, default=Path("data/processed"))
    parser.add_argument("--split", type=Path, default=Path("data/split"))
    parser.add_argument("--reference", type=Path, default=Path("metrics/reference.json"))
    parser.add_argument("--raw", action="store_true", help="also fit the raw-expression probe (slower)")
    args = parser.parse_args()

    config = load_config(args.params)
    data, split = ProcessedData.load(args.processed), Split.load(args.split)
    inputs = EvaluationInputs(config, data, split)
    reference = read_json(args.reference)
    check_reference(reference, split, config)  # the gene-mean MSE must come from the same evaluation
    scores: dict[str, list[float]] = {task.name: [] for task in split.tasks}
    for seed in config.train.seeds:
        expected = run_fingerprint(config, None, seed, inputs.vocab, split)
        payload = load_checkpoint(stage_path(args.base / f"seed_{seed}", 0), expected)
        model = load_stage_model(payload, inputs.device)
        ratio = inputs.regression(model, 0).mse[0] / reference["gene_mean_mse"][0]
        print(f"seed {seed} B: MSE {ratio:.3f} x the gene-mean predictor's")
        for task in split.tasks:
            result = inputs.probe(inputs.embeddings(model, task, 0), task)
            scores[task.name].append(result.accuracy)
            print(f"seed {seed} {task.name}: cls {result.accuracy:.3f} ± {result.accuracy_se:.3f}")
    for task in split.tasks:
        line = f"mean {task.name}: cls {np.mean(scores[task.name]):.3f}, majority {task.majority_rate:.3f}"
        if args.raw:
            line += f", raw {inputs.probe(inputs.input_expression(task, 0), task).accuracy:.3f}"
        print(line)


if __name__ == "__main__":
    main()
