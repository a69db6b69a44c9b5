"""``roadwork train``: prepare the data, fit each candidate head on each split, measure every candidate on
photos it never saw, calibrate the winner's cut on those, write the bundle and metrics.json.

Splits (every one keeps groups of photos together, see ``roadwork.data.groups``):

* ``validation.folds = k > 1``: k folds. Each fold's head trains on the other folds (its checkpoint
  chosen on an inner grouped split of them) and predicts its own fold, so every training photo gets
  an out-of-fold margin. The cut is fitted on all of them; the reported estimate cuts each fold with
  a calibration fitted on the other folds only. The k heads are served together (the
  mean of their calibrated probabilities).
* ``folds = 1``: one grouped split (or ``--val-data``) chooses the checkpoint, the cut and the head;
  its score is therefore optimistic, and says so in metrics.json.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from roadwork.config import BackboneTrainingConfig, ConfigError, HeadConfig, TrainConfig
from roadwork.data.records import DatasetError
from roadwork.data.splits import kfold_splits, train_val_split
from roadwork.distributed import barrier, is_main, launch
from roadwork.evaluate.metrics import between_fold_interval, binary_metrics, group_evidence, reliability, with_intervals
from roadwork.evaluate.report import write_predictions
from roadwork.features.metadata import MetadataVocab, ServedInputs
from roadwork.features.table import FeatureTable, head_margins, head_outputs
from roadwork.model.head import HeadEnsemble, build_head
from roadwork.progress import console
from roadwork.serve.bundle import save_bundle
from roadwork.serve.calibration import Calibration, CutChoice, fit_calibration
from roadwork.serve.tta import FeatureDensity
from roadwork.storage import atomic_write_bytes, atomic_write_json
from roadwork.train.finetune import Finetuned, adapted_splits, resolve_mode
from roadwork.train.fit import fit_multiview, forget_unseen_categories
from roadwork.train.prepare import Photos, PreparedData, prepare_data
from roadwork.train.probe import fit_probe
from roadwork.train.sampling import GpsSampling, check_report, describe_report
from roadwork.train.trainer import check_loggers, check_run_folder, claim_folder, open_run_folder

log = logging.getLogger(__name__)
CANDIDATES = ("probe", "multiview")


@dataclass
class Split:
    """Row indices into the training photos; ``held`` None means the rows of --val-data."""

    fit: np.ndarray      # rows the head learns from
    select: np.ndarray | None  # rows that choose the multi-view checkpoint (None: --val-data)
    held: np.ndarray | None    # rows it is measured on (None: --val-data, or nothing for a refit)


@dataclass
class CandidateResult:
    name: str
    heads: list[torch.nn.Module] = field(default_factory=list)
    served: list[np.ndarray] = field(default_factory=list)     # held-out margins as served, per split
    metadata: list[np.ndarray] = field(default_factory=list)   # held-out margins with metadata, per split
    info: list[dict[str, Any]] = field(default_factory=list)


def _splits(prep: PreparedData, config: TrainConfig) -> list[Split]:
    labels, groups = prep.train.labels, prep.grouping.ids
    v = config.validation
    if prep.val is not None:
        if v.folds > 1:
            log.warning("--val-data is given: the training data is not folded (validation.folds=%d ignored)", v.folds)
        everything = np.arange(len(labels))
        return [Split(everything, None, None)]
    if v.folds == 1:
        fit, held = train_val_split(labels, groups, v.fraction, config.seed)
        return [Split(fit, held, held)]
    splits = []
    for outer, held in kfold_splits(labels, groups, v.folds, config.seed):
        inner_fit, inner_select = train_val_split(np.asarray(labels)[outer], groups[outer], v.fraction, config.seed)
        splits.append(Split(outer[inner_fit], outer[inner_select], held))
    return splits


def _table(photos: Photos, rows: np.ndarray | None, vocab: MetadataVocab, text: dict | None,
           augmented: bool = False) -> FeatureTable:
    """The rows as a table; ``augmented`` adds their feature-bank copies (for the rows a head learns from)."""
    rows = np.arange(len(photos.samples)) if rows is None else rows
    copies = [[copy[i] for i in rows] for copy in photos.copies] if augmented else []
    evidence = None if photos.evidence is None else photos.evidence[torch.as_tensor(rows, dtype=torch.long)]
    return FeatureTable.build([photos.samples[i] for i in rows], [photos.features[i] for i in rows], vocab, text,
                              copies, evidence)


def _learning_rows(split: Split) -> np.ndarray:
    """Every row that may shape a split's model: its training rows, and its selection rows when they
    are not also the rows it is measured on."""
    if split.select is None or split.select is split.held:
        return split.fit
    return np.union1d(split.fit, split.select)


def _fit_candidate(name: str, preps: list[PreparedData], config: TrainConfig, vocab: MetadataVocab,
                   splits: list[Split], out: Path, *, device: str, resume: bool, progress: bool,
                   weights: np.ndarray | None, targets: np.ndarray | None = None,
                   folder_name: str = "splits") -> CandidateResult:
    """Fit head ``name`` on every split; ``preps[i]`` holds split i's features (one backbone for all
    splits when it is frozen, each split's own fine-tuned one otherwise); ``weights`` (one per training
    photo) are the GPS sampling weights, ``targets`` soft training targets (distillation, probe only).
    A split with nothing held out (a refit) is fitted and not scored."""
    result = CandidateResult(name)
    head_config = config.model.model_copy(update={"type": name})
    inputs = ServedInputs.named(config.validation.served_metadata)
    for index, split in enumerate(splits):
        prep = preps[index]
        folder = out / folder_name / f"{name}-{index}"
        held_photos, held_rows = (prep.val, None) if split.held is None else (prep.train, split.held)
        held = None if held_photos is None else _table(held_photos, held_rows, vocab, prep.text)
        saved = folder / "head.safetensors"
        claim_folder(folder, _split_identity(name, head_config, config, prep, split, weights, targets),
                     config.optim.epochs if name == "multiview" else None, resume=resume, setting="optim.epochs",
                     result=saved.name)
        if resume and saved.is_file():
            head = build_head(head_config, prep.spec.feature_dim, vocab, len(prep.evidence_fields))
            head.load_state_dict(load_file(str(saved)))
            info = {"resumed": True}
        elif name == "probe":
            # The probe chooses its own regularisation by inner cross-validation, so it learns from
            # every row that is not held out (the multi-view selection rows included).
            rows = _learning_rows(split)
            started = time.perf_counter()
            head = fit_probe(_table(prep.train, rows, vocab, None, augmented=True), prep.grouping.ids[rows],
                             config.seed, None if weights is None else weights[rows],
                             None if targets is None else targets[rows])
            info = {"fit_s": round(time.perf_counter() - started, 2)}
        else:
            select = held if split.select is None else _table(prep.train, split.select, vocab, prep.text)
            if select is None:
                raise ValueError(f"split {index}: a multi-view head needs rows to choose its checkpoint on")
            head, info = fit_multiview(config, head_config, prep.spec.feature_dim, vocab,
                                       _table(prep.train, split.fit, vocab, prep.text, augmented=True), select, folder,
                                       device=device, resume=resume, progress=progress,
                                       weights=None if weights is None else weights[split.fit])
            if len(splits) > 1:
                forget_unseen_categories(head, vocab, [prep.train.samples[i] for i in split.fit])
        if "resumed" not in info and is_main():  # a finished split: --resume reuses it instead of fitting again
            atomic_write_bytes(saved, save({k: v.contiguous() for k, v in head.state_dict().items()}))
        if held is not None:
            with_metadata = head_margins(head, held).numpy()
            result.metadata.append(with_metadata)
            result.served.append(with_metadata if inputs.metadata else
                                 head_margins(head, held.as_served(inputs)).numpy())
        result.heads.append(head)
        result.info.append(info)
    return result


def _split_identity(name: str, head_config: HeadConfig, config: TrainConfig, prep: PreparedData,
                    split: Split, weights: np.ndarray | None, targets: np.ndarray | None = None) -> dict[str, Any]:
    """What a split's head depends on: --resume reuses a saved head or checkpoint only if this matches."""
    def keys(rows: np.ndarray | None) -> list[str]:
        return [] if rows is None else sorted(prep.train.keys[i] for i in rows)

    settings = config.model_dump(mode="json", exclude={"trainer": {"loggers", "step_metrics"}})
    settings["optim"].pop("epochs")   # claim_folder compares it on its own
    settings["optim"].pop("patience")   # a more patient run may continue a less patient one's checkpoint
    settings["validation"].pop("calibration")   # fitted after the heads: --resume recalibrates saved heads
    settings["validation"].pop("serve")   # what is served after the folds does not change a fold's head
    settings["data"].pop("num_workers")   # how many processes decode does not change what they decode
    return {"head": name, "head_config": head_config.model_dump(mode="json"), "config": settings,
            "adapted_backbone": prep.adapted_digest,
            "sampling_weights": None if weights is None else hashlib.sha256(weights.tobytes()).hexdigest(),
            "soft_targets": None if targets is None else hashlib.sha256(targets.tobytes()).hexdigest(),
            "fit": keys(split.fit), "select": keys(split.select),
            "held": keys(split.held) if split.held is not None else sorted(prep.val.keys) if prep.val else []}


