"""Cross-validated comparison of loss-weighting methods, in the design of the reference experiment.

The reference experiment (A. Sicilia et al., "Multi-domain learning by meta-learning: taking
optimal steps in multi-domain loss landscapes by inner-loop learning", IEEE ISBI 2021) trains
each weighting method on 5 subject-level folds of 20 subjects (12 train, 4 validation, 4 test
per fold), repeats every fold 5 times and reports test Dice on FLAIR (DSC-F) and on T1 (DSC-T).
This module plans those runs for any number of labelled subjects, runs them (in parallel
processes if asked), records each finished run atomically so an interrupted experiment resumes
where it stopped, and writes one CSV row per run. :mod:`wmhseg.experiment_report` turns the
rows into the summary table and the λ plot.

Terms: a *cell* is one (fold, repeat, method, model, FLAIR setup) combination, trained once.
Its seed is derived from those five values and the experiment's base seed with SHA-256, so one
cell re-run alone gives the same numbers as inside the whole experiment.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from wmhseg.errors import TrainingError, WmhsegError
from wmhseg.experiment_report import (
    GroupBy,
    RunScores,
    SummaryRow,
    is_dynamic,
    plot_lambda_traces,
    summarize,
    write_summary,
)
from wmhseg.io import prepare_output_dir, write_bytes_atomic

logger = logging.getLogger(__name__)

DEFAULT_METHODS = (
    "F50-T50",
    "F10-T90",
    "F90-T10",
    "Simple-G",
    "Simple-C",
    "greedy-T25",
    "greedy-T100",
    "conservative-T25",
    "conservative-T100",
)
DEFAULT_MODELS = ("unet", "lw")
MODEL_NAMES = ("unet", "lw")

MethodKind = Literal["fixed", "simple", "greedy", "conservative"]

_FIXED_PAIR = re.compile(r"^F(\d{1,3})-T(\d{1,3})$")
_FIXED_VALUE = re.compile(r"^fixed-([0-9]*\.?[0-9]+)$")
_MAP_METHOD = re.compile(r"^(greedy|conservative)-T(\d+)$")


# --------------------------------------------------------------------------------------------
# Methods and FLAIR setups
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """A loss-weighting method; λ is the weight of the FLAIR loss, 1 − λ that of T1."""

    name: str
    kind: MethodKind
    flair_weight: float = 0.5
    gamma: float = 0.0
    window: int = 0


def parse_method(name: str) -> Method:
    """Parse a method name: ``F50-T50``, ``fixed-0.3``, ``Simple-G``, ``greedy-T100``, ...

    ``F<a>-T<b>`` needs a + b = 100 and means λ = a / 100. ``Simple-G`` and ``Simple-C`` are
    the heuristic with γ = −0.1 and +0.1. ``greedy-T<n>`` and ``conservative-T<n>`` are the
    meta-learned λ with a window of n observations.
    """
    text = name.strip()
    if match := _FIXED_PAIR.match(text):
        flair, t1 = int(match[1]), int(match[2])
        if flair + t1 != 100:
            raise WmhsegError(f"method {name!r}: the FLAIR and T1 percentages must add up to 100.")
        return Method(name=text, kind="fixed", flair_weight=flair / 100.0)
    if match := _FIXED_VALUE.match(text):
        value = float(match[1])
        if not 0.0 <= value <= 1.0:
            raise WmhsegError(f"method {name!r}: the fixed FLAIR weight must be in [0, 1].")
        return Method(name=text, kind="fixed", flair_weight=value)
    if text == "Simple-G":
        return Method(name=text, kind="simple", gamma=-0.1)
    if text == "Simple-C":
        return Method(name=text, kind="simple", gamma=0.1)
    if match := _MAP_METHOD.match(text):
        window = int(match[2])
        if window < 1:
            raise WmhsegError(f"method {name!r}: the window T must be at least 1.")
        kind: MethodKind = "greedy" if match[1] == "greedy" else "conservative"
        return Method(name=text, kind=kind, window=window)
    raise WmhsegError(
        f"unknown method {name!r}. Use F<a>-T<b> (e.g. F50-T50), fixed-<λ> (e.g. fixed-0.3), "
        "Simple-G, Simple-C, greedy-T<n> or conservative-T<n> (e.g. greedy-T100)."
    )


@dataclass(frozen=True)
class FlairSetup:
    """How many training subjects keep their FLAIR: all of them, or a fixed number."""

    n_flair: int | None = None

    @property
    def label(self) -> str:
        """Label used in tables and file names: ``allF`` or e.g. ``8F``."""
        return "allF" if self.n_flair is None else f"{self.n_flair}F"


def parse_flair_setup(text: str) -> FlairSetup:
    """Parse ``all`` or a number of training subjects that keep their FLAIR (``8`` or ``8F``)."""
    value = text.strip()
    if value.lower() in ("all", "allf"):
        return FlairSetup(None)
    digits = value[:-1] if value.upper().endswith("F") else value
    if not digits.isdigit() or int(digits) < 1:
        raise WmhsegError(
            f"FLAIR setup {text!r} is invalid: use 'all' or a positive number of training "
            "subjects that keep their FLAIR (e.g. 8)."
        )
    return FlairSetup(int(digits))


# --------------------------------------------------------------------------------------------
# Folds and seeds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fold:
    """Subjects of one cross-validation fold.

    ``validation_from_training`` is True when there are too few subjects for a separate
    validation set; training then holds out slices of the training subjects for validation.
    """

    index: int
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]
    validation_from_training: bool = False


def derive_seed(base_seed: int, *parts: object) -> int:
    """Derive a 31-bit seed from a base seed and labels with SHA-256 (stable across runs).

    Python's ``hash()`` of strings changes with every interpreter start, so it cannot be used.
    """
    text = "|".join([str(base_seed), *(str(p) for p in parts)])
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def make_folds(subjects: Sequence[str], *, n_folds: int, seed: int) -> list[Fold]:
    """Split subjects into folds that test on one part, validate on the next and train on the rest.

    The subjects are shuffled once with ``seed`` and cut into ``n_folds`` near-equal parts.
    Fold i tests on part i and validates on part i + 1 (cyclically), which reproduces the
    reference 12 / 4 / 4 split for 20 subjects and 5 folds and scales it to other sizes. With
    2 folds the part after the test part is the only one left, so there is no separate
    validation set: fold i trains on the other part and validates on held-out slices of it.
    """
    names = sorted(set(subjects))
    if len(names) != len(subjects):
        raise WmhsegError("subject names must be unique.")
    if n_folds < 2:
        raise WmhsegError(f"cross-validation needs at least 2 folds, got {n_folds}.")
    if n_folds > len(names):
        raise WmhsegError(
            f"{n_folds} folds need at least {n_folds} subjects, but the data has {len(names)}. "
            f"Use --folds {len(names)} or fewer."
        )
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    parts = [tuple(sorted(part)) for part in _split_evenly(shuffled, n_folds)]

    folds = []
    for i in range(n_folds):
        test = parts[i]
        if n_folds >= 3:
            validation = parts[(i + 1) % n_folds]
            train = tuple(
                sorted(s for j, p in enumerate(parts) if j not in (i, (i + 1) % n_folds) for s in p)
            )
            folds.append(Fold(i, train, validation, test))
        else:
            train = tuple(sorted(s for j, p in enumerate(parts) if j != i for s in p))
            folds.append(Fold(i, train, (), test, validation_from_training=True))
    return folds


def _split_evenly(items: Sequence[str], parts: int) -> list[list[str]]:
    size, extra = divmod(len(items), parts)
    result, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        result.append(list(items[start:stop]))
        start = stop
    return result


# --------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One training run: a fold, a repeat, a method, a model and a FLAIR setup."""

    fold: Fold
    repeat: int
    method: Method
    model: str
    flair: FlairSetup
    base_seed: int

    @property
    def run_id(self) -> str:
        """Folder-safe identifier, unique within an experiment."""
        return (
            f"fold{self.fold.index}_rep{self.repeat}_{self.model}_{self.flair.label}_"
            f"{self.method.name}"
        )

    @property
    def seed(self) -> int:
        """Training seed of this cell (initialization, batches, augmentation)."""
        return derive_seed(
            self.base_seed,
            self.fold.index,
            self.repeat,
            self.method.name,
            self.model,
            self.flair.label,
        )

    def flair_subjects(self) -> tuple[str, ...]:
        """Training subjects that keep their FLAIR; T1 is kept for every subject.

        The subset depends on fold, repeat and setup only, so every method and model of a
        (fold, repeat) sees the same FLAIR subjects and their comparison is paired.
        """
        train = self.fold.train
        if self.flair.n_flair is None or self.flair.n_flair >= len(train):
            return train
        rng = np.random.default_rng(
            derive_seed(self.base_seed, "flair", self.fold.index, self.repeat, self.flair.label)
        )
        chosen = rng.choice(len(train), size=self.flair.n_flair, replace=False)
        return tuple(sorted(train[i] for i in chosen))


