"""The ``roadwork`` command line (Typer + rich)."""

from __future__ import annotations

import enum
import functools
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

import typer

from roadwork.config import (
    AUGMENT_PRESETS,
    NEAR_DUPLICATE_SIMILARITY,
    VIEW_PLANS,
    AdaptConfig,
    BackboneTrainingConfig,
    DataConfig,
    DetectorTrainingConfig,
    ExpertsConfig,
    ServeConfig,
    TtaConfig,
    VlmTrainingConfig,
)
from roadwork.progress import console

app = typer.Typer(
    help="Train, evaluate and serve binary roadwork classifiers for street-level photos.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])

DataOpt = Annotated[str, typer.Option("--data", help="Dataset: a folder with metadata.csv/.jsonl, a parquet file or folder, or hf:<id>[:split].")]
CacheOpt = Annotated[Path | None, typer.Option("--cache-dir", envvar="ROADWORK_CACHE", help="Feature cache folder (default: $ROADWORK_CACHE or ~/.cache/roadwork).")]
BackboneOpt = Annotated[str, typer.Option("--backbone", help="Backbone name (see `roadwork backbones`) or hf:<model id or path>.")]
WeightsOpt = Annotated[str | None, typer.Option("--weights", help="Local weights (folder saved with save_pretrained, or a checkpoint file) instead of the default download.")]
ConfigOpt = Annotated[list[Path] | None, typer.Option("--config", help="YAML configuration file (see configs/); repeat to layer files, later ones win.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a configuration value, e.g. --set model.d_model=256 (repeatable).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue a killed run in OUT from its last epoch.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace what the output already holds (refused without it; never when it holds an input).")]
TargetGpsOpt = Annotated[Path | None, typer.Option("--target-gps", help="GPS-weighted sampling: CSV of latitude/longitude rows where served photos come from (sets sampling.target).")]
TargetDataOpt = Annotated[str | None, typer.Option("--target-data", help="GPS-weighted sampling: a dataset whose GPS columns are the targets (sets sampling.target).")]


def _choices(name: str, values: tuple[str, ...]) -> type[enum.StrEnum]:
    """A Typer choice type over a setting's allowed values (config.py is their one home)."""
    return enum.StrEnum(name, [(value, value) for value in values])  # type: ignore[return-value]


ViewPlan = _choices("ViewPlan", VIEW_PLANS)
TtaMode = _choices("TtaMode", get_args(TtaConfig.model_fields["mode"].annotation))
Preset = _choices("Preset", AUGMENT_PRESETS)
TTA, SERVE, DATA = TtaConfig(), ServeConfig(), DataConfig()   # the defaults the options show
VIEWS, TTA_MODE = ViewPlan(DATA.views), TtaMode(TTA.mode)
PRESET = Preset(BackboneTrainingConfig().augment)

ViewsOpt = Annotated[ViewPlan, typer.Option("--views", help="View plan: auto (tiles only for large photos), seed12 (the plan's 12 views) or global.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto (cuda when available).")]


TtaOpt = Annotated[TtaMode, typer.Option("--tta", help="Test-time augmentation: none, plain (mean over the plan's fixed transforms of each photo) or foods (keep the copies closest to the training features, softmax-weighted). It multiplies the backbone's cost.")]
TtaCountOpt = Annotated[int, typer.Option("--tta-augmentations", help="Copies per photo, the photo itself included (2-16).")]
TtaKeepOpt = Annotated[float, typer.Option("--tta-keep", help="foods: share of the copies kept, closest first.")]
TtaTemperatureOpt = Annotated[float, typer.Option("--tta-temperature", help="foods: weights are softmax(-Mahalanobis distance / temperature).")]


def _friendly(func: F) -> F:
    """Turn input errors into a one-line message and exit code 2 instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from roadwork.errors import RoadworkError

        try:
            return func(*args, **kwargs)
        except (RoadworkError, FileNotFoundError) as error:
            console.print(f"[bold red]error:[/] {error}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _device(name: str) -> str:
    """auto, cpu, cuda or cuda:N, checked before any work: a typo or a missing GPU is one clear line."""
    import re

    import torch

    from roadwork.errors import RoadworkError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise RoadworkError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise RoadworkError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU here (use --device cpu)")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise RoadworkError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return name


def _tta(mode: TtaMode, augmentations: int, keep: float, temperature: float) -> Any:
    from roadwork.config import from_options

    return from_options(TtaConfig, "tta", mode=str(mode), augmentations=augmentations, keep=keep,
                        temperature=temperature)


def _target(target_gps: Path | None, target_data: str | None) -> str | None:
    from roadwork.errors import RoadworkError

    if target_gps is not None and target_data is not None:
        raise RoadworkError("give --target-gps or --target-data, not both")
    return str(target_gps) if target_gps is not None else target_data


def _training_config(files: list[Path] | None, overrides: list[str] | None, options: dict[str, Any], *,
                     target: str | None = None) -> Any:
    """--config files, then --set overrides, then the named options that were given. The GPS target is
    a path or dataset name, set as it is (not read as YAML like a --set value)."""
    from roadwork.config import load_config

    extra = list(overrides or []) + [f"{key}={value}" for key, value in options.items() if value is not None]
    config = load_config(files, extra)
    if target is not None:
        config.sampling.target = target
    return config


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Libraries' own chatter (weight-loading bars, deprecation notes) drowns the progress that matters.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not verbose:
        warnings.filterwarnings("ignore", module=r"lightning\..*")


@app.command()
def backbones() -> None:
    """List the backbone names `--backbone` accepts."""
    from roadwork.backbones.base import list_backbones

    for name in list_backbones():
        typer.echo(name)


@app.command()
@_friendly
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write (images/ and metadata.csv).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images (half of them roadwork).")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed writes identical files.")] = 0,
    width: Annotated[int, typer.Option("--width", min=64, max=8192, help="Image width in pixels.")] = 640,
    height: Annotated[int, typer.Option("--height", min=64, max=8192, help="Image height in pixels.")] = 480,
    frames_per_drive: Annotated[int, typer.Option("--frames-per-drive", min=1, help="Consecutive, strongly correlated frames per drive (written with a `group` column); 1 = independent photos.")] = 1,
    depth: Annotated[bool, typer.Option("--depth", help="Write each image's true depth map too (depth/*.png, metres x 256 in 16 bits); about twice the drawing time.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Render a synthetic street-scene dataset (procedural; no assets, no network)."""
    from roadwork.data.synth import write_synthetic_dataset
    from roadwork.progress import progress_bar
    from roadwork.storage import check_output, write_folder

    check_output(out, "dataset folder", replace=overwrite)

    with progress_bar(n, "synth") as advance:
        done = [0]

        def report(count: int) -> None:
            advance(count - done[0])
            done[0] = count

        write_folder(out, lambda staging: write_synthetic_dataset(   # swapped in whole: old or new, never a mix
            staging, n=n, seed=seed, width=width, height=height, progress=report, frames_per_drive=frames_per_drive,
            depth=depth))
    console.print(f"wrote {n} images to {out}")


@app.command()
@_friendly
def extract(
    data: DataOpt,
    backbone: BackboneOpt = DATA.backbone,
    weights: WeightsOpt = None,
    views: ViewsOpt = VIEWS,
    input_size: Annotated[int | None, typer.Option("--input-size", min=32, max=2048, help="View side in pixels (default: the backbone's own).")] = None,
    cache_dir: CacheOpt = None,
    device: DeviceOpt = "auto",
    workers: Annotated[int | None, typer.Option("--workers", min=0, help="Decoding worker processes (default: one per spare core, at most 8; 0 decodes in the main process).")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per backbone batch.")] = 16,
) -> None:
    """Fill the feature cache for DATA (already cached images are skipped)."""
    from roadwork.backbones.base import BackboneSpec, create_backbone
    from roadwork.data.sources import load_samples
    from roadwork.features.extract import extract_features
    from roadwork.features.source import BackboneSource

    samples = load_samples(data, require_labels=False)
    model = create_backbone(backbone, weights=weights, device=_device(device), input_size=input_size)
    spec = BackboneSpec.resolve(backbone, weights=weights, input_size=input_size, views=views.value)
    store = BackboneSource(spec).store(cache_dir, model.device)
    result = extract_features(samples, model, views.value, store, images_per_batch=batch, num_workers=workers)
    summary = {
        "images": len(samples), "extracted": result.extracted, "cached": result.cached,
        "failed": len(result.failures), "views": result.views, "seconds": round(result.seconds, 2),
        "images_per_s": round(result.images_per_second, 2), "views_per_s": round(result.views_per_second, 2),
        "store": str(store.root),
    }
    for name, reason in list(result.failures.items())[:20]:
        console.print(f"[yellow]skipped[/] {name}: {reason}", highlight=False)
    typer.echo(json.dumps(summary))


@app.command("augment-preview")
@_friendly
def augment_preview(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")],
    preset: Annotated[Preset, typer.Option("--preset", help="Augmentation preset.")] = PRESET,
    n: Annotated[int, typer.Option("--n", min=1, max=64, help="Number of photos (the first N of DATA).")] = 4,
    copies: Annotated[int, typer.Option("--copies", min=1, max=16, help="Augmented rows per photo.")] = 3,
    views: ViewsOpt = VIEWS,
    input_size: Annotated[int, typer.Option("--input-size", min=32, max=2048, help="View side in pixels before the preview shrinks it.")] = 224,
    seed: Annotated[int, typer.Option("--seed", help="Random seed for the augmentation draws.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a sheet of original views and their per-view augmentations, to check a preset by eye."""
    import io

    import torch
    from PIL import Image

    from roadwork.data.augment import ViewAugmenter, preview_grid
    from roadwork.data.sources import load_samples
    from roadwork.data.views import image_views
    from roadwork.storage import atomic_write_bytes, check_output

    check_output(out, "preview file", replace=overwrite, file=True)
    try:
        augmenter = ViewAugmenter(str(preset))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--preset") from None
    torch.manual_seed(seed)
    samples = load_samples(data, require_labels=False)[:n]
    photos = [image_views(s.read_bytes(), views.value, input_size, source=s.file_name) for s in samples]
    sheet = preview_grid(photos, augmenter, copies)
    buffer = io.BytesIO()
    Image.fromarray(sheet.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())
    console.print(f"wrote {out}: {len(photos)} photos, 1 original and {copies} augmented rows each ({preset})")


@app.command()
@_friendly
def train(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Run folder: bundle/, metrics.json, checkpoints/, logs/.")],
    val_data: Annotated[str | None, typer.Option("--val-data", help="Separate validation dataset (default: a stratified split of DATA).")] = None,
    add_data: Annotated[list[str] | None, typer.Option("--add-data", help="More labelled training data merged into DATA (e.g. labelled `roadwork active` picks); repeatable.")] = None,
    val_fraction: Annotated[float | None, typer.Option("--val-fraction", help="Fraction of DATA's groups held out by a single split, and inside each fold (default 0.15).")] = None,
    folds: Annotated[int | None, typer.Option("--folds", min=1, help="K grouped folds: out-of-fold validation of every photo, the K heads served together (default 5; 1 = one split).")] = None,
    group_column: Annotated[str | None, typer.Option("--group-column", help="Column whose equal values must stay on one side of every split (default: group/sequence/drive/session/video/trip, else near-duplicate photos).")] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    backbone: Annotated[str | None, typer.Option("--backbone", help="Backbone name (overrides data.backbone).")] = None,
    backbone_training: Annotated[str | None, typer.Option("--backbone-training", help="auto, frozen, last_blocks, lora, dora or full (overrides backbone_training.mode).")] = None,
    cache_dir: CacheOpt = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Maximum epochs (overrides optim.epochs).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (overrides seed).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run in OUT: finished parts are kept, interrupted fits continue from their last epoch.")] = False,
    overwrite: OverwriteOpt = False,
    target_gps: TargetGpsOpt = None,
    target_data: TargetDataOpt = None,
    devices: Annotated[int | None, typer.Option("--devices", min=1, help="Processes to train with (GPUs, or CPU processes); more than 1 needs --strategy ddp.")] = None,
    strategy: Annotated[str | None, typer.Option("--strategy", help="auto or ddp (Lightning's DistributedDataParallel).")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Train heads on backbone features (frozen and cached, or from a backbone fine-tuned first), validated on unseen groups of photos, and write a bundle."""
    from roadwork.distributed import is_main
    from roadwork.train.run import train as run_training

    cfg = _training_config(config, overrides, {
        "data.backbone": backbone, "backbone_training.mode": backbone_training, "optim.epochs": epochs, "seed": seed,
        "validation.fraction": val_fraction, "validation.folds": folds, "validation.groups": group_column,
        "trainer.devices": devices, "trainer.strategy": strategy}, target=_target(target_gps, target_data))
    metrics = run_training(data, out, cfg, val_data=val_data, add_data=add_data or (), cache_dir=cache_dir,
                           device=_device(device), resume=resume, overwrite=overwrite)
    if not is_main():   # ddp: process 0 reports
        return
    groups = metrics["groups"]
    console.print(f"groups: {groups['groups']} from {groups['rows']} photos ({groups['source']})", highlight=False)
    for name, score in metrics["candidates"].items():
        low, high = score["mcc_ci95"]
        console.print(f"  {name:9s} held-out MCC {score['mcc']:.3f} [{low:.3f}, {high:.3f}]  AUROC {score['auroc']:.3f}",
                      highlight=False)
    val = metrics["validation"]
    console.print(f"served head: {metrics['chosen_head']}; validation MCC {val['mcc']:.3f} (95% CI "
                  f"{val['ci95']['mcc'][0]:.3f}-{val['ci95']['mcc'][1]:.3f}), accuracy {val['accuracy']:.3f}, "
                  f"AUROC {val['auroc']:.3f}, n={val['n']}, {metrics['timing_s']['total']:.0f} s", highlight=False)
    console.print(f"  ({val['estimate']}; inputs: {val['inputs']})", highlight=False)
    evidence = val["evidence"]
    console.print(f"  decided by {evidence['groups']} groups (effective {evidence['effective_groups']}; "
                  f"{evidence['groups_with_roadwork']} with roadwork); per-fold MCC "
                  f"{', '.join('one class' if m is None else f'{m:.2f}' for m in evidence['fold_mcc'])}; interval from the "
                  f"{evidence['mcc_ci95_from']}", highlight=False)
    if evidence["few_groups"]:
        console.print("[yellow]warning:[/] few independent groups decide this estimate: photos from other drives "
                      "or cities may score far from it", highlight=False)
    console.print(f"bundle written to {out / 'bundle'}")


@app.command("gps-report")
@_friendly
def gps_report(
    data: DataOpt,
    target_gps: TargetGpsOpt = None,
    target_data: TargetDataOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    batches: Annotated[int, typer.Option("--batches", min=1, help="Batches to draw, as the trainer would.")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Photos per batch.")] = 32,
    strict: Annotated[bool, typer.Option("--strict", help="Exit with an error when the targets are missed.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the report as JSON here.")] = None,
) -> None:
    """Check GPS-weighted sampling before training: how near to the target regions the drawn photos are, against the sampling.target_* goals, and which weights would meet them."""
    from roadwork.data.sources import load_samples
    from roadwork.storage import atomic_write_json
    from roadwork.train.sampling import GpsSampling, check_report, describe_report

    cfg = _training_config(config, overrides, {"sampling.strict": True if strict else None},
                           target=_target(target_gps, target_data))
    samples = load_samples(data)
    report = GpsSampling.build(samples, cfg.sampling, cfg.seed).report(cfg.sampling, batches=batches,
                                                                      batch_size=batch_size, seed=cfg.seed)
    console.print(describe_report(report), highlight=False, soft_wrap=True)
    if out is not None:
        atomic_write_json(out, report)
    check_report(report, cfg.sampling)
    if report["suggested_weights"]:
        console.print(f"  weights that would meet them: --set sampling.weights='{report['suggested_weights']}'",
                      highlight=False)


@app.command()
@_friendly
def evaluate(
    bundle: Annotated[list[Path], typer.Option(
        "--bundle", help="Bundle folder written by `roadwork train` (or an ONNX export); repeat to compare "
                         "several on the same photos, the first being the reference.")],
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Report folder: metrics.json, predictions.csv, report.html.")],
    cache_dir: CacheOpt = None,
    device: DeviceOpt = "auto",
    resamples: Annotated[int, typer.Option(min=100, help="Bootstrap resamples for every interval.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and the reward simulation.")] = 0,
    tta: TtaOpt = TTA_MODE,
    tta_augmentations: TtaCountOpt = TTA.augmentations,
    tta_keep: TtaKeepOpt = TTA.keep,
    tta_temperature: TtaTemperatureOpt = TTA.temperature,
    overwrite: OverwriteOpt = False,
) -> None:
    """Score bundles on a labelled dataset: metrics with intervals, slices, reward, an HTML report."""
    from roadwork.evaluate.run import evaluate as run_evaluation

    report = run_evaluation(bundle, data, out, cache_dir=cache_dir, device=_device(device), resamples=resamples,
                            seed=seed, tta=_tta(tta, tta_augmentations, tta_keep, tta_temperature),
                            overwrite=overwrite)
    for model in [report, *report.get("compared", [])]:
        auroc = "n/a (one class)" if model["auroc"] is None else f"{model['auroc']:.3f}"
        low, high = model["ci95"]["mcc"]
        console.print(f"{model['name']}: test MCC {model['mcc']:.3f} [{low:.3f}, {high:.3f}]  accuracy "
                      f"{model['accuracy']:.3f}  AUROC {auroc}  ECE {model['calibration']['ece']:.3f}  n={model['n']}",
                      highlight=False, soft_wrap=True)
    for comparison in report.get("comparisons", []):
        interval = comparison["ci95"]
        shown = "n/a" if interval is None else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"
        console.print(f"  {comparison['b']} - {comparison['a']}: MCC {comparison['mcc_difference']:+.3f} {shown} "
                      "(paired bootstrap)", highlight=False)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print(f"report: {out / 'report.html'}", highlight=False)
    typer.echo(json.dumps({k: report[k] for k in ("mcc", "accuracy", "auroc", "threshold", "n")}))


@app.command()
@_friendly
def ensemble(
    spec: Annotated[Path, typer.Option("--config", help="Ensemble spec: members and their settings (see configs/ensemble/).")],
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Ensemble folder: members/<name>/ (each a train run), bundle/, metrics.json.")],
    train_config: Annotated[list[Path] | None, typer.Option("--train-config", help="Training configuration every member starts from (e.g. configs/cpu.yaml); repeat to layer.")] = None,
    overrides: SetOpt = None,
    target_gps: TargetGpsOpt = None,
    cache_dir: CacheOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Reuse finished members and continue an interrupted one.")] = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Train the members of an ensemble spec, combine them on out-of-fold predictions, write one bundle."""
    from roadwork.tune.ensemble import load_spec, train_ensemble

    extra = list(overrides or []) + ([f"sampling.target={json.dumps(str(target_gps))}"] if target_gps else [])
    metrics = train_ensemble(load_spec(spec), data, out, configs=list(train_config or []), overrides=extra,
                             cache_dir=cache_dir, device=_device(device), resume=resume, overwrite=overwrite)
    for name, member in metrics["members"].items():
        console.print(f"  member {name:14s} out-of-fold MCC {member['mcc']:.3f} {member['mcc_ci95']}", highlight=False)
    for name, combination in metrics["combinations"].items():
        difference = combination["minus_best_member"]["ci95"]
        console.print(f"  {name:21s} out-of-fold MCC {combination['mcc']:.3f} {combination['mcc_ci95']}; minus the "
                      f"best member {difference}", highlight=False)
    verdict = "beats" if metrics["recommended"] else "does not beat (by a paired interval excluding 0)"
    console.print(f"served: {metrics['combine']}, which {verdict} the best member ({metrics['best_member']}); "
                  f"bundle written to {out / 'bundle'}", highlight=False)


ADAPT = AdaptConfig()
vlm_app = typer.Typer(help="Vision-language models as scorers.", no_args_is_help=True)
app.add_typer(vlm_app, name="vlm")


VLM_TRAINING = VlmTrainingConfig()


@vlm_app.command("train")
@_friendly
def vlm_train(
    model: Annotated[str, typer.Option("--model", help="A chat VLM (AutoModelForImageTextToText): hub id or folder saved with save_pretrained.")],
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Run folder: bundle/ (kind vlm, the fine-tuned model inside), metrics.json, checkpoints/, logs/.")],
    method: Annotated[str, typer.Option("--method", help="lora, or qlora (4-bit base weights; a CUDA GPU with bitsandbytes).")] = VLM_TRAINING.method,
    vision: Annotated[bool, typer.Option("--vision", help="Adapt the vision tower too, not only the language model.")] = False,
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank.")] = VLM_TRAINING.rank,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training photos.")] = VLM_TRAINING.epochs,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Photos per step.")] = VLM_TRAINING.batch_size,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate of the adapters.")] = VLM_TRAINING.lr,
    held_out: Annotated[float, typer.Option("--held-out", help="Grouped share of photos kept out of training for the calibration.")] = VLM_TRAINING.held_out,
    dpo: Annotated[bool, typer.Option("--dpo", help="Direct preference optimisation: the right answer preferred to the wrong one, against the start model (default: cross-entropy).")] = False,
    beta: Annotated[float, typer.Option("--beta", help="DPO's beta.")] = VLM_TRAINING.dpo_beta,
    classifier: Annotated[str | None, typer.Option("--classifier", help="A bundle whose confident mistakes weigh more in DPO's pairs.")] = None,
    mistake_weight: Annotated[float, typer.Option("--mistake-weight", help="Extra weight of a photo the classifier got wrong with certainty.")] = VLM_TRAINING.mistake_weight,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Fine-tune a VLM's yes/no answer on labelled photos with LoRA (cross-entropy or DPO) and write a calibrated vlm bundle."""
    from roadwork.config import from_options
    from roadwork.train.vlm import train_vlm

    if classifier and not dpo:
        raise typer.BadParameter("--classifier weighs DPO's pairs; add --dpo", param_hint="--classifier")
    settings = from_options(VlmTrainingConfig, method=method, vision=vision, rank=rank, epochs=epochs,
                            batch_size=batch_size, lr=lr, held_out=held_out, objective="dpo" if dpo else "bce",
                            dpo_beta=beta, classifier=classifier, mistake_weight=mistake_weight)
    metrics = train_vlm(model, data, out, settings, device=_device(device), resume=resume, overwrite=overwrite)
    console.print(f"held-out MCC {metrics['mcc']:.3f} {metrics['ci95']['mcc']} on {metrics['held_out']} photos; "
                  f"bundle in {out / 'bundle'}", highlight=False)


@vlm_app.command("zero-shot")
@_friendly
def vlm_zero_shot(
    model: Annotated[str, typer.Option("--model", help="A chat VLM (AutoModelForImageTextToText): hub id or folder saved with save_pretrained.")],
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Run folder: bundle/ (kind vlm) and metrics.json.")],
    question: Annotated[str | None, typer.Option("--question", help="The yes/no question (default: roadwork's, in the README).")] = None,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Photos are scaled down to at most this many pixels.")] = 448 * 448,
    batch: Annotated[int, typer.Option("--batch", help="Photos per forward pass.")] = 8,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Score labelled photos with a VLM's yes/no answer (next-token probabilities, never parsed text) and calibrate it into a vlm bundle."""
    from roadwork.experts.vlm import QUESTION
    from roadwork.tune.vlm import zero_shot

    metrics = zero_shot(model, data, out, question=question or QUESTION, max_pixels=max_pixels,
                        device=_device(device), batch_size=batch, overwrite=overwrite)
    console.print(f"{metrics['photos']} photos, out-of-fold MCC {metrics['mcc']:.3f} {metrics['ci95']['mcc']}, "
                  f"AUROC {metrics['auroc']:.3f}, {metrics['seconds_per_photo']:.2f} s per photo; bundle in "
                  f"{out / 'bundle'}", highlight=False)


@app.command()
@_friendly
def adapt(
    data: Annotated[list[str], typer.Option("--data", help="Photos to adapt to (repeatable; labels, if any, are ignored).")],
    out: Annotated[Path, typer.Option("--out", help="Folder of the adapted backbone: train takes it as --set data.adapted=OUT.")],
    method: Annotated[str, typer.Option("--method", help="simclr (two views, NT-Xent) or explora (DINO self-distillation, LoRA on every block and the last blocks open).")] = ADAPT.method,
    backbone: BackboneOpt = DATA.backbone,
    weights: WeightsOpt = None,
    input_size: Annotated[int | None, typer.Option("--input-size", help="Backbone input side (default: the backbone's own).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="simclr: which weights learn (last_blocks, lora, dora or full).")] = ADAPT.mode,
    blocks: Annotated[int, typer.Option("--blocks", help="last_blocks and explora: how many of the last blocks train whole.")] = ADAPT.blocks,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the photos.")] = ADAPT.epochs,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Photos per step (two views each).")] = ADAPT.batch_size,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (warmup, then cosine decay).")] = ADAPT.lr,
    temperature: Annotated[float, typer.Option("--temperature", help="NT-Xent temperature.")] = ADAPT.temperature,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data order and augmentation.")] = ADAPT.seed,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Adapt a backbone to unlabelled photos with self-supervised learning (SimCLR), for train to fit on top."""
    from roadwork.config import from_options
    from roadwork.train.adapt import adapt as run_adaptation

    settings = from_options(AdaptConfig, method=method, mode=mode, blocks=blocks, epochs=epochs, batch_size=batch_size, lr=lr,
                            temperature=temperature, seed=seed)
    manifest = run_adaptation(data, out, settings, backbone=backbone, weights=weights, input_size=input_size,
                              device=_device(device), resume=resume, overwrite=overwrite)
    console.print(f"adapted {backbone} on {manifest['photos']} photos for {manifest['epochs']} epochs "
                  f"({manifest['changed_tensors']} tensors changed); train on it with --set data.adapted={out}",
                  highlight=False)


@app.command()
@_friendly
def cascade(
    fast: Annotated[Path, typer.Option("--fast", help="The tier that answers every photo (any bundle kind).")],
    slow: Annotated[Path, typer.Option("--slow", help="The tier asked again about the photos the fast one is unsure of.")],
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Cascade folder (a bundle kind: predict, evaluate, serve take it).")],
    share: Annotated[float | None, typer.Option("--share", help="At most this share of photos goes to the slow tier.")] = None,
    budget_ms: Annotated[float | None, typer.Option("--budget-ms", help="Mean milliseconds per photo allowed: the share follows from both tiers' measured latency, and a slow answer later than this is dropped.")] = None,
    cache_dir: CacheOpt = None,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Fit a fast/slow cascade on labelled photos neither tier learnt from (the band around 0.5 and the calibration of the combined answer)."""
    from roadwork.tune.cascade import build_cascade

    metrics = build_cascade(fast, slow, data, out, share=share, budget_ms=budget_ms, cache_dir=cache_dir,
                            device=_device(device), overwrite=overwrite)
    c, f, s = metrics["cascade"], metrics["fast"], metrics["slow"]
    console.print(f"cascade MCC {c['mcc']:.3f} {c['ci95']['mcc']} out of fold, sending "
                  f"{metrics['routed_share_out_of_fold']:.0%} of photos on (fast alone {f['mcc']:.3f}, slow alone "
                  f"{s['mcc']:.3f}); written to {out}", highlight=False)


@app.command()
@_friendly
def distill(
    teacher: Annotated[Path, typer.Option("--teacher", help="Teacher: an ensemble folder or any bundle.")],
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Student run folder, as `train` writes it.")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    cache_dir: CacheOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Train one probe student on the teacher's softened probabilities mixed with the labels (distill.temperature, distill.mix)."""
    from roadwork.tune.distill import distill as run_distillation

    metrics = run_distillation(teacher, data, out, _training_config(config, overrides, {}), cache_dir=cache_dir,
                               device=_device(device), resume=resume, overwrite=overwrite)
    student, info = metrics["validation"], metrics["distillation"]
    console.print(f"student validation MCC {student['mcc']:.3f} {student['ci95']['mcc']}, AUROC {student['auroc']:.3f} "
                  f"(teacher on the same photos: MCC {info['teacher_on_these_photos']['mcc']:.3f}, trained on "
                  f"{info['teacher_trained_on_share']:.0%} of them); bundle written to {out / 'bundle'}", highlight=False)


detector_app = typer.Typer(help="Object detectors as experts: fine-tune one on annotated photos.", no_args_is_help=True)
app.add_typer(detector_app, name="detector")
DETECTOR_TRAINING = DetectorTrainingConfig()
EXPERTS = ExpertsConfig()


@detector_app.command("train")
@_friendly
def detector_train(
    data: DataOpt,
    model: Annotated[str, typer.Option("--model", help="A closed-set transformers detector: hub id or folder saved with save_pretrained.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints/, logs/, detector/ (what experts.detector names), detector-metrics.json.")],
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the annotated photos.")] = DETECTOR_TRAINING.epochs,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Photos per step.")] = DETECTOR_TRAINING.batch_size,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = DETECTOR_TRAINING.lr,
    input_size: Annotated[int, typer.Option("--input-size", help="Side of the square global view it learns from (give experts.detector_input_size the same).")] = DETECTOR_TRAINING.input_size,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the new classifier and the data order.")] = DETECTOR_TRAINING.seed,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Fine-tune a closed-set detector on the boxes of DATA's annotations.json (roadwork's categories: work-zone objects and look-alikes)."""
    from roadwork.config import from_options
    from roadwork.train.detector import DETECTOR, train_detector

    settings = from_options(DetectorTrainingConfig, epochs=epochs, batch_size=batch_size, lr=lr, input_size=input_size, seed=seed)
    metrics = train_detector(data, model, out, settings, device=_device(device), resume=resume, overwrite=overwrite)
    console.print(f"trained on {metrics['photos']} photos for {metrics['epochs']} epochs; use it with "
                  f"--set experts.detector={out / DETECTOR} --set experts.detector_input_size={input_size}",
                  highlight=False)


@detector_app.command("evaluate")
@_friendly
def detector_evaluate(
    data: DataOpt,
    model: Annotated[str, typer.Option("--model", help="A detector as experts.detector names it: hub id or folder (`detector train` writes RUN/detector).")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the result as JSON here too.")] = None,
    prompts: Annotated[list[str] | None, typer.Option("--prompt", help="TEXT=CATEGORY for an open-vocabulary detector; repeatable (default: the work-zone prompts).")] = None,
    input_size: Annotated[int, typer.Option("--input-size", help="Side of the square global view it sees (as experts.detector_input_size).")] = EXPERTS.detector_input_size,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Photos per forward pass.")] = 8,
    device: DeviceOpt = "auto",
) -> None:
    """COCO mAP of a detector on DATA's annotated photos, scored on the view the detector expert serves it."""
    from roadwork.evaluate.detection import detector_map
    from roadwork.experts.detector import detector_source
    from roadwork.storage import atomic_write_json

    result = detector_map(detector_source(model, prompts, EXPERTS.detector_threshold, input_size), str(data),
                          device=_device(device), batch_size=batch, progress=True)
    if out is not None:
        atomic_write_json(out, result)
    per = ", ".join(f"{c} {ap:.3f}" for c, ap in result["map_per_category"].items())
    console.print(f"mAP {result['map']:.3f}, mAP@0.5 {result['map_50']:.3f} on {result['photos']} photos "
                  f"({result['boxes']} boxes); per category: {per}", highlight=False)


@app.command("pseudo-masks")
@_friendly
def pseudo_masks(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for annotations.json (COCO, as `synth` writes) and summary.json.")],
    model: Annotated[str, typer.Option("--model", help="SAM 3: a Hugging Face model id or a folder saved with save_pretrained.")] = "facebook/sam3",
    prompts: Annotated[list[str] | None, typer.Option("--prompt", help="TEXT=CATEGORY (or TEXT for other_roadwork); repeatable (default: five work-zone prompts, see the README).")] = None,
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0, help="Keep instances scored above this.")] = 0.5,
    mask_threshold: Annotated[float, typer.Option("--mask-threshold", min=0.0, max=1.0, help="A pixel is in a mask above this probability.")] = 0.5,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Photos per forward pass (every prompt runs on each).")] = 4,
    cache_dir: CacheOpt = None,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Instance masks of work-zone objects on DATA from SAM 3 text prompts, cached per photo (a rerun resumes)."""
    from roadwork.data.sources import load_samples
    from roadwork.experts.prompts import DEFAULT_PROMPTS, Prompt
    from roadwork.experts.pseudo_masks import Sam3Segmenter
    from roadwork.experts.pseudo_masks import pseudo_masks as run_pseudo_masks
    from roadwork.storage import check_output

    chosen = [Prompt.parse(spec) for spec in (prompts or DEFAULT_PROMPTS)]
    check_output(out, "pseudo-mask folder", replace=overwrite, inputs=[data])   # before the model loads
    samples = load_samples(data, require_labels=False)
    segmenter = Sam3Segmenter(model, device=_device(device), threshold=threshold, mask_threshold=mask_threshold)
    summary = run_pseudo_masks(samples, out, segmenter, chosen, cache_dir=cache_dir, batch_size=batch,
                               overwrite=overwrite, progress=True, inputs=[data])
    console.print(f"{summary['instances']} instances on {summary['photos'] - len(summary['failed'])} photos "
                  f"({summary['from_cache']} from the cache); wrote {out / 'annotations.json'}", highlight=False)
    if summary["failed"]:
        console.print(f"[yellow]warning:[/] {len(summary['failed'])} photos could not be read (summary.json)")


@app.command()
@_friendly
def active(
    bundle: Annotated[Path, typer.Option("--bundle", help="Bundle folder written by `roadwork train`.")],
    pool: Annotated[str, typer.Option("--pool", help="Unlabelled photos to choose from (any dataset source; labels, if any, are ignored).")],
    budget: Annotated[int, typer.Option("--budget", min=1, help="How many photos to pick.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the picks: images/ and metadata.csv with an empty label column.")],
    weights: Annotated[list[str] | None, typer.Option("--weight", help="CRITERION=W for boundary, uncertainty, disagreement (default 1 each); repeatable.")] = None,
    similarity: Annotated[float | None, typer.Option("--similarity", min=0.0, max=1.0, help="Skip photos at least this similar to a pick (centred cosine of global-view features).")] = NEAR_DUPLICATE_SIMILARITY,
    cache_dir: CacheOpt = None,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Pick the pool photos most worth labelling next; label them, then `train --add-data OUT`."""
    from roadwork.data.sources import load_samples
    from roadwork.serve.scorer import load_scorer
    from roadwork.storage import check_output
    from roadwork.tune.active import CRITERIA, rank_pool, write_picks

    check_output(out, "active-learning folder", replace=overwrite, inputs=[bundle, pool])

    chosen = dict.fromkeys(CRITERIA, 1.0)
    for item in weights or []:
        name, _, value = item.partition("=")
        if name not in CRITERIA:
            raise typer.BadParameter(f"{item!r}: the criterion must be one of {', '.join(CRITERIA)}", param_hint="--weight")
        try:
            chosen[name] = float(value)
        except ValueError:
            raise typer.BadParameter(f"{item!r}: the weight must be a number", param_hint="--weight") from None
    if not any(chosen.values()):
        raise typer.BadParameter("at least one criterion needs a non-zero weight", param_hint="--weight")
    samples = load_samples(pool, require_labels=False)
    picks, failures = rank_pool(load_scorer(bundle, _device(device)), samples, budget, weights=chosen,
                                similarity=similarity, cache_dir=cache_dir, progress=True)
    write_picks(picks, samples, out)
    if failures:
        console.print(f"[yellow]warning:[/] {len(failures)} pool photos could not be decoded and were skipped")
    console.print(f"wrote {len(picks)} picks to {out}: fill in metadata.csv's label column, then "
                  f"`roadwork train ... --add-data {out}`", highlight=False)


@app.command()
@_friendly
def predict(
    bundle: Annotated[Path, typer.Option("--bundle", help="Bundle folder written by `roadwork train`.")],
    paths: Annotated[list[Path], typer.Argument(help="Image files.")],
    cache_dir: CacheOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the feature cache.")] = False,
    device: DeviceOpt = "auto",
    tta: TtaOpt = TTA_MODE,
    tta_augmentations: TtaCountOpt = TTA.augmentations,
    tta_keep: TtaKeepOpt = TTA.keep,
    tta_temperature: TtaTemperatureOpt = TTA.temperature,
) -> None:
    """Print one JSON line per image: {"file", "probability", "roadwork"} (or "error")."""
    from roadwork.data.records import Sample
    from roadwork.serve.scorer import load_scorer

    config = _tta(tta, tta_augmentations, tta_keep, tta_temperature)
    predictor = load_scorer(bundle, _device(device))
    predictor.use_tta(config)
    samples = [Sample(file_name=str(p), label=None, path=p) for p in paths]
    probs, failures = predictor.predict_samples(samples, cache_dir=cache_dir, use_cache=not no_cache)
    for sample, prob in zip(samples, probs):
        if prob is None:
            line = {"file": sample.file_name, "error": failures.get(sample.file_name, "failed")}
        else:
            line = {"file": sample.file_name, "probability": round(prob, 6), "roadwork": prob > 0.5}
        typer.echo(json.dumps(line))
    if failures:
        raise typer.Exit(1)


@app.command()
@_friendly
def serve(
    bundle: Annotated[Path, typer.Option("--bundle", help="Bundle folder written by `roadwork train`.")],
    host: Annotated[str, typer.Option("--host", help="Address to bind; the default answers this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    device: DeviceOpt = "auto",
    max_batch_views: Annotated[int, typer.Option("--max-batch-views", help="Most backbone views in one micro-batch (a 224 px photo is one view, a 1920x1080 one twelve).")] = SERVE.max_batch_views,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", help="How long a request waits for others to batch with.")] = SERVE.max_wait_ms,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Images waiting beyond this get 503 at once.")] = SERVE.max_queue,
    max_batch_images: Annotated[int, typer.Option("--max-batch-images", help="Most images in one /predict/batch request (at most --max-queue).")] = SERVE.max_batch_images,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Most pixels per photo, read from its header before decoding (413 beyond).")] = SERVE.max_pixels,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="Largest request body, MiB (413 beyond).")] = SERVE.max_body_bytes / 2**20,
    timeout_s: Annotated[float, typer.Option("--timeout", help="Seconds a request may wait for its answer (504 beyond).")] = SERVE.timeout_s,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="ROADWORK_API_KEY", help="Require this X-API-Key header (env ROADWORK_API_KEY).")] = None,
    tta: TtaOpt = TTA_MODE,
    tta_augmentations: TtaCountOpt = TTA.augmentations,
    tta_keep: TtaKeepOpt = TTA.keep,
    tta_temperature: TtaTemperatureOpt = TTA.temperature,
) -> None:
    """Serve a bundle over HTTP: POST /predict, POST /predict/batch, GET /healthz, GET /metrics, /docs."""
    import ipaddress

    import uvicorn

    from roadwork.config import from_options
    from roadwork.serve.scorer import load_scorer
    from roadwork.serve.server import create_app

    config = from_options(ServeConfig, max_batch_views=max_batch_views, max_wait_ms=max_wait_ms, max_queue=max_queue,
                          max_batch_images=max_batch_images, max_pixels=max_pixels,
                          max_body_bytes=int(max_body_mb * 2**20), timeout_s=timeout_s, api_key=api_key)
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = host == "localhost"
    if not local and api_key is None:
        console.print(f"[yellow]warning:[/] serving on {host} without --api-key: anyone who reaches it can use it")
    augmentation = _tta(tta, tta_augmentations, tta_keep, tta_temperature)
    predictor = load_scorer(bundle, _device(device))
    predictor.use_tta(augmentation)
    predictor.warm_up()
    uvicorn.run(create_app(predictor, config), host=host, port=port, log_level="warning")


@app.command()
@_friendly
def publish(
    bundle: Annotated[Path, typer.Option("--bundle", help="Bundle folder to publish (any kind).")],
    repo: Annotated[str, typer.Option("--repo", help="Hugging Face model repository, OWNER/NAME.")],
    hotkey: Annotated[str, typer.Option("--hotkey", help="The miner's SS58 hotkey: model_card.json's submitted_by.")],
    version: Annotated[str, typer.Option("--version", help="model_card.json's version, X.Y.Z.")] = "1.0.0",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write the folder only; upload nothing.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Where the folder is written (required with --dry-run; a temporary folder otherwise).")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write the folder a StreetVision miner publishes (the bundle, the network's model_card.json, a README model card) and upload it to the Hugging Face Hub."""
    import tempfile

    from roadwork.errors import RoadworkError
    from roadwork.serve.publish import upload, write_publication

    if dry_run and out is None:
        raise RoadworkError("--dry-run writes the folder only: give --out DIR")
    with tempfile.TemporaryDirectory(prefix="roadwork-publish-") as scratch:
        folder = write_publication(bundle, out or Path(scratch) / "model", repo=repo, hotkey=hotkey, version=version,
                                   overwrite=overwrite)
        if dry_run:
            console.print(f"wrote {folder} (dry run: nothing uploaded)")
            return
        upload(folder, repo, private=private)
    console.print(f"published {bundle} to {repo} (version {version})")


@app.command()
@_friendly
def export(
    bundle: Annotated[Path, typer.Option("--bundle", help="Bundle folder written by `roadwork train`.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the exported graphs, their manifest and a copy of the bundle.")],
    format: Annotated[str, typer.Option("--format", help="Export format; onnx is the one there is.")] = "onnx",
    overwrite: OverwriteOpt = False,
) -> None:
    """Export backbone(s) and heads to ONNX (dynamic batch), checked against PyTorch; `predict`, `evaluate` and `serve` take the folder as --bundle."""
    from roadwork.errors import RoadworkError
    from roadwork.serve.onnx import export_onnx

    if format != "onnx":
        raise RoadworkError(f"unknown export format {format!r}: onnx is supported")
    manifest = export_onnx(bundle, out, overwrite=overwrite)
    worst = max(manifest["max_difference_from_pytorch"].values())
    console.print(f"exported {len(manifest['files'])} graphs to {out} (largest difference from PyTorch {worst:.1e})")