def _held_out_probabilities(result: CandidateResult, labels: list[np.ndarray], groups: list[np.ndarray],
                            config: TrainConfig) -> np.ndarray:
    """Served probabilities of every held-out row, each fold cut by a calibration fitted without it."""
    confidence, method = config.validation.cut_confidence, config.validation.calibration
    if len(result.served) == 1:
        calibration, _ = fit_calibration(result.served[0], labels[0], method=method, confidence=confidence,
                                         seed=config.seed, groups=groups[0])
        return calibration(torch.from_numpy(result.served[0])).numpy()
    probabilities = []
    for j, margins in enumerate(result.served):
        others = [i for i in range(len(result.served)) if i != j]
        calibration, _ = fit_calibration(np.concatenate([result.served[i] for i in others]),
                                         np.concatenate([labels[i] for i in others]), method=method,
                                         confidence=confidence, seed=config.seed,
                                         groups=np.concatenate([groups[i] for i in others]))
        probabilities.append(calibration(torch.from_numpy(margins)).numpy())
    return np.concatenate(probabilities)


def _feature_densities(served: Served, vocab: MetadataVocab, config: TrainConfig, device: str) -> list[FeatureDensity]:
    """Each served head's training-feature Gaussian (FOODS test-time augmentation), from its fusion-layer
    features on the photos it learnt from, as served (without metadata when requests carry none)."""
    densities, inputs = [], ServedInputs.named(config.validation.served_metadata)
    for head, prep, split in zip(served.heads, served.preps, served.splits):
        table = _table(prep.train, _learning_rows(split), vocab, prep.text).as_served(inputs)
        _, fused = head_outputs(head, table, device, fused=True)
        densities.append(FeatureDensity.fit(fused[:, 0]))
    return densities