@dataclass(frozen=True)
class ExperimentPlan:
    """All settings of an experiment; :meth:`cells` lists the runs in a fixed order."""

    data_dir: Path
    subjects: tuple[str, ...]
    folds: tuple[Fold, ...]
    repeats: int
    methods: tuple[Method, ...]
    models: tuple[str, ...]
    flair_setups: tuple[FlairSetup, ...]
    seed: int
    max_epochs: int
    device: str = "cpu"
    train_options: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        """Return every cell, ordered by repeat, fold, model, setup, method."""
        return [
            Cell(fold, repeat, method, model, flair, self.seed)
            for repeat in range(self.repeats)
            for fold in self.folds
            for model in self.models
            for flair in self.flair_setups
            for method in self.methods
        ]

    def describe(self) -> dict[str, Any]:
        """Return the plan as JSON-ready values (written to ``plan.json``)."""
        return {
            "data_dir": str(self.data_dir),
            "subjects": list(self.subjects),
            "folds": [asdict(f) for f in self.folds],
            "repeats": self.repeats,
            "methods": [m.name for m in self.methods],
            "models": list(self.models),
            "flair_setups": [s.label for s in self.flair_setups],
            "seed": self.seed,
            "max_epochs": self.max_epochs,
            "device": self.device,
            "train_options": self.train_options,
        }


