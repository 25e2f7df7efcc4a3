"""``fedseg data``: validate a manifest, synthesise hospitals, write manifests for scan folders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from data_specs.errors import DataSpecError

if TYPE_CHECKING:
    from data_specs.manifests.validate import ValidationReport

app = typer.Typer(no_args_is_help=True, help="Describe, check and synthesise datasets.")


def _fail(exc: DataSpecError) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)


def parse_labels(text: str) -> dict[str, str]:
    """``"0=background,1=RV"`` -> ``{"0": "background", "1": "RV"}``.

    Raises:
        typer.BadParameter: an item is not ``value=name``.
    """
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        value, sep, name = item.partition("=")
        if not sep or not value.strip().isdigit() or not name.strip():
            raise typer.BadParameter(f"expected items like '1=liver', found {item!r}")
        labels[str(int(value))] = name.strip()
    return labels


@app.command("validate")
def validate(
    manifest: Annotated[Path, typer.Argument(help="The dataset.json to check.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    workers: Annotated[
        int | None, typer.Option(help="Processes reading files (default: CPU count, at most 8).")
    ] = None,
) -> None:
    """Check every file a manifest lists; exit 1 if anything is wrong. Modifies nothing."""
    from data_specs.manifests.validate import validate_manifest

    report = validate_manifest(manifest, workers=workers)
    if json_output:
        typer.echo(report.model_dump_json(indent=2))
    else:
        _print_report(report)
    raise typer.Exit(0 if report.ok else 1)


def _print_report(report: ValidationReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = f"{report.cases} cases, {report.files} files, {report.seconds:.1f} s"
    _print_histograms(console, report)
    for w in report.warnings:
        console.print(f"[yellow]warning[/yellow] {w.file}: expected {w.expected}, found {w.found}")
    if report.ok:
        console.print(f"[green]OK[/green] {report.manifest}: {summary}")
        return
    table = Table(title=f"{report.manifest}: {len(report.problems)} problem(s)")
    for column in ("file", "check", "expected", "found"):
        table.add_column(column, overflow="fold")
    for p in report.problems:
        table.add_row(p.file, str(p.check), p.expected, p.found)
    console.print(table)
    console.print(f"[red]FAILED[/red] {summary}")


def _print_histograms(console: Any, report: ValidationReport, most: int = 20) -> None:
    """Each mask's stored values and voxel counts; grouped by value set when there are many."""
    if len(report.histograms) <= most:
        for name, hist in report.histograms.items():
            console.print(f"{name}: values {hist}", markup=False, highlight=False)
        return
    groups: dict[tuple[int, ...], int] = {}
    for hist in report.histograms.values():
        key = tuple(sorted(hist))
        groups[key] = groups.get(key, 0) + 1
    for values, count in sorted(groups.items(), key=lambda kv: -kv[1]):
        console.print(f"{count} mask(s) with values {list(values)}", markup=False)
    console.print("(each mask's histogram: --json)")


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder.")],
    sites: Annotated[int, typer.Option(help="Federated sites (site_1..site_N).")] = 3,
    cases: Annotated[int, typer.Option(help="Cases per site (>= 3).")] = 20,
    dims: Annotated[int, typer.Option(help="2 or 3.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of everything.")] = 0,
    size: Annotated[int, typer.Option(help="Voxels per axis.")] = 32,
    classes: Annotated[int, typer.Option(help="Foreground classes, 1..3.")] = 3,
    outside: Annotated[int, typer.Option(help="Extra outside hospitals (outside_1..K).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace existing synthetic sites.")] = False,
    rgb: Annotated[
        bool, typer.Option(help="2D RGB PNG photographs, a colour cast per site (dims 2).")
    ] = False,
    outside_shift: Annotated[
        bool,
        typer.Option(
            help="Strong shift for outside hospitals: curve, inversion, blur, resolution."
        ),
    ] = False,
) -> None:
    """Write synthetic hospitals, each with its own scanner, NIfTI pairs and dataset.json."""
    from data_specs.sources.synth import synthesize

    try:
        paths = synthesize(
            out,
            sites=sites,
            cases=cases,
            dims=dims,
            seed=seed,
            size=size,
            classes=classes,
            outside=outside,
            overwrite=overwrite,
            rgb=rgb,
            outside_shift=outside_shift,
        )
    except DataSpecError as exc:
        _fail(exc)
    for path in paths:
        typer.echo(str(path))


