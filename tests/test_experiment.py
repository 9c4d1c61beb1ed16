"""Experiment plan, summary arithmetic and resumption (no training; see test_experiment_run.py)."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from wmhseg import experiment
from wmhseg.errors import WmhsegError
from wmhseg.experiment import Cell, ExperimentPlan, RunRecord
from wmhseg.experiment_report import RunScores, summarize, to_markdown, trace_band

SUBJECTS = [f"s{i:02d}" for i in range(20)]


# --------------------------------------------------------------------------------------------
# Methods, setups, folds, seeds
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "flair_weight", "gamma", "window"),
    [
        ("F50-T50", "fixed", 0.5, 0.0, 0),
        ("F10-T90", "fixed", 0.1, 0.0, 0),
        ("F90-T10", "fixed", 0.9, 0.0, 0),
        ("fixed-0.3", "fixed", 0.3, 0.0, 0),
        ("Simple-G", "simple", 0.5, -0.1, 0),
        ("Simple-C", "simple", 0.5, 0.1, 0),
        ("greedy-T25", "greedy", 0.5, 0.0, 25),
        ("conservative-T100", "conservative", 0.5, 0.0, 100),
    ],
)
def test_parse_method_names(
    name: str, kind: str, flair_weight: float, gamma: float, window: int
) -> None:
    method = experiment.parse_method(name)
    assert method.kind == kind
    assert method.flair_weight == pytest.approx(flair_weight)
    assert method.gamma == pytest.approx(gamma)
    assert method.window == window


@pytest.mark.parametrize("name", ["F50-T40", "fixed-1.5", "greedy-T0", "meta", "greedy"])
def test_parse_method_rejects(name: str) -> None:
    with pytest.raises(WmhsegError):
        experiment.parse_method(name)


def test_flair_setup_labels() -> None:
    assert experiment.parse_flair_setup("all").label == "allF"
    assert experiment.parse_flair_setup("8").label == "8F"
    assert experiment.parse_flair_setup("8F").n_flair == 8
    with pytest.raises(WmhsegError):
        experiment.parse_flair_setup("0")


def test_folds_reference_split() -> None:
    folds = experiment.make_folds(SUBJECTS, n_folds=5, seed=3)

    assert [(len(f.train), len(f.validation), len(f.test)) for f in folds] == [(12, 4, 4)] * 5
    tested = sorted(s for f in folds for s in f.test)
    assert tested == SUBJECTS
    for fold in folds:
        assert not set(fold.train) & set(fold.test)
        assert not set(fold.validation) & set(fold.test)
        assert not set(fold.train) & set(fold.validation)


def test_folds_two_subjects() -> None:
    folds = experiment.make_folds(["a", "b"], n_folds=2, seed=0)

    assert sorted((f.train, f.test) for f in folds) == [(("a",), ("b",)), (("b",), ("a",))]
    assert all(f.validation == () for f in folds)
    assert all(f.validation_from_training for f in folds)


def test_folds_uneven_sizes() -> None:
    folds = experiment.make_folds(SUBJECTS[:7], n_folds=3, seed=0)

    assert sorted(len(f.test) for f in folds) == [2, 2, 3]
    assert sorted(s for f in folds for s in f.test) == SUBJECTS[:7]


def test_folds_reject_too_many() -> None:
    with pytest.raises(WmhsegError, match="at least 3 subjects"):
        experiment.make_folds(["a", "b"], n_folds=3, seed=0)


def test_derive_seed_stable() -> None:
    # Fixed value: a change here means re-run experiments no longer reproduce old numbers.
    assert experiment.derive_seed(0, 1, 2, "F50-T50", "lw", "allF") == experiment.derive_seed(
        0, 1, 2, "F50-T50", "lw", "allF"
    )
    assert experiment.derive_seed(0, "a") == 845039730
    assert experiment.derive_seed(0, "a") != experiment.derive_seed(1, "a")


def _plan(tmp_path: Path, **options: object) -> ExperimentPlan:
    settings: dict = {
        "subjects": SUBJECTS,
        "n_folds": 5,
        "repeats": 2,
        "methods": ["F50-T50", "greedy-T100"],
        "models": ["lw"],
        "flair_setups": ["all", "8"],
        "max_epochs": 1,
    }
    settings.update(options)
    return experiment.make_plan(tmp_path, **settings)


def test_plan_cells_unique(tmp_path: Path) -> None:
    cells = _plan(tmp_path).cells()

    assert len(cells) == 5 * 2 * 2 * 2
    assert len({c.run_id for c in cells}) == len(cells)
    assert len({c.seed for c in cells}) == len(cells)


def test_flair_subset_paired(tmp_path: Path) -> None:
    cells = [c for c in _plan(tmp_path).cells() if c.flair.label == "8F"]
    by_fold_repeat: dict[tuple[int, int], set[tuple[str, ...]]] = {}
    for cell in cells:
        by_fold_repeat.setdefault((cell.fold.index, cell.repeat), set()).add(cell.flair_subjects())

    # Every method of one (fold, repeat) trains with the same 8 FLAIR subjects.
    assert all(len(subsets) == 1 for subsets in by_fold_repeat.values())
    subset = next(iter(by_fold_repeat[(0, 0)]))
    assert len(subset) == 8
    assert set(subset) <= set(cells[0].fold.train)


def test_plan_rejects_large_flair_setup(tmp_path: Path) -> None:
    with pytest.raises(WmhsegError, match="smallest fold trains on 12"):
        _plan(tmp_path, flair_setups=["13"])


# --------------------------------------------------------------------------------------------
# Summary arithmetic
# --------------------------------------------------------------------------------------------


def _runs(method: str, flair: list[float], t1: list[float]) -> list[RunScores]:
    return [
        RunScores(
            fold=i, repeat=0, method=method, model="lw", flair_setup="8F", dsc_flair=f, dsc_t1=t
        )
        for i, (f, t) in enumerate(zip(flair, t1, strict=True))
    ]


def test_summary_gains_hand_computed() -> None:
    runs = _runs("F50-T50", [0.70, 0.80], [0.30, 0.40])
    runs += _runs("greedy-T100", [0.76, 0.78], [0.36, 0.40])

    reference, greedy = summarize(runs)

    # Sample s.d. of two values a, b is |a − b| / √2.
    assert reference.method == "F50-T50"
    assert reference.dsc_flair_mean == pytest.approx(0.75)
    assert reference.dsc_flair_sd == pytest.approx(0.10 / math.sqrt(2))
    assert reference.dsc_t1_sd == pytest.approx(0.10 / math.sqrt(2))
    assert greedy.dsc_flair_mean == pytest.approx(0.77)
    assert greedy.dsc_t1_mean == pytest.approx(0.38)
    # GAIN-µ = (0.77 − 0.75) + (0.38 − 0.35)
    assert greedy.gain_mu == pytest.approx(0.05)
    # GAIN-σ = (0.10 − 0.02) / √2 + (0.10 − 0.04) / √2
    assert greedy.gain_sigma == pytest.approx(0.14 / math.sqrt(2))
    assert reference.gain_mu == pytest.approx(0.0)
    assert reference.gain_sigma == pytest.approx(0.0)


def test_summary_reference_table_row() -> None:
    # Three runs per method whose mean and s.d. match the source's U-Net 8F rows exactly:
    # values m − s, m, m + s have mean m and sample s.d. s.
    def spread(mean: float, sd: float) -> list[float]:
        return [mean - sd, mean, mean + sd]

    runs = _runs("F50-T50", spread(0.767, 0.013), spread(0.556, 0.025))
    runs += _runs("conservative-T25", spread(0.768, 0.014), spread(0.566, 0.012))

    _, conservative = summarize(runs)

    # GAIN-µ = 0.001 + 0.010, GAIN-σ = (0.013 − 0.014) + (0.025 − 0.012)
    assert conservative.gain_mu == pytest.approx(0.011)
    assert conservative.gain_sigma == pytest.approx(0.012)


def test_summary_group_by_repeat() -> None:
    runs = [
        RunScores(0, 0, "F50-T50", "lw", "allF", 0.6, 0.2),
        RunScores(1, 0, "F50-T50", "lw", "allF", 0.8, 0.4),
        RunScores(0, 1, "F50-T50", "lw", "allF", 0.9, 0.5),
        RunScores(1, 1, "F50-T50", "lw", "allF", 0.9, 0.5),
    ]

    (row,) = summarize(runs, group_by="repeat")

    # Repeat means: FLAIR 0.7 and 0.9, T1 0.3 and 0.5.
    assert row.n == 2
    assert row.dsc_flair_mean == pytest.approx(0.8)
    assert row.dsc_flair_sd == pytest.approx(0.2 / math.sqrt(2))
    assert row.dsc_t1_mean == pytest.approx(0.4)


def test_summary_without_reference() -> None:
    (row,) = summarize(_runs("greedy-T25", [0.7, 0.8], [0.3, 0.4]))

    assert math.isnan(row.gain_mu)
    assert math.isnan(row.gain_sigma)


def test_summary_single_run_sd_dash() -> None:
    rows = summarize(_runs("F50-T50", [0.7], [0.3]) + _runs("greedy-T25", [0.8], [0.4]))
    markdown = to_markdown(rows)

    assert "| LW 8F | F50-T50 | 1 | 0.700 ± – | 0.300 ± – |  |  |" in markdown
    assert "| LW 8F | greedy-T25 | 1 | 0.800 ± – | 0.400 ± – | +0.200 | – |" in markdown


def test_summary_method_order() -> None:
    runs = _runs("greedy-T25", [0.7], [0.3]) + _runs("F10-T90", [0.7], [0.3])
    runs += _runs("F50-T50", [0.7], [0.3])

    rows = summarize(runs, method_order=["F10-T90", "greedy-T25"])

    assert [r.method for r in rows] == ["F50-T50", "F10-T90", "greedy-T25"]


def test_trace_band_unequal_lengths() -> None:
    mean, sd, count = trace_band([[0.4, 0.6, 0.8], [0.6, 0.8]])

    assert list(count) == [2, 2, 1]
    assert mean == pytest.approx([0.5, 0.7, 0.8])
    assert sd == pytest.approx([0.1 * math.sqrt(2), 0.1 * math.sqrt(2), 0.0])


# --------------------------------------------------------------------------------------------
# Resumption (with a stand-in runner; the real one is tested in test_experiment_run.py)
# --------------------------------------------------------------------------------------------


def fake_runner(cell: Cell, plan: ExperimentPlan, work_dir: Path) -> RunRecord:
    """Score a cell with numbers derived from its seed; log the call in the plan's data folder."""
    with open(plan.data_dir / "calls.txt", "a") as calls:
        calls.write(cell.run_id + "\n")
    if (plan.data_dir / f"fail_{cell.run_id}").exists():
        raise KeyboardInterrupt
    value = (cell.seed % 1000) / 1000
    return RunRecord(
        run_id=cell.run_id,
        fold=cell.fold.index,
        repeat=cell.repeat,
        method=cell.method.name,
        model=cell.model,
        flair_setup=cell.flair.label,
        dsc_flair=value,
        dsc_t1=value / 2,
        seed=cell.seed,
        epochs=1,
        best_epoch=1,
        seconds=0.0,
        train_subjects=list(cell.fold.train),
        flair_subjects=list(cell.flair_subjects()),
        validation_subjects=list(cell.fold.validation),
        test_subjects=list(cell.fold.test),
        lambda_trace=[0.5, value],
    )