def make_plan(
    data_dir: Path,
    *,
    subjects: Sequence[str],
    n_folds: int = 5,
    repeats: int = 5,
    methods: Sequence[str] = DEFAULT_METHODS,
    models: Sequence[str] = DEFAULT_MODELS,
    flair_setups: Sequence[str] = ("all",),
    seed: int = 0,
    max_epochs: int = 200,
    device: str = "cpu",
    train_options: dict[str, Any] | None = None,
) -> ExperimentPlan:
    """Validate the options and build an :class:`ExperimentPlan`."""
    if repeats < 1:
        raise WmhsegError(f"repeats must be at least 1, got {repeats}.")
    if max_epochs < 1:
        raise WmhsegError(f"max epochs must be at least 1, got {max_epochs}.")
    parsed_methods = tuple(parse_method(m) for m in methods)
    if len({m.name for m in parsed_methods}) != len(parsed_methods):
        raise WmhsegError("each method may be given only once.")
    if not parsed_methods:
        raise WmhsegError("give at least one method.")
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown or not models:
        raise WmhsegError(f"unknown model(s) {unknown}; choose from {', '.join(MODEL_NAMES)}.")
    setups = tuple(dict.fromkeys(parse_flair_setup(s) for s in flair_setups))
    folds = tuple(make_folds(subjects, n_folds=n_folds, seed=seed))
    smallest_train = min(len(f.train) for f in folds)
    for setup in setups:
        if setup.n_flair is not None and setup.n_flair > smallest_train:
            raise WmhsegError(
                f"FLAIR setup {setup.label} keeps FLAIR for {setup.n_flair} training subjects, "
                f"but the smallest fold trains on {smallest_train}. Use a smaller number."
            )
    return ExperimentPlan(
        data_dir=Path(data_dir),
        subjects=tuple(sorted(subjects)),
        folds=folds,
        repeats=repeats,
        methods=parsed_methods,
        models=tuple(dict.fromkeys(models)),
        flair_setups=setups,
        seed=seed,
        max_epochs=max_epochs,
        device=device,
        train_options=dict(train_options or {}),
    )


