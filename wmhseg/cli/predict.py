"""The `wmhseg predict` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from wmhseg import inference, io
from wmhseg.cli.app import app, console, handle_errors
from wmhseg.errors import InputImageError


def _failure_table(failures: list[tuple[Path, str]]) -> Table:
    table = Table(title=f"{len(failures)} image(s) failed", title_style="bold red")
    # Long paths are folded, not cut with an ellipsis, so the user sees which file failed.
    table.add_column("image", overflow="fold")
    table.add_column("error", overflow="fold")
    for path, message in failures:
        table.add_row(str(path), message)
    return table


@app.command()
@handle_errors
def predict(
    images: Annotated[
        list[Path],
        typer.Argument(
            help="T1-weighted or FLAIR NIfTI images, one subject each.", show_default=False
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created if missing).")],
    modality: Annotated[
        str | None,
        typer.Option(
            "--modality",
            "-m",
            help="t1 or flair for every image. Default: from the BIDS suffix (_T1w, _FLAIR) or "
            "the file name.",
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", help="Training run folder or checkpoint file. Default: shipped model."
        ),
    ] = None,
    skip: Annotated[
        str | None,
        typer.Option(
            "--skip",
            help="Comma-separated preprocessing stages the images already had: "
            "n4, skullstrip, whitestripe. Skull-stripped images are also detected.",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold", min=0.0, max=1.0, help="Probability threshold. Default: the model's."
        ),
    ] = None,
    save_probabilities: Annotated[
        bool,
        typer.Option("--save-probabilities", help="Also write <name>_wmh_prob.nii.gz (float32)."),
    ] = False,
    device: Annotated[
        str, typer.Option("--device", help="auto (GPU if available), cpu or cuda.")
    ] = "auto",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Axial slices per network call.")
    ] = 16,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing outputs of these images.")
    ] = False,
    use_qform: Annotated[
        bool,
        typer.Option("--use-qform", help="Use the qform of images whose sform is sheared."),
    ] = False,
    no_qc: Annotated[bool, typer.Option("--no-qc", help="Do not write QC pictures.")] = False,
) -> None:
    """Predict WMH masks on each image's own grid, with a QC picture and a stats CSV row."""
    options = inference.PredictOptions(
        modality=None if modality is None else inference.infer_modality(images[0], modality)[0],
        skip=inference.parse_skip(skip),
        threshold=threshold,
        save_probabilities=save_probabilities,
        overwrite=overwrite,
        allow_qform=use_qform,
        batch_size=batch_size,
        qc_png=not no_qc,
    )
    inference.check_unique_names(images)
    # With every input missing there is nothing to do: stop before creating the output folder.
    if not any(image.exists() for image in images):
        raise InputImageError(images[0], "file not found. Check the path and its spelling.")
    io.prepare_output_dir(out)

    predictor = inference.load_predictor(model, device=device)
    console.print(
        f"Model {predictor.info.path} ({predictor.info.model_name}) on device {predictor.device}"
    )
    if model is None:
        console.print(
            "[yellow]Note:[/yellow] the shipped model is a demonstration model trained on two "
            "MS patients; its masks are not fit for measurements. Train a model on your own "
            "labelled data (wmhseg train) and pass it with --model. See docs/model_card.md."
        )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("Predicting", total=len(images))

        def started(path: Path) -> None:
            progress.update(task, description=f"Predicting {path.name}")

        def finished(path: Path, result: inference.PredictionResult | None) -> None:
            progress.advance(task)
            if result is not None:
                stages = ", ".join(result.stages_run) or "none"
                progress.console.print(
                    f"{path.name}: WMH {result.wmh_volume_ml:.2f} mL, "
                    f"{result.lesion_count} {'lesion' if result.lesion_count == 1 else 'lesions'} "
                    f"(preprocessing run: {stages}) → "
                    f"{result.outputs['mask']}"
                )

        batch = inference.predict_images(
            images, predictor, out, options, on_image_start=started, on_image_done=finished
        )

    stats_path = out / inference.STATS_FILE_NAME
    if stats_path.is_file():
        console.print(f"Statistics: {stats_path}")
    if batch.failures:
        console.print(_failure_table(batch.failures))
        raise typer.Exit(code=1)