def _calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls.txt"
    return path.read_text().split() if path.exists() else []


def test_resume_skips_finished(tmp_path: Path) -> None:
    plan = _plan(tmp_path, n_folds=2, repeats=1, flair_setups=["all"])
    cells = plan.cells()
    (tmp_path / f"fail_{cells[2].run_id}").touch()

    with pytest.raises(KeyboardInterrupt):
        experiment.run_experiment(plan, tmp_path / "out", runner=fake_runner)
    assert len(experiment.load_records(tmp_path / "out")) == 2

    (tmp_path / f"fail_{cells[2].run_id}").unlink()
    (tmp_path / "calls.txt").unlink()
    records = experiment.run_experiment(plan, tmp_path / "out", runner=fake_runner)

    assert _calls(tmp_path) == [c.run_id for c in cells[2:]]
    assert len(records) == len(cells)
    with open(tmp_path / "out" / "runs.csv") as table:
        rows = list(csv.DictReader(table))
    assert len(rows) == len(cells)
    assert list(rows[0])[:7] == [
        "fold",
        "repeat",
        "method",
        "model",
        "flair_setup",
        "dsc_flair",
        "dsc_t1",
    ]


def test_resume_rejects_other_plan(tmp_path: Path) -> None:
    plan = _plan(tmp_path, n_folds=2, repeats=1, flair_setups=["all"], methods=["F50-T50"])
    experiment.run_experiment(plan, tmp_path / "out", runner=fake_runner)

    other = _plan(tmp_path, n_folds=2, repeats=1, flair_setups=["all"], seed=5)
    with pytest.raises(WmhsegError, match="different"):
        experiment.run_experiment(other, tmp_path / "out", runner=fake_runner)