# --------------------------------------------------------------------------------------------
# Run records
# --------------------------------------------------------------------------------------------

RUN_CSV_COLUMNS = (
    "fold",
    "repeat",
    "method",
    "model",
    "flair_setup",
    "dsc_flair",
    "dsc_t1",
    "seed",
    "epochs",
    "best_epoch",
    "seconds",
    "train_subjects",
    "flair_subjects",
    "validation_subjects",
    "test_subjects",
    "run_id",
)


@dataclass
class RunRecord:
    """Result of one finished cell; stored as ``runs/<run_id>.json``.

    ``dsc_flair`` and ``dsc_t1`` pool true/false positives and false negatives over all test
    subjects (one Dice per domain, not a mean of per-subject Dice). ``counts`` stores those
    sums per domain, ``lambda_trace`` the FLAIR weight λ at every training step.
    """

    run_id: str
    fold: int
    repeat: int
    method: str
    model: str
    flair_setup: str
    dsc_flair: float
    dsc_t1: float
    seed: int
    epochs: int
    best_epoch: int
    seconds: float
    train_subjects: list[str]
    flair_subjects: list[str]
    validation_subjects: list[str]
    test_subjects: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    lambda_trace: list[float] = field(default_factory=list)
    steps_per_epoch: float = 0.0

    def csv_row(self) -> list[str]:
        """Return the values of :data:`RUN_CSV_COLUMNS`; subject lists joined with ``;``."""
        values: list[str] = []
        for column in RUN_CSV_COLUMNS:
            value = getattr(self, column)
            if isinstance(value, list):
                values.append(";".join(value))
            elif isinstance(value, float):
                values.append(repr(value))
            else:
                values.append(str(value))
        return values


def runs_dir(out_dir: Path) -> Path:
    """Folder of the per-run JSON records and training outputs."""
    return out_dir / "runs"


def record_path(out_dir: Path, run_id: str) -> Path:
    """Path of a finished run's record; its presence marks the run as done."""
    return runs_dir(out_dir) / f"{run_id}.json"


def save_record(out_dir: Path, record: RunRecord) -> Path:
    """Write a run's record atomically (temp file + rename), so a record is complete or absent."""
    payload = json.dumps(asdict(record), indent=1).encode()
    return write_bytes_atomic(record_path(out_dir, record.run_id), payload, overwrite=True)


def load_record(path: Path) -> RunRecord:
    """Read a run record written by :func:`save_record`."""
    return RunRecord(**json.loads(path.read_text()))


def load_records(out_dir: Path) -> list[RunRecord]:
    """Read every finished run's record in ``out_dir``, sorted by run id."""
    folder = runs_dir(out_dir)
    if not folder.is_dir():
        return []
    return [load_record(path) for path in sorted(folder.glob("*.json"))]


def runs_csv(records: Sequence[RunRecord]) -> str:
    """Return the per-run CSV: one row per finished run, in the order given."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RUN_CSV_COLUMNS)
    for record in records:
        writer.writerow(record.csv_row())
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Running cells
# --------------------------------------------------------------------------------------------

# A cell runner trains one cell and returns its record. The default one trains with
# wmhseg.training; tests may pass another (it must be picklable for --jobs > 1).
CellRunner = Callable[[Cell, "ExperimentPlan", Path], RunRecord]


def cap_threads(threads: int) -> None:
    """Limit torch, BLAS/OpenMP and ITK to ``threads`` threads in this process."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(threads)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    except ImportError:  # pragma: no cover - SimpleITK is a dependency
        pass