@dataclass
class Plan:
    """The splits of a run and the held-out photos every later step measures on."""

    prep: PreparedData
    splits: list[Split]
    vocab: MetadataVocab
    held: list[tuple[Photos, np.ndarray]]   # per split: the photos it is measured on, and their rows
    labels: list[np.ndarray]                # per split: the held-out labels
    groups: list[np.ndarray]                # per split: the held-out group ids

    @property
    def all_labels(self) -> np.ndarray:
        return np.concatenate(self.labels)

    @property
    def all_groups(self) -> np.ndarray:
        return np.concatenate(self.groups)


def plan_splits(prep: PreparedData, config: TrainConfig) -> Plan:
    """Grouped splits with both classes in every part, and the metadata vocabulary the heads learn."""
    splits = _splits(prep, config)
    hint = (f" (groups from {prep.grouping.source}; try fewer --folds, a larger --val-fraction or a "
            "different --seed)")
    for index, split in enumerate(splits):
        for name, rows in (("training", split.fit), ("checkpoint-selection", split.select), ("held-out", split.held)):
            found = sorted({prep.train.samples[i].label for i in rows}) if rows is not None else [0, 1]
            if found != [0, 1]:
                raise DatasetError(f"split {index}: the {name} photos hold only class {found}{hint}")
    vocab = MetadataVocab.from_samples(
        prep.train.samples if len(splits) > 1 else [prep.train.samples[i] for i in splits[0].fit])
    held = [(prep.val, np.arange(len(prep.val.samples))) if s.held is None else (prep.train, s.held)
            for s in splits]
    labels = [np.asarray(photos.labels)[rows] for photos, rows in held]
    groups = [prep.grouping.ids[rows] if photos is prep.train else rows for photos, rows in held]
    return Plan(prep, splits, vocab, held, labels, groups)


