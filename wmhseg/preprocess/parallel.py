"""Run subjects one after another or in worker processes with capped thread counts."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from wmhseg.errors import WmhsegError
from wmhseg.preprocess.pipeline import SubjectInputs, SubjectResult, preprocess_subject

logger = logging.getLogger(__name__)

_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
)


def cap_threads(threads: int) -> None:
    """Limit ITK, torch and BLAS to ``threads`` threads in this process."""
    import SimpleITK as sitk
    import torch

    for variable in _THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    torch.set_num_threads(threads)


@dataclass
class Outcome:
    """One subject's result or the reason it failed."""

    subject: str
    result: SubjectResult | None = None
    error: str | None = None

    @property
    def up_to_date(self) -> bool:
        """Whether the subject's outputs were already made from the same inputs and parameters."""
        return self.result is not None and self.result.up_to_date


def _run_one(
    inputs: SubjectInputs, out_root: Path, options: dict[str, object], threads: int | None
) -> Outcome:
    if threads is not None:
        cap_threads(threads)
    try:
        return Outcome(inputs.subject, result=preprocess_subject(inputs, out_root, **options))  # type: ignore[arg-type]
    except WmhsegError as error:
        # The message goes to the user, and the traceback only to --debug logging.
        logger.debug("subject %s failed", inputs.subject, exc_info=True)
        return Outcome(inputs.subject, error=str(error))
    except Exception as error:  # one subject's unexpected failure must not stop the others
        logger.exception("subject %s failed", inputs.subject)
        return Outcome(inputs.subject, error=f"unexpected {type(error).__name__}: {error}")


def run_subjects(
    subjects: list[SubjectInputs],
    out_root: Path,
    *,
    jobs: int = 1,
    options: dict[str, object] | None = None,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Preprocess each subject; failures are returned as outcomes, never raised.

    With ``jobs`` > 1, subjects run in that many spawned processes, each limited to
    ``cpu_count // jobs`` threads (at least 1) so that ITK and torch do not oversubscribe.
    """
    options = options or {}
    outcomes: list[Outcome] = []
    if jobs <= 1:
        for inputs in subjects:
            outcome = _run_one(inputs, out_root, options, None)
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)
        return outcomes

    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as executor:
        futures: dict[Future[Outcome], str] = {
            executor.submit(_run_one, inputs, out_root, options, threads): inputs.subject
            for inputs in subjects
        }
        for future in _completed(futures):
            try:
                outcome = future.result()
            except Exception as error:  # a worker crash (e.g. killed for memory)
                outcome = Outcome(futures[future], error=f"worker process failed: {error}")
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)
    return outcomes


def _completed(futures: dict[Future[Outcome], str]) -> Iterator[Future[Outcome]]:
    yield from as_completed(futures)