def _worker_init(threads: int) -> None:
    cap_threads(threads)


def _run_and_save(runner: CellRunner, cell: Cell, plan: ExperimentPlan, out_dir: Path) -> RunRecord:
    work_dir = runs_dir(out_dir) / cell.run_id
    if work_dir.exists():
        # Left over from an interrupted attempt: its record is missing, so it is incomplete.
        shutil.rmtree(work_dir)
    start = time.perf_counter()
    record = runner(cell, plan, work_dir)
    record.seconds = round(time.perf_counter() - start, 2)
    save_record(out_dir, record)
    return record


def write_plan(plan: ExperimentPlan, out_dir: Path) -> Path:
    """Write ``plan.json``; reject an output folder that contains a different plan's runs."""
    path = out_dir / "plan.json"
    # Round-trip through JSON so that tuples compare equal to the lists read back.
    described = json.loads(json.dumps(plan.describe()))
    if path.exists():
        previous = json.loads(path.read_text())
        mismatched = [
            key
            for key in ("subjects", "folds", "seed", "max_epochs", "train_options")
            if previous.get(key) != described.get(key)
        ]
        if mismatched:
            raise WmhsegError(
                f"{out_dir} contains an experiment with a different {', '.join(mismatched)}. "
                "Resume it with the same options, or choose another --out folder."
            )
    payload = json.dumps(described, indent=1).encode()
    return write_bytes_atomic(path, payload, overwrite=True)


def run_experiment(
    plan: ExperimentPlan,
    out_dir: Path,
    *,
    jobs: int = 1,
    runner: CellRunner | None = None,
    progress: Callable[[RunRecord, int, int], None] | None = None,
) -> list[RunRecord]:
    """Run every cell of ``plan`` that has no record in ``out_dir`` yet, then write ``runs.csv``.

    Finished cells are skipped, so calling this again after an interruption resumes the
    experiment. ``jobs > 1`` runs cells in that many processes, each with
    ``max(1, cpu_count // jobs)`` torch/BLAS/ITK threads. ``progress(record, done, total)`` is
    called after each finished cell. Returns the records of all planned cells.
    """
    if jobs < 1:
        raise WmhsegError(f"--jobs must be at least 1, got {jobs}.")
    out_dir = prepare_output_dir(out_dir)
    runs_dir(out_dir).mkdir(exist_ok=True)
    write_plan(plan, out_dir)
    runner = runner or train_cell

    cells = plan.cells()
    todo = [c for c in cells if not record_path(out_dir, c.run_id).exists()]
    done = len(cells) - len(todo)
    if done:
        logger.info("Skipping %d finished runs of %d", done, len(cells))

    if jobs == 1 or len(todo) <= 1:
        for cell in todo:
            record = _run_and_save(runner, cell, plan, out_dir)
            done += 1
            if progress:
                progress(record, done, len(cells))
    else:
        done = _run_parallel(runner, todo, plan, out_dir, jobs, done, len(cells), progress)

    wanted = {c.run_id for c in cells}
    records = [r for r in load_records(out_dir) if r.run_id in wanted]
    write_bytes_atomic(out_dir / "runs.csv", runs_csv(records).encode(), overwrite=True)
    return records


def _run_parallel(
    runner: CellRunner,
    todo: Sequence[Cell],
    plan: ExperimentPlan,
    out_dir: Path,
    jobs: int,
    done: int,
    total: int,
    progress: Callable[[RunRecord, int, int], None] | None,
) -> int:
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // jobs)
    # "spawn" because forking a process that has already started torch threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_worker_init, initargs=(threads,)
    ) as pool:
        pending: set[Future[RunRecord]] = {
            pool.submit(_run_and_save, runner, cell, plan, out_dir) for cell in todo
        }
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    record = future.result()
                    done += 1
                    if progress:
                        progress(record, done, total)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return done


# --------------------------------------------------------------------------------------------
# The default cell runner: train with wmhseg.training, score on the test subjects
# --------------------------------------------------------------------------------------------