@dataclass
class Fitted:
    """Every candidate head fitted on every split, on the backbone each split trained (or the frozen one)."""

    results: dict[str, CandidateResult]
    preps: list[PreparedData]   # per split, the features its heads read
    backbone: dict[str, Any]    # mode, why, and each split's fine-tuning fit
    finetuned: list[Finetuned]   # per split, what fine-tuning changed; [] = frozen
    settings: BackboneTrainingConfig
    weights: np.ndarray | None   # per training photo, its GPS sampling weight (None: drawn uniformly)
    targets: np.ndarray | None   # per training photo, its soft target (distillation)
    sampling: dict[str, Any] | None   # the GPS sampling report, when sampling was weighted
    seconds: float


def fit_candidates(plan: Plan, config: TrainConfig, out: Path, *, cache_dir: str | Path | None, device: str,
                   resume: bool, progress: bool, soft_targets: Mapping[str, float] | None = None) -> Fitted:
    """Fine-tune the backbone per split when the mode asks for it, then fit each candidate head per split."""
    prep, started = plan.prep, time.perf_counter()
    gps = None
    if config.sampling.target is not None:
        gps = GpsSampling.build(prep.train.samples, config.sampling, config.seed)
        report = gps.report(config.sampling, seed=config.seed)
        if is_main():
            console.print(describe_report(report), highlight=False, soft_wrap=True)
        check_report(report, config.sampling)
    weights = None if gps is None else gps.weights
    settings, reason = resolve_mode(config.backbone_training, prep.spec, len(prep.train.samples), device)
    if is_main():
        console.print(f"backbone training: {settings.mode} ({reason})", highlight=False)
    adapted: list[tuple[PreparedData, Finetuned]] = []
    if settings.mode == "frozen" and config.loss.dice_weight > 0:
        log.warning("loss.dice_weight trains a segmentation branch while the backbone is fine-tuned; "
                    "with a frozen backbone it has nothing to shape")
    if settings.mode != "frozen":
        if config.data.augment_copies:
            log.warning("data.augment_copies is for frozen training; fine-tuning augments the photos themselves")
        adapted = adapted_splits(prep, [_learning_rows(s) for s in plan.splits], config, settings, out,
                                 cache_dir=cache_dir, device=device, resume=resume, progress=progress,
                                 weights=weights)
    preps = [a[0] for a in adapted] if adapted else [prep] * len(plan.splits)
    names = CANDIDATES if config.model.type == "auto" else (config.model.type,)
    targets = None if soft_targets is None else np.array(
        [soft_targets.get(key, float(sample.label)) for key, sample in zip(prep.train.keys, prep.train.samples)])
    results = {name: _fit_candidate(name, preps, config, plan.vocab, plan.splits, out, device=device, resume=resume,
                                    progress=progress, weights=weights, targets=targets) for name in names}
    return Fitted(results, preps, {"mode": settings.mode, "why": reason, "fits": [a[1].info for a in adapted]},
                  [a[1] for a in adapted], settings, weights, targets, None if gps is None else report,
                  time.perf_counter() - started)


@dataclass
class Choice:
    """The chosen head, and every candidate's out-of-fold served probabilities and metrics."""

    name: str
    probabilities: dict[str, np.ndarray]
    metrics: dict[str, dict[str, Any]]


def choose_head(plan: Plan, fitted: Fitted, config: TrainConfig) -> Choice:
    """The candidate with the best out-of-fold served MCC (each fold cut without its own photos)."""
    probabilities, metrics = {}, {}
    for name, result in fitted.results.items():
        probabilities[name] = _held_out_probabilities(result, plan.labels, plan.groups, config)
        metrics[name] = with_intervals(probabilities[name], plan.all_labels, plan.all_groups, seed=config.seed)
    chosen = max(fitted.results, key=lambda n: (metrics[n]["mcc"], n == "probe"))  # ties go to the simpler head
    return Choice(chosen, probabilities, metrics)