def test_parallel_jobs_same_records(tmp_path: Path) -> None:
    plan = _plan(tmp_path, n_folds=2, repeats=1, flair_setups=["all"])

    serial = experiment.run_experiment(plan, tmp_path / "serial", runner=fake_runner)
    parallel = experiment.run_experiment(plan, tmp_path / "parallel", jobs=2, runner=fake_runner)

    assert [(r.run_id, r.dsc_flair) for r in parallel] == [(r.run_id, r.dsc_flair) for r in serial]


def test_report_files_written(tmp_path: Path) -> None:
    plan = _plan(tmp_path, n_folds=2, repeats=1, flair_setups=["all"])
    records = experiment.run_experiment(plan, tmp_path / "out", runner=fake_runner)

    outputs = experiment.write_report(records, tmp_path / "out")

    names = sorted(p.name for p in outputs.paths)
    assert names == ["lambda.png", "summary.csv", "summary.md"]
    assert [r.method for r in outputs.rows] == ["F50-T50", "greedy-T100"]


# --------------------------------------------------------------------------------------------
# Command line (option errors only: training is covered in test_experiment_run.py)
# --------------------------------------------------------------------------------------------


def _empty_subjects(root: Path, count: int) -> Path:
    for i in range(count):
        folder = root / f"sub{i}"
        folder.mkdir(parents=True)
        for name in ("T1.nii.gz", "FLAIR.nii.gz", "wmh.nii.gz"):
            (folder / name).touch()
    return root


def test_cli_rejects_unknown_method(tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    data = _empty_subjects(tmp_path / "data", 2)

    result = run_cli("experiment", data, "--out", tmp_path / "out", "--method", "F50-T50,meta")

    assert result.exit_code == 1
    assert "unknown method 'meta'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_rejects_too_many_folds(tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    data = _empty_subjects(tmp_path / "data", 2)

    result = run_cli("experiment", data, "--out", tmp_path / "out")

    assert result.exit_code == 1
    assert "Use --folds 2 or fewer" in result.stderr
