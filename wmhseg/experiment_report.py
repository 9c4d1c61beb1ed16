"""Summary of a cross-validated experiment: the table in the form of the source's Table 1.

The source is A. Sicilia et al., "Multi-domain learning by meta-learning: taking optimal steps
in multi-domain loss landscapes by inner-loop learning", IEEE ISBI 2021. Its Table 1 lists, per
setup (network and number of training subjects with FLAIR) and weighting method, DSC-F and DSC-T
as mean ± s.d. over runs and two gains against the fixed 50/50 weighting (F50-T50):

* GAIN-µ = Σ over domains of (mean DSC of the method − mean DSC of F50-T50),
* GAIN-σ = Σ over domains of (s.d. of DSC of F50-T50 − s.d. of DSC of the method),

so both are positive when the method is better (higher Dice, smaller spread over runs).
Standard deviations are sample standard deviations (ddof = 1); with one run they are NaN and
print as "–", and so does any gain that needs them.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from rich.table import Table

from wmhseg.io import write_bytes_atomic

REFERENCE_METHOD = "F50-T50"
DOMAINS = ("flair", "t1")
MODEL_LABELS = {"unet": "U-Net", "lw": "LW"}

# Dynamic methods whose λ changes during training, so their λ trace is worth plotting.
DYNAMIC_PREFIXES = ("greedy", "conservative", "Simple")

GroupBy = Literal["run", "repeat"]


@dataclass(frozen=True)
class RunScores:
    """Test Dice of one run (one fold of one repeat) of one method, model and FLAIR setup."""

    fold: int
    repeat: int
    method: str
    model: str
    flair_setup: str
    dsc_flair: float
    dsc_t1: float


@dataclass(frozen=True)
class SummaryRow:
    """One line of the summary table: mean and s.d. of Dice per domain, gains over F50-T50."""

    model: str
    flair_setup: str
    method: str
    n: int
    dsc_flair_mean: float
    dsc_flair_sd: float
    dsc_t1_mean: float
    dsc_t1_sd: float
    gain_mu: float
    gain_sigma: float

    @property
    def setup(self) -> str:
        """Setup label as the source's table writes it, e.g. ``"LW 8F"``."""
        return f"{MODEL_LABELS.get(self.model, self.model)} {self.flair_setup}"


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return math.nan, math.nan
    mean = float(array.mean())
    sd = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return mean, sd


def _group_values(runs: Sequence[RunScores], group_by: GroupBy) -> tuple[list[float], list[float]]:
    """Return the DSC-F and DSC-T values whose mean and s.d. the table reports."""
    if group_by == "run":
        return [r.dsc_flair for r in runs], [r.dsc_t1 for r in runs]

    # One value per repeat: the mean over that repeat's folds, as when a "run" is one whole
    # cross-validation.
    by_repeat: dict[int, list[RunScores]] = {}
    for run in runs:
        by_repeat.setdefault(run.repeat, []).append(run)
    flair = [float(np.mean([r.dsc_flair for r in rs])) for _, rs in sorted(by_repeat.items())]
    t1 = [float(np.mean([r.dsc_t1 for r in rs])) for _, rs in sorted(by_repeat.items())]
    return flair, t1


def _method_order(method: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(method) if method in order else len(order), method)


def summarize(
    runs: Iterable[RunScores],
    *,
    group_by: GroupBy = "run",
    method_order: Sequence[str] = (),
) -> list[SummaryRow]:
    """Build the summary table from per-run scores.

    ``group_by="run"`` takes mean and s.d. over every (fold, repeat) run; ``"repeat"`` first
    averages each repeat over its folds and takes mean and s.d. over repeats. Rows are grouped
    by (model, FLAIR setup); F50-T50 comes first in each group and the other methods follow
    ``method_order``. A group without F50-T50 gets NaN gains.
    """
    groups: dict[tuple[str, str], dict[str, list[RunScores]]] = {}
    for run in runs:
        groups.setdefault((run.model, run.flair_setup), {}).setdefault(run.method, []).append(run)

    order = [REFERENCE_METHOD, *[m for m in method_order if m != REFERENCE_METHOD]]
    rows: list[SummaryRow] = []
    for (model, flair_setup), by_method in sorted(groups.items()):
        stats = {}
        for method, method_runs in by_method.items():
            flair, t1 = _group_values(method_runs, group_by)
            stats[method] = (len(flair), *_mean_sd(flair), *_mean_sd(t1))
        reference = stats.get(REFERENCE_METHOD)
        for method in sorted(stats, key=lambda m: _method_order(m, order)):
            n, f_mean, f_sd, t_mean, t_sd = stats[method]
            if reference is None:
                gain_mu = gain_sigma = math.nan
            else:
                _, rf_mean, rf_sd, rt_mean, rt_sd = reference
                gain_mu = (f_mean - rf_mean) + (t_mean - rt_mean)
                gain_sigma = (rf_sd - f_sd) + (rt_sd - t_sd)
            rows.append(
                SummaryRow(
                    model=model,
                    flair_setup=flair_setup,
                    method=method,
                    n=n,
                    dsc_flair_mean=f_mean,
                    dsc_flair_sd=f_sd,
                    dsc_t1_mean=t_mean,
                    dsc_t1_sd=t_sd,
                    gain_mu=gain_mu,
                    gain_sigma=gain_sigma,
                )
            )
    return rows


