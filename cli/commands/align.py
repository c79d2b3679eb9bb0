"""`align SRC DST`: detect 5 landmarks and write aligned crops for an identity-folder tree."""

import sys

import click


@click.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--size", default="112x96", show_default=True,
              help="Crop HEIGHTxWIDTH: 112x96 (SphereFace) or 112x112 (ArcFace).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes, each running MTCNN on one thread (default: all cores, "
                   "at most one per 500 images).")
@click.option("--landmarks-out", type=click.Path(dir_okay=False), default=None,
              help="Landmarks file to write (default DST/landmarks.txt; .gz compresses).")
@click.option("--from-landmarks", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Align from this landmarks file instead of detecting faces.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Per-image report (default DST/alignment.csv).")
def align(src, dst, size, workers, landmarks_out, from_landmarks, csv_path):
    """Align every image under SRC onto the 5-point template, same layout under DST.

    One CSV row per file (box, 5 landmarks, confidence, status ok / fallback / unreadable,
    reason); interrupted runs resume where they stopped. Unreadable files do not stop the
    run; they are listed at the end and the exit code is then 1.
    """
    from keras_sphereface.alignment.folder import align_folder, read_alignment_csv

    summary = align_folder(
        src, dst, size=size, workers=workers, csv_path=csv_path, landmarks_out=landmarks_out,
        from_landmarks=from_landmarks,
        progress=lambda total: click.progressbar(length=total, label="Aligning", file=sys.stderr),
        command="python cli/main.py align " + " ".join(sys.argv[2:]),
    )
    click.echo(
        f"ok {summary['ok']}, fallback {summary['fallback']}, unreadable {summary['unreadable']} "
        f"({summary['resumed']} done by an earlier run)"
    )
    click.echo(f"report: {summary['csv']}\nlandmarks: {summary['landmarks']}")
    if summary["unreadable"]:
        unreadable = [r for r in read_alignment_csv(summary["csv"]) if r.status == "unreadable"]
        click.echo(f"Error: {len(unreadable)} files under {src} are not readable images "
                   f"(no crop written):", err=True)
        for record in unreadable[:20]:
            click.echo(f"  {record.path}: {record.reason}", err=True)
        if len(unreadable) > 20:
            click.echo(f"  ... and {len(unreadable) - 20} more (see the report)", err=True)
        sys.exit(1)