@dataclass
class Calibrated:
    calibration: Calibration
    cut: CutChoice
    margins: np.ndarray   # the chosen head's held-out margins as served, the calibration's input


def calibrate(plan: Plan, result: CandidateResult, config: TrainConfig) -> Calibrated:
    """The served cut and probability scale, fitted on every held-out margin of the chosen head."""
    margins = np.concatenate(result.served)
    calibration, cut = fit_calibration(margins, plan.all_labels, method=config.validation.calibration,
                                       confidence=config.validation.cut_confidence, seed=config.seed,
                                       groups=plan.all_groups)
    return Calibrated(calibration, cut, margins)


@dataclass
class Served:
    """What the bundle serves: every fold's chosen head (``folds``), or the chosen pipeline fitted once
    more on every photo (``refit``), with what each reads."""

    model: str
    heads: list[torch.nn.Module]
    finetuned: list[Finetuned]     # per head, its fine-tuned backbone; [] = the frozen one
    preps: list[PreparedData]      # per head, the features it reads
    splits: list[Split]            # per head, the rows it learnt from
    info: dict[str, Any]


def serve_folds(plan: Plan, fitted: Fitted, choice: Choice) -> Served:
    """The k fold heads of the chosen candidate, served as one ensemble."""
    return Served("folds", fitted.results[choice.name].heads, fitted.finetuned, fitted.preps, plan.splits, {})


def refit(plan: Plan, fitted: Fitted, choice: Choice, config: TrainConfig, out: Path, *,
          cache_dir: str | Path | None, device: str, resume: bool, progress: bool) -> Served:
    """The chosen pipeline once more on every photo: the backbone fine-tuned on all of them when the folds
    fine-tuned theirs, then the chosen head on its features, its checkpoint chosen on an inner grouped
    split as in every fold (``out/refit/``). Nothing is held out, so the calibration and the estimate
    stay those of the folds."""
    prep, started = plan.prep, time.perf_counter()
    fit, select = train_val_split(prep.train.labels, prep.grouping.ids, config.validation.fraction, config.seed)
    split = Split(fit, select, None)
    preps, finetuned = [prep], []
    if fitted.finetuned:
        (adapted, tuned), = adapted_splits(prep, [np.arange(len(prep.train.samples))], config, fitted.settings,
                                           out, cache_dir=cache_dir, device=device, resume=resume,
                                           progress=progress, weights=fitted.weights, folder="refit")
        preps, finetuned = [adapted], [tuned]
    result = _fit_candidate(choice.name, preps, config, plan.vocab, [split], out, device=device, resume=resume,
                            progress=progress, weights=fitted.weights, targets=fitted.targets, folder_name="refit")
    info = {"fit_s": round(time.perf_counter() - started, 2), "head": result.info[0],
            "backbone": finetuned[0].info if finetuned else None}
    return Served("refit", result.heads, finetuned, preps, [split], info)


def validation_summary(plan: Plan, choice: Choice, calibrated: Calibrated) -> dict[str, Any]:
    """The chosen head's out-of-fold metrics, what they rest on, and calibration quality."""
    probabilities, validation = choice.probabilities[choice.name], choice.metrics[choice.name]
    validation["evidence"] = _evidence(validation, probabilities, plan.labels, plan.all_labels, plan.all_groups)
    head_own = torch.sigmoid(torch.from_numpy(calibrated.margins)).numpy()   # before the cut and calibration
    validation["ece"] = round(reliability(probabilities, plan.all_labels)[0], 4)
    validation["ece_uncalibrated"] = round(reliability(head_own, plan.all_labels)[0], 4)
    return validation


