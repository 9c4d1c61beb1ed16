"""The `wmhseg evaluate` command."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from wmhseg import evaluation, io
from wmhseg.cli.app import app, console, handle_errors
from wmhseg.errors import InputImageError


def _collect_pairs(
    paths: list[Path], pairs_csv: Path | None, prediction_dir: Path | None, truth_dir: Path | None
) -> list[tuple[Path, Path]]:
    pairs = evaluation.pairs_from_arguments(paths)
    if pairs_csv is not None:
        pairs += evaluation.pairs_from_csv(pairs_csv)
    if (prediction_dir is None) != (truth_dir is None):
        raise InputImageError(None, "give --pred-dir and --truth-dir together.")
    if prediction_dir is not None and truth_dir is not None:
        pairs += evaluation.pairs_from_folders(prediction_dir, truth_dir)
    if not pairs:
        raise InputImageError(
            None,
            "nothing to evaluate; give PREDICTION TRUTH pairs, --pairs or --pred-dir/--truth-dir.",
        )
    return pairs


def _number(value: float, digits: int = 3) -> str:
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def _summary_table(results: list[evaluation.PairResult]) -> Table:
    table = Table(title=f"WMH segmentation scores over {len(results)} pair(s)")
    for column in ("metric", "mean", "sd", "median", "infinite"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for summary in evaluation.summarize(results):
        table.add_row(
            summary.name,
            _number(summary.mean),
            _number(summary.sd),
            _number(summary.median),
            str(summary.n_infinite),
        )
    return table


@app.command()
@handle_errors
def evaluate(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="PREDICTION TRUTH pairs of NIfTI files. Truth labels: 0 background, 1 WMH, "
            "2 ignored.",
            show_default=False,
        ),
    ] = None,
    pairs_csv: Annotated[
        Path | None,
        typer.Option(
            "--pairs",
            help="CSV file with 'prediction' and 'truth' columns (paths relative to the file).",
        ),
    ] = None,
    prediction_dir: Annotated[
        Path | None,
        typer.Option(
            "--pred-dir",
            help="Folder of predictions, matched to --truth-dir files by name or <name>_wmh.",
        ),
    ] = None,
    truth_dir: Annotated[
        Path | None, typer.Option("--truth-dir", help="Folder of truth label files.")
    ] = None,
    csv_path: Annotated[
        Path | None,
        typer.Option("--csv", help="Write one row per pair to this CSV file (else to stdout)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --csv file.")
    ] = False,
) -> None:
    """Score predicted WMH masks against truth masks.

    Metrics: Dice, HD95 (mm), absolute volume difference (%), lesion-wise recall and F1.

    Empty masks never give NaN: Dice is 1 when both masks are empty and 0 when one is;
    HD95 and AVD are 0 when both are empty and inf when only one (or only the truth) is.
    """
    pairs = _collect_pairs(paths or [], pairs_csv, prediction_dir, truth_dir)
    if csv_path is not None:
        # Fail before scoring if the CSV cannot be written.
        io.check_can_write(csv_path, overwrite=overwrite)
        io.prepare_output_dir(csv_path.parent)

    with console.status("Scoring predictions...") as status:

        def report(result: evaluation.PairResult) -> None:
            status.update(f"Scored {result.prediction.name}: Dice {result.scores.dice:.3f}")

        results = evaluation.evaluate_pairs(pairs, on_pair_done=report)

    console.print(_summary_table(results))
    if csv_path is None:
        typer.echo(evaluation.results_to_csv(results), nl=False)
    else:
        evaluation.write_results_csv(results, csv_path, overwrite=overwrite)
        console.print(f"Scores written to {csv_path}")