@app.command("init-manifest")
def init_manifest(
    data_dir: Annotated[Path, typer.Argument(help="Folder of the hospital's scans.")],
    site_id: Annotated[str, typer.Option(help="This hospital's site id.")],
    labels: Annotated[str, typer.Option(help="Classes, e.g. '0=background,1=liver'.")],
    out: Annotated[Path, typer.Option(help="Manifest to write.")] = Path("dataset.json"),
    image_glob: Annotated[str, typer.Option(help="Image pattern under DATA_DIR.")] = "*.nii.gz",
    label_suffix: Annotated[
        str, typer.Option(help="Label = image stem + suffix ('_mask.png' sets the extension too).")
    ] = "_gt",
    image_pattern: Annotated[
        str | None,
        typer.Option(
            help="Regex over image paths under DATA_DIR capturing the case key, e.g. "
            "'(?P<case>.+)_scan\\.tif'; a 'channel' group gathers channel files."
        ),
    ] = None,
    label_pattern: Annotated[
        str | None,
        typer.Option(
            help="Regex over label paths capturing the same key, e.g. "
            "'(?P<case>.+)_annotation\\.gif'."
        ),
    ] = None,
    label_map: Annotated[
        str | None,
        typer.Option(help="Stored label value -> class, e.g. '255=1' or '0=1,255=0' (inverted)."),
    ] = None,
    binarize: Annotated[
        bool, typer.Option("--binarize", help="Every non-zero stored label value is class 1.")
    ] = False,
    nnunet: Annotated[
        bool,
        typer.Option(
            "--nnunet", help="nnU-Net layout: imagesTr/<case>_0000.<ext>, labelsTr/<case>.<ext>."
        ),
    ] = False,
    label_dir: Annotated[Path | None, typer.Option(help="Folder of labels.")] = None,
    dims: Annotated[int, typer.Option(help="Task dims: 2 (slices) or 3.")] = 2,
    name: Annotated[str | None, typer.Option(help="Dataset name.")] = None,
    modality: Annotated[
        str, typer.Option(help="Channel name(s), comma separated, e.g. 'FLAIR,T1c'.")
    ] = "MRI",
    val_frac: Annotated[float, typer.Option(help="Validation fraction.")] = 0.2,
    test_frac: Annotated[float, typer.Option(help="Test fraction.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    group_pattern: Annotated[
        str | None, typer.Option(help="Regex grouping one patient's scans, e.g. 'patient\\d+'.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing manifest.")] = False,
) -> None:
    """Write a dataset.json for a folder of scans (labels found by name)."""
    from data_specs.manifests.manifest import parse_manifest, save_manifest
    from data_specs.sources.acdc import folder_manifest
    from data_specs.sources.folder_pairing import NNUNET_IMAGE_PATTERN, NNUNET_LABEL_PATTERN

    if nnunet:
        image_pattern = image_pattern or NNUNET_IMAGE_PATTERN
        label_pattern = label_pattern or NNUNET_LABEL_PATTERN

    if out.exists() and not overwrite:
        _fail(DataSpecError(f"{out}: expected no manifest there, found one; pass --overwrite"))
    try:
        manifest = folder_manifest(
            data_dir,
            out=out,
            site_id=site_id,
            labels=parse_labels(labels),
            spatial_dims=dims,
            image_glob=image_glob,
            label_suffix=label_suffix,
            label_dir=label_dir,
            name=name,
            modality=modality,
            val_frac=val_frac,
            test_frac=test_frac,
            seed=seed,
            group_pattern=group_pattern,
            image_pattern=image_pattern,
            label_pattern=label_pattern,
        )
        if label_map or binarize:
            stored = {k: int(v) for k, v in parse_labels(label_map or "").items()}
            manifest = manifest.model_copy(
                update={"label_map": stored or None, "binarize": binarize}
            )
            manifest = parse_manifest(manifest.model_dump(), where=str(out))
        save_manifest(manifest, out)
    except (DataSpecError, ValueError) as exc:
        _fail(DataSpecError(str(exc)))
    counts = {s: len(list(manifest.iter_cases(s))) for s in manifest.declared_splits()}
    typer.echo(f"{out}: {counts}; check it with `fedseg data validate {out}`")


@app.command("acdc-manifests")
def acdc_manifests_command(
    acdc_dir: Annotated[Path, typer.Argument(help="The ACDC folder (frames.csv and NIfTI).")],
    out: Annotated[Path, typer.Argument(help="Output folder: one acdc_<group>/ per site.")],
    val_frac: Annotated[float, typer.Option(help="Validation fraction of patients.")] = 0.2,
    test_frac: Annotated[float, typer.Option(help="Test fraction of patients.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    dims: Annotated[int, typer.Option(help="Task dims: 2 (slices) or 3.")] = 2,
) -> None:
    """Write one manifest per ACDC diagnosis group (5 sites), split by patient."""
    from data_specs.sources.acdc import acdc_manifests, write_manifests

    try:
        manifests = acdc_manifests(
            acdc_dir, val_frac=val_frac, test_frac=test_frac, seed=seed, spatial_dims=dims
        )
        paths = write_manifests(manifests, out)
    except (DataSpecError, ValueError) as exc:
        _fail(DataSpecError(str(exc)))
    for path in paths:
        typer.echo(str(path))