def train(data: str, out: str | Path, config: TrainConfig, *, val_data: str | None = None,
          add_data: Sequence[str] = (), cache_dir: str | Path | None = None, device: str = "cpu",
          resume: bool = False, overwrite: bool = False, progress: bool = True,
          soft_targets: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Train on DATA (and the ``add_data`` datasets merged into it) and write OUT/bundle,
    OUT/metrics.json and OUT/validation_predictions.csv. ``soft_targets`` (by image SHA-256) replace
    the labels the probe learns from (``roadwork distill``); held-out scores still use the labels.
    A non-empty OUT is continued with ``resume`` or emptied first with ``overwrite``, never silently reused."""
    if soft_targets is not None and config.model.type != "probe":
        raise ConfigError(f"model.type: soft targets train the probe; got {config.model.type!r}")
    out = check_run_folder(out, resume=resume, overwrite=overwrite,   # before hours of extraction, not after
                           inputs=[p for p in (data, val_data, *add_data) if p])
    check_loggers(config)
    started = time.perf_counter()
    launch(config.trainer, device)   # ddp: the other processes start here and follow the same steps
    progress = progress and is_main()
    if resume and not (out / "splits").is_dir():
        log.warning("--resume: nothing to resume in %s; starting from scratch", out)
    prep = prepare_data(data, config, val_data=val_data, cache_dir=cache_dir, device=device, progress=progress,
                        add_data=add_data)
    plan = plan_splits(prep, config)
    if is_main():   # the inputs are sound: only now does OUT come into being (or lose its old run)
        open_run_folder(out, clear=overwrite and not resume)
    barrier()
    fitted = fit_candidates(plan, config, out, cache_dir=cache_dir, device=device, resume=resume,
                            progress=progress, soft_targets=soft_targets)
    choice = choose_head(plan, fitted, config)
    calibrated = calibrate(plan, fitted.results[choice.name], config)
    validation = validation_summary(plan, choice, calibrated)
    served = refit(plan, fitted, choice, config, out, cache_dir=cache_dir, device=device, resume=resume,
                   progress=progress) if config.validation.serve == "refit" else serve_folds(plan, fitted, choice)
    if not is_main():   # the same result, written once (by process 0)
        return {"validation": validation, "chosen_head": choice.name}
    return write_run(out, plan, fitted, choice, calibrated, validation, config, served, data=data,
                     val_data=val_data, device=device, seconds=time.perf_counter() - started)


def write_run(out: Path, plan: Plan, fitted: Fitted, choice: Choice, calibrated: Calibrated,
              validation: dict[str, Any], config: TrainConfig, served: Served, *, data: str, val_data: str | None,
              device: str, seconds: float) -> dict[str, Any]:
    """OUT/validation_predictions.csv, OUT/bundle (the served heads) and OUT/metrics.json."""
    prep, result, calibration = plan.prep, fitted.results[choice.name], calibrated.calibration
    held_names = [photos.samples[i].file_name for photos, rows in plan.held for i in rows]
    # The group lets `ensemble` keep drives together; the raw margin and the fold let a cut rule be
    # refitted offline, each fold's cut from the other folds only.
    folds = np.repeat(np.arange(len(plan.labels)), [len(y) for y in plan.labels])
    write_predictions(out / "validation_predictions.csv",
                      zip(held_names, plan.all_labels.tolist(), choice.probabilities[choice.name].tolist(),
                          calibrated.margins.tolist(), plan.all_groups.tolist(), folds.tolist()),
                      ["probability", "margin", "group", "fold"])
    names, splits = list(fitted.results), plan.splits
    kind = (f"out-of-fold over {len(splits)} grouped folds; each fold cut by a calibration fitted on the others"
            if len(splits) > 1 else
            "one held-out set that also chose the checkpoint, the cut and the head: optimistic")
    if len(names) > 1 and len(splits) > 1:
        kind += f"; the better of {len(names)} heads on these same photos, so slightly optimistic"
    inputs = ServedInputs.named(config.validation.served_metadata)
    head = HeadEnsemble(served.heads)
    metrics: dict[str, Any] = {
        "validation": {**validation, "estimate": kind, "inputs": inputs.describe()},
        "validation_with_metadata": binary_metrics(
            calibration(torch.from_numpy(np.concatenate(result.metadata))).numpy(), plan.all_labels, 0.5),
        "chosen_head": choice.name,
        "serving": {"model": served.model, "heads": len(served.heads), **served.info},
        "backbone_training": fitted.backbone,
        "sampling": fitted.sampling,
        "candidates": {n: {"mcc": choice.metrics[n]["mcc"], "mcc_ci95": choice.metrics[n]["ci95"]["mcc"],
                           "auroc": choice.metrics[n]["auroc"], "accuracy": choice.metrics[n]["accuracy"]}
                       for n in names},
        "calibration": {"method": calibration.method, "margin_threshold": calibration.margin_threshold,
                        "temperature": calibration.temperature, "isotonic_knots": len(calibration.isotonic),
                        "cut": calibrated.cut.__dict__, "fitted_on": int(len(calibrated.margins))},
        "folds": len(splits),
        "groups": prep.grouping.summary(),
        "leakage_with_val_data": prep.leakage,
        "fits": {n: fitted.results[n].info for n in names},
        "timing_s": {"extract": prep.extraction["seconds"], "fit": round(fitted.seconds, 2),
                     "total": round(seconds, 2)},
        "extraction": prep.extraction,
        "parameters": sum(p.numel() for p in head.parameters()),
    }
    data_summary = {"source": str(data), "validation": kind,
                    "validation_source": str(val_data) if val_data else "grouped splits of the training data",
                    "train": _summary(prep.train), "groups": prep.grouping.summary()}
    save_bundle(out / "bundle", head=head, head_config=config.model.model_copy(update={"type": choice.name}),
                config=config, vocab=plan.vocab, backbone=prep.spec, calibration=calibration,
                served=inputs, metrics=metrics["validation"],
                data_summary=data_summary, fingerprints=prep.train.keys,
                adapted_backbones=[f.changed for f in served.finetuned] or _adapted(prep),
                segmenters=[f.segmenter for f in served.finetuned]  # type: ignore[misc]
                if any(f.startswith("segmentation.") for f in served.preps[0].evidence_fields) else None,
                experts=prep.experts,
                backbone_training=fitted.settings,
                densities=_feature_densities(served, plan.vocab, config, device))
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _adapted(prep: PreparedData) -> list[dict[str, torch.Tensor]]:
    """The frozen backbone's changed weights when it is one ``roadwork adapt`` adapted (every head reads it)."""
    source = prep.source
    return [] if source is None or source.weights_file is None else [load_file(str(source.weights_file))]


FEW_GROUPS = 20   # effective groups under which the estimate is flagged as resting on little evidence


def _evidence(validation: dict[str, Any], probabilities: np.ndarray, labels: list[np.ndarray],
              all_labels: np.ndarray, all_groups: np.ndarray) -> dict[str, Any]:
    """What the estimate rests on, and its MCC interval widened to the spread between folds when that is
    wider than the group bootstrap: a few large groups (drives, cities) make folds that disagree far
    more than a bootstrap of those few groups suggests (measured: intervals missed 3 of 5 held-out folds)."""
    bounds = np.cumsum([len(y) for y in labels])[:-1]
    fold_mcc = [round(binary_metrics(p, y, 0.5)["mcc"], 4) if 0 < y.sum() < len(y) else None   # one class: undefined
                for p, y in zip(np.split(probabilities, bounds), labels)]
    bootstrap, spread = validation["ci95"]["mcc"], between_fold_interval(fold_mcc)
    intervals = [i for i in (bootstrap, spread) if i is not None]
    if intervals:
        validation["ci95"]["mcc"] = [max(-1.0, min(i[0] for i in intervals)), min(1.0, max(i[1] for i in intervals))]
    evidence = {**group_evidence(all_labels, all_groups), "fold_mcc": fold_mcc,
                "mcc_ci95_group_bootstrap": bootstrap, "mcc_ci95_between_folds": spread,
                "mcc_ci95_from": "group bootstrap" if validation["ci95"]["mcc"] == bootstrap else
                                 "spread between folds"}
    evidence["few_groups"] = evidence["effective_groups"] < FEW_GROUPS
    return evidence


def _summary(photos: Photos) -> dict[str, Any]:
    samples = photos.samples
    return {"n": len(samples), "positives": int(sum(photos.labels)),
            "with_gps": sum(s.has_gps for s in samples),
            "with_weather": sum(s.weather is not None for s in samples),
            "with_description": sum(s.description is not None for s in samples)}