def train_cell(cell: Cell, plan: ExperimentPlan, work_dir: Path) -> RunRecord:
    """Train one cell with :mod:`wmhseg.training` and score it on the fold's test subjects."""
    from wmhseg.experiment_training import train_and_score

    try:
        return train_and_score(cell, plan, work_dir)
    except WmhsegError:
        raise
    except (RuntimeError, ValueError) as error:
        raise TrainingError(f"run {cell.run_id} failed: {error}") from error


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """Return 2TP / (2TP + FP + FN); 1.0 when truth and prediction are both empty."""
    total = 2 * tp + fp + fn
    return 1.0 if total == 0 else 2.0 * tp / total


# --------------------------------------------------------------------------------------------
# Subjects and report
# --------------------------------------------------------------------------------------------

IMAGE_NAMES = {"flair": "FLAIR.nii.gz", "t1": "T1.nii.gz"}
LABEL_NAME = "wmh.nii.gz"


def subject_files(subject_dir: Path) -> dict[str, Path]:
    """Return the ``flair``, ``t1`` and ``label`` files of a subject folder that exist.

    Images are looked for in the folder itself and in ``pre/`` (the MICCAI 2017 WMH challenge
    layout); the label is ``wmh.nii.gz`` in the folder.
    """
    files: dict[str, Path] = {}
    for modality, name in IMAGE_NAMES.items():
        for candidate in (subject_dir / name, subject_dir / "pre" / name):
            if candidate.is_file():
                files[modality] = candidate
                break
    if (subject_dir / LABEL_NAME).is_file():
        files["label"] = subject_dir / LABEL_NAME
    return files


def find_subjects(data_dir: Path) -> list[str]:
    """Return the subjects of ``data_dir`` that have a label, a T1 and a FLAIR.

    Both modalities are needed because every subject is tested on both domains.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise WmhsegError(f"{data_dir}: data folder not found.")
    subjects, incomplete = [], []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        files = subject_files(folder)
        if {"flair", "t1", "label"} <= files.keys():
            subjects.append(folder.name)
        elif files:
            incomplete.append(folder.name)
    if incomplete:
        logger.warning(
            "Skipping %d subject folder(s) without T1, FLAIR and %s: %s",
            len(incomplete),
            LABEL_NAME,
            ", ".join(incomplete),
        )
    if len(subjects) < 2:
        raise WmhsegError(
            f"{data_dir}: found {len(subjects)} subject(s) with T1.nii.gz, FLAIR.nii.gz and "
            f"{LABEL_NAME}; cross-validation needs at least 2."
        )
    return subjects


@dataclass
class ReportOutputs:
    """Summary rows of an experiment and the files written for them."""

    rows: list[SummaryRow]
    paths: list[Path]


def write_report(
    records: Sequence[RunRecord],
    out_dir: Path,
    *,
    method_order: Sequence[str] = (),
    group_by: GroupBy = "run",
) -> ReportOutputs:
    """Write ``summary.md``, ``summary.csv`` and, for dynamic methods, ``lambda.png``."""
    scores = [
        RunScores(r.fold, r.repeat, r.method, r.model, r.flair_setup, r.dsc_flair, r.dsc_t1)
        for r in records
    ]
    rows = summarize(scores, group_by=group_by, method_order=method_order)
    paths = list(write_summary(rows, Path(out_dir)))

    traces: dict[tuple[str, str, str], list[list[float]]] = {}
    steps_per_epoch = []
    for record in records:
        if is_dynamic(record.method) and record.lambda_trace:
            key = (record.model, record.flair_setup, record.method)
            traces.setdefault(key, []).append(record.lambda_trace)
            if record.steps_per_epoch:
                steps_per_epoch.append(record.steps_per_epoch)
    if traces:
        per_epoch = float(np.median(steps_per_epoch)) if steps_per_epoch else None
        paths.append(
            plot_lambda_traces(traces, Path(out_dir) / "lambda.png", steps_per_epoch=per_epoch)
        )
    return ReportOutputs(rows=rows, paths=paths)
