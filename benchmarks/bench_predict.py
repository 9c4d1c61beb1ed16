"""Benchmark `wmhseg predict` on one FLAIR: preprocessing and network separately.

Each phase runs in its own child process so that its peak resident memory (ru_maxrss) is its own.
Usage:

    python benchmarks/bench_predict.py FLAIR.nii.gz [--threads 2] [--model PATH] [--repeats 3]
        [--force-skullstrip]

Prints one line per phase: wall time (best of the repeats), peak memory in MiB and the CPU time
of the process, which on a machine shared with other jobs varies less than the wall time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any


def _preprocess_phase(
    image_path: str, scratch: str, threads: int, detect: bool, queue: Any
) -> None:
    import numpy as np
    import torch

    from wmhseg import inference, io

    torch.set_num_threads(threads)
    image = io.load_image(image_path)
    options = inference.PredictOptions(modality="flair", detect_skull_stripped=detect)
    started = time.perf_counter()
    cpu_started = time.process_time()
    normalized, brain_mask, stages, _, detected = inference.preprocess_single_scan(
        image, Path(image_path), "flair", options
    )
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    np.savez(scratch, normalized=normalized.get_fdata(), brain=brain_mask)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    detail = f"stages {stages}, detected as done: {detected}, CPU time {cpu:.2f} s"
    queue.put(("preprocess", elapsed, peak, detail))


def _network_phase(
    image_path: str, scratch: str, threads: int, model: str | None, repeats: int, queue: Any
) -> None:
    import numpy as np
    import torch

    from wmhseg import inference, io

    torch.set_num_threads(threads)
    image = io.load_image(image_path)
    arrays = np.load(scratch)
    normalized = arrays["normalized"].astype(np.float32)
    brain_mask = arrays["brain"].astype(bool)
    predictor = inference.load_predictor(model, device="cpu")
    times, cpu_times = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        cpu_started = time.process_time()
        inference.predict_probabilities(predictor, normalized, image.affine, brain_mask=brain_mask)
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    detail = (
        f"model {predictor.info.model_name} {predictor.info.model_kwargs}, "
        f"wall per run {[round(t, 2) for t in times]} s, "
        f"CPU time per run {[round(t, 2) for t in cpu_times]} s"
    )
    queue.put(("network", min(times), peak, detail))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="FLAIR NIfTI file")
    parser.add_argument("--threads", type=int, default=2, help="torch and ITK threads")
    parser.add_argument("--model", default=None, help="checkpoint or run folder (default model)")
    parser.add_argument("--repeats", type=int, default=3, help="network runs; the best is shown")
    parser.add_argument(
        "--force-skullstrip",
        action="store_true",
        help="run skull stripping even if the image looks skull-stripped",
    )
    arguments = parser.parse_args()

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(arguments.threads)
    os.environ["OMP_NUM_THREADS"] = str(arguments.threads)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    # The preprocessed volume passes from the first child process to the second in this file.
    scratch = str(Path(tempfile.mkdtemp(prefix="wmhseg-bench-")) / "preprocessed.npz")
    phases = [
        (
            _preprocess_phase,
            (arguments.image, scratch, arguments.threads, not arguments.force_skullstrip, queue),
        ),
        (
            _network_phase,
            (
                arguments.image,
                scratch,
                arguments.threads,
                arguments.model,
                arguments.repeats,
                queue,
            ),
        ),
    ]
    for target, args in phases:
        process = context.Process(target=target, args=args)
        process.start()
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"{target.__name__} failed with exit code {process.exitcode}")
        name, seconds, peak_mib, detail = queue.get()
        print(f"{name}: {seconds:.2f} s wall, peak RSS {peak_mib:.0f} MiB ({detail})")
    Path(scratch).unlink(missing_ok=True)
    Path(scratch).parent.rmdir()


if __name__ == "__main__":
    main()
