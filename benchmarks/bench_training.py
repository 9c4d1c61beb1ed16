"""Time training steps: exact meta-learned λ and first-order λ against a fixed-λ step.

Usage::

    python benchmarks/bench_training.py DATA_DIR [--steps 20] [--warmup 3] [--threads N]

DATA_DIR contains WhiteStripe-normalized subjects (``<subject>/{FLAIR,T1,wmh}.nii.gz``). Every
step uses a real mini-batch of 8 slices (4 FLAIR, 4 T1) cut to 256×256. For each network the
three step kinds run interleaved, one step of each in turn, so that load from other processes
affects all of them alike; the script reports the median time per step over ``--steps`` steps
after ``--warmup`` steps, and the ratios to the fixed-λ step.

It then measures how often the first-order estimator picks the same domain as the exact inner
loop, on ``--agreement-batches`` real mini-batches (128×128 patches), with the shipped default
model (trained) and with freshly initialized networks. For two domains the agreement of the
greedy and the conservative choice is the same number, because both flip together.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from wmhseg import checkpoint, data
from wmhseg.models import build_model, count_parameters
from wmhseg.weighting import FixedWeighting, MapWeighting, estimator_agreement, weighted_step


def load_dataset(data_dir: Path, crop: int) -> data.SliceDataset:
    subjects = [data.load_subject(files) for files in data.find_subjects(data_dir)]
    options = data.SamplingOptions(crop_size=(crop, crop), augment=False)
    return data.SliceDataset(subjects, options=options)


def time_steps(
    name: str, dataset: data.SliceDataset, *, steps: int, warmup: int
) -> dict[str, float]:
    torch.manual_seed(0)
    base = build_model(name)
    variants = {
        "fixed": (FixedWeighting([0.5, 0.5]), "exact"),
        "exact": (MapWeighting(mode="conservative", window=100), "exact"),
        "first_order": (MapWeighting(mode="conservative", window=100), "first_order"),
    }
    models = {key: copy.deepcopy(base) for key in variants}
    optimizers = {
        key: torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for key, model in models.items()
    }
    times: dict[str, list[float]] = {key: [] for key in variants}
    for index in range(warmup + steps):
        batches = dataset.sample_batch((0, index), 4)
        for key, (weighting, estimator) in variants.items():
            generator = torch.Generator().manual_seed(index)
            started = time.perf_counter()
            weighted_step(
                models[key],
                optimizers[key],
                batches,
                weighting,
                generator=generator,
                estimator=estimator,  # type: ignore[arg-type]
            )
            if index >= warmup:
                times[key].append(time.perf_counter() - started)
    return {key: statistics.median(values) for key, values in times.items()}


def agreement(model: torch.nn.Module, dataset: data.SliceDataset, batches: int) -> float:
    same = 0
    for index in range(batches):
        batch = dataset.sample_batch((1, index), 4)
        exact, first_order = estimator_agreement(
            model,
            batch,
            mode="greedy",
            lr=0.01,
            generator=torch.Generator().manual_seed(index),
        )
        same += int(exact == first_order)
    return same / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--steps", type=int, default=20, help="0 skips the step timing")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--agreement-batches", type=int, default=50, help="0 skips the agreement measurement"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", default="unet,lw")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.steps > 0:
        time_all(args)
    if args.agreement_batches > 0:
        agreement_all(args)


def time_all(args: argparse.Namespace) -> None:
    full = load_dataset(args.data_dir, 256)
    print(
        "| network | parameters | fixed-λ step (s) | exact meta step (s) | first-order step (s) "
        "| exact ÷ fixed | first-order ÷ fixed |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        medians = time_steps(name, full, steps=args.steps, warmup=args.warmup)
        parameters = count_parameters(build_model(name))
        print(
            f"| {name} | {parameters} | {medians['fixed']:.3f} | {medians['exact']:.3f} "
            f"| {medians['first_order']:.3f} | {medians['exact'] / medians['fixed']:.2f} "
            f"| {medians['first_order'] / medians['fixed']:.2f} |",
            flush=True,
        )


def agreement_all(args: argparse.Namespace) -> None:
    patches = load_dataset(args.data_dir, 128)
    print()
    print("| network | state | batches | first-order agrees with exact |")
    print("|---|---|---|---|")
    if checkpoint.DEFAULT_MODEL_PATH.is_file():
        trained, info = checkpoint.load_model(None, device=torch.device("cpu"))
        trained.train()
        rate = agreement(trained, patches, args.agreement_batches)
        print(
            f"| {info.model_name} {info.model_kwargs} | shipped default model "
            f"| {args.agreement_batches} | {rate:.2f} |",
            flush=True,
        )
    for name in args.models.split(","):
        torch.manual_seed(0)
        rate = agreement(build_model(name), patches, args.agreement_batches)
        print(
            f"| {name} | random initialization | {args.agreement_batches} | {rate:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