def _number(value: float, *, signed: bool = False) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _mean_pm_sd(mean: float, sd: float) -> str:
    return f"{_number(mean)} ± {_number(sd)}"


TABLE_HEADER = ("setup", "method", "n", "DSC-F", "DSC-T", "GAIN-µ", "GAIN-σ")


def table_cells(row: SummaryRow) -> tuple[str, ...]:
    """Format one summary row as the strings of the Markdown and terminal tables."""
    return (
        row.setup,
        row.method,
        str(row.n),
        _mean_pm_sd(row.dsc_flair_mean, row.dsc_flair_sd),
        _mean_pm_sd(row.dsc_t1_mean, row.dsc_t1_sd),
        "" if row.method == REFERENCE_METHOD else _number(row.gain_mu, signed=True),
        "" if row.method == REFERENCE_METHOD else _number(row.gain_sigma, signed=True),
    )


def to_markdown(rows: Sequence[SummaryRow]) -> str:
    """Render the summary as a Markdown table."""
    lines = [
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "|".join("---" for _ in TABLE_HEADER) + "|",
    ]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


SUMMARY_CSV_COLUMNS = (
    "model",
    "flair_setup",
    "method",
    "n",
    "dsc_flair_mean",
    "dsc_flair_sd",
    "dsc_t1_mean",
    "dsc_t1_sd",
    "gain_mu",
    "gain_sigma",
)


def to_csv(rows: Sequence[SummaryRow]) -> str:
    """Render the summary as CSV with full-precision numbers (NaN written as ``nan``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_CSV_COLUMNS)
    for row in rows:
        writer.writerow([getattr(row, column) for column in SUMMARY_CSV_COLUMNS])
    return buffer.getvalue()


def to_rich_table(rows: Sequence[SummaryRow], *, title: str = "") -> Table:
    """Build a Rich table of the summary for printing on a console."""
    table = Table(title=title or None)
    for name in TABLE_HEADER:
        table.add_column(name, justify="left" if name in ("setup", "method") else "right")
    previous_setup = None
    for row in rows:
        if previous_setup is not None and row.setup != previous_setup:
            table.add_section()
        table.add_row(*table_cells(row))
        previous_setup = row.setup
    return table


def write_summary(
    rows: Sequence[SummaryRow], out_dir: Path, *, overwrite: bool = True
) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``summary.csv`` into ``out_dir`` atomically."""
    markdown = write_bytes_atomic(
        out_dir / "summary.md", to_markdown(rows).encode(), overwrite=overwrite
    )
    table = write_bytes_atomic(out_dir / "summary.csv", to_csv(rows).encode(), overwrite=overwrite)
    return markdown, table


def is_dynamic(method: str) -> bool:
    """Tell whether a method changes λ during training (greedy, conservative, Simple)."""
    return method.startswith(DYNAMIC_PREFIXES)


def trace_band(
    traces: Sequence[Sequence[float]],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Return mean, s.d. and run count per step of λ traces of unequal length.

    Runs stop at different steps (early stopping), so step k averages the runs still training
    at step k; the s.d. is 0 where one run remains.
    """
    length = max((len(t) for t in traces), default=0)
    stacked = np.full((len(traces), length), np.nan)
    for i, trace in enumerate(traces):
        stacked[i, : len(trace)] = trace
    count = np.sum(~np.isnan(stacked), axis=0).astype(np.int64)
    mean = np.nanmean(stacked, axis=0) if length else np.zeros(0)
    deviation = stacked - mean
    sd = np.sqrt(np.nansum(deviation**2, axis=0) / np.maximum(count - 1, 1))
    return mean, sd, count


def plot_lambda_traces(
    traces: Mapping[tuple[str, str, str], Sequence[Sequence[float]]],
    path: Path,
    *,
    steps_per_epoch: float | None = None,
    overwrite: bool = True,
) -> Path:
    """Plot λ (the FLAIR weight) over training steps: one panel per setup, mean ± 1 s.d. band.

    ``traces`` maps (model, FLAIR setup, method) to one λ trace per run. With
    ``steps_per_epoch`` the x axis is in epochs instead of steps.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setups = sorted({(model, flair) for model, flair, _ in traces})
    if not setups:
        raise ValueError("no λ traces to plot")
    figure, axes = plt.subplots(
        1, len(setups), figsize=(5.0 * len(setups), 3.6), squeeze=False, sharey=True
    )
    for axis, (model, flair) in zip(axes[0], setups, strict=True):
        methods = sorted(m for mo, fl, m in traces if (mo, fl) == (model, flair))
        for method in methods:
            mean, sd, count = trace_band(traces[(model, flair, method)])
            x = np.arange(1, mean.size + 1, dtype=np.float64)
            if steps_per_epoch:
                x = x / steps_per_epoch
            label = f"{method} (n={int(count.max()) if count.size else 0})"
            (line,) = axis.plot(x, mean, label=label, linewidth=1.2)
            axis.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
        axis.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        axis.set_title(f"{MODEL_LABELS.get(model, model)} {flair}")
        axis.set_xlabel("epoch" if steps_per_epoch else "training step")
        axis.set_ylim(0.0, 1.0)
        axis.legend(fontsize=8, loc="best")
    axes[0][0].set_ylabel("λ (FLAIR loss weight)")
    figure.tight_layout()

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return write_bytes_atomic(path, buffer.getvalue(), overwrite=overwrite)
