"""What old-gene queries cost: seconds per optimizer step of stage 2, distillation with and without queries.

Run on a quiet machine after `make run` (it starts from the pipeline's stage-1 checkpoints):
``.venv/bin/python benchmarks/query_cost.py [--epochs 2] [--repeats 2] [--seed 0] [NAME ...]``
(default names: finetune, distill, distill_query, distill_query_q64). Each strategy trains stage 2 for
``--epochs`` epochs from its own stage-1 checkpoint, in this process, with the pipeline's
``train.threads``; the rounds alternate between strategies, so a change of machine load hits all of
them. Prints seconds per step (best round) and the ratio to the first name.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from gil.config import config_from_dict, load_config
from gil.data.layout import ProcessedData, Split
from gil.train.checkpoint import load_checkpoint, stage_path
from gil.train.loop import StageTrainer, use_threads


def stage_two_seconds_per_step(trainer: StageTrainer, checkpoints: Path) -> float:
    """Train stage 2 from ``checkpoints``' stage-1 weights and strategy state; seconds per step."""
    payload = load_checkpoint(stage_path(checkpoints, 1))  # another epoch count: no fingerprint check
    trainer.model.grow_vocabulary(int(payload["n_tokens"]))
    trainer.model.load_state_dict(payload["model"])
    trainer.strategy.load_state_dict(payload["strategy_state"])
    record = trainer.train_stage(2)
    return record.seconds / record.optimizer_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", default=["finetune", "distill", "distill_query", "distill_query_q64"]
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    raw = load_config(args.params).model_dump(mode="json", exclude_unset=True)
    raw["train"] = {**raw["train"], "epochs_per_stage": args.epochs}
    raw["tracking"] = {"enabled": False}
    config = config_from_dict(raw)
    use_threads(config)
    data, split = ProcessedData.load(Path("data/processed")), Split.load(Path("data/split"))
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            for name in args.names:
                trainer = StageTrainer(
                    config, name, args.seed, data, split, Path(scratch) / name, progress=False
                )
                seconds = stage_two_seconds_per_step(
                    trainer, Path("checkpoints") / name / f"seed_{args.seed}"
                )
                best[name] = min(best.get(name, seconds), seconds)
    first = args.names[0]
    print(
        f"stage 2, {args.epochs} epochs, seed {args.seed}, threads {config.train.threads}, "
        f"best of {args.repeats}"
    )
    for name in args.names:
        print(f"{name:22s} {best[name] * 1000:7.1f} ms/step  {best[name] / best[first]:.2f}x {first}")


if __name__ == "__main__":
    main()
