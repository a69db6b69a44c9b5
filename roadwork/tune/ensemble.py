"""Diverse ensembles: train the members of a spec, combine them on out-of-fold predictions, and
write one ensemble bundle (``roadwork ensemble``).

Every member is an ordinary ``roadwork train`` run (its own seed, learning rate, dropout,
augmentation, head shape; the feature cache is shared where the backbone is the same), so each
training photo has an out-of-fold probability from every member. The combinations (mean,
MCC-weighted mean, a stacking logistic regression on the members' logits) and their calibration are
fitted on those, and scored by a second, grouped cross-validation over them: no combination is
scored on photos that fitted it. The paired bootstrap then says whether the ensemble beats its best
member; ``recommended`` is true only when that interval excludes zero.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from roadwork.config import ConfigError, TrainConfig, load_config, read_yaml
from roadwork.data.records import DatasetError
from roadwork.distributed import barrier, is_main
from roadwork.evaluate.metrics import binary_metrics, bootstrap_metrics, interval, paired_difference
from roadwork.serve.calibration import Calibration, fit_calibration
from roadwork.serve.ensemble import COMBINATIONS, MEMBER_NAME, Combiner, logit, save_ensemble
from roadwork.storage import atomic_write_json
from roadwork.train.run import train
from roadwork.train.trainer import check_run_folder, open_run_folder

log = logging.getLogger(__name__)
COMBINATION_FOLDS = 5


class MemberSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=f"^{MEMBER_NAME.pattern}$")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted config keys for this member")


class EnsembleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    members: list[MemberSpec] = Field(min_length=2)
    combine: Literal["auto", "mean", "mcc_weighted", "stacking"] = "auto"

    @field_validator("members")
    @classmethod
    def _distinct(cls, members: list[MemberSpec]) -> list[MemberSpec]:
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be distinct, got {names}")
        if set(names) & set(COMBINATIONS):
            raise ValueError(f"member names must differ from the combinations {COMBINATIONS}, got {names}")
        return members


def load_spec(path: str | Path) -> EnsembleSpec:
    try:
        return EnsembleSpec.model_validate(read_yaml(path, "the ensemble spec") or {})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"{path}: {problems}") from None


def member_configs(spec: EnsembleSpec, configs: list[str | Path], overrides: list[str]) -> dict[str, TrainConfig]:
    """Each member's validated configuration, all before any training: a typo fails in seconds."""
    result = {}
    for member in spec.members:
        extra = [f"{key}={json.dumps(value)}" for key, value in member.set.items()]
        try:
            result[member.name] = load_config(configs, [*overrides, *extra])
        except ConfigError as error:
            raise ConfigError(f"member {member.name}: {error}") from None
    return result


def read_out_of_fold(run: Path) -> dict[str, tuple[int, float, str]]:
    """(label, out-of-fold probability, group) by file name, as the member's run wrote them."""
    with open(run / "validation_predictions.csv", newline="") as handle:
        return {r["file_name"]: (int(r["label"]), float(r["probability"]), r["group"]) for r in csv.DictReader(handle)
                if r["probability"]}


def fit_combiner(method: str, probabilities: np.ndarray, labels: np.ndarray) -> Combiner:
    members = probabilities.shape[1]
    if method == "mean":
        return Combiner(method, (1 / members,) * members)
    if method == "mcc_weighted":
        mcc = np.array([max(binary_metrics(probabilities[:, k], labels)["mcc"], 0.0) for k in range(members)])
        weights = mcc / mcc.sum() if mcc.sum() > 0 else np.full(members, 1 / members)
        return Combiner(method, tuple(weights.tolist()))
    stacker = LogisticRegression(C=1.0, max_iter=1000).fit(logit(probabilities), labels)
    return Combiner(method, tuple(stacker.coef_[0].tolist()), float(stacker.intercept_[0]))


def fit_combination(method: str, probabilities: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                    seed: int) -> tuple[Combiner, Calibration]:
    combiner = fit_combiner(method, probabilities, labels)
    calibration, _ = fit_calibration(combiner.margins(probabilities), labels, seed=seed, groups=groups)
    return combiner, calibration


def combination_out_of_fold(method: str, probabilities: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                            seed: int) -> np.ndarray:
    """Served probabilities of each photo from a combination and calibration fitted on the other folds."""
    served = np.zeros(len(labels))
    folds = min(COMBINATION_FOLDS, len(np.unique(groups)))
    for fit_rows, held in GroupKFold(n_splits=folds).split(probabilities, labels, groups):
        combiner, calibration = fit_combination(method, probabilities[fit_rows], labels[fit_rows], groups[fit_rows],
                                                seed)
        served[held] = calibration(torch.from_numpy(combiner.margins(probabilities[held]))).numpy()
    return served


def train_ensemble(spec: EnsembleSpec, data: str, out: str | Path, *, configs: list[str | Path] | None = None,
                   overrides: list[str] | None = None, cache_dir: str | Path | None = None, device: str = "cpu",
                   resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train every member into OUT/members/<name>, then write OUT/bundle (the ensemble) and OUT/metrics.json."""
    out = check_run_folder(out, resume=resume, overwrite=overwrite, inputs=[data])
    settings = member_configs(spec, list(configs or []), list(overrides or []))
    if is_main():   # the spec is sound: only now does OUT come into being (or lose its old run)
        open_run_folder(out, clear=overwrite and not resume)
    barrier()
    runs = {name: out / "members" / name for name in settings}
    for name, config in settings.items():   # with --resume, train itself reuses what still fits the settings
        log.info("member %s", name)
        train(data, runs[name], config, cache_dir=cache_dir, device=device, resume=resume, progress=progress)
    barrier()
    if not is_main():   # ddp: process 0 combines and writes
        return {}

    predictions = {name: read_out_of_fold(run) for name, run in runs.items()}
    names = sorted(set.intersection(*(set(p) for p in predictions.values())))
    if len(names) < 20:
        raise DatasetError(f"the members share out-of-fold predictions for only {len(names)} photos: train them with "
                           "validation.folds > 1 on the same data")
    first = predictions[next(iter(runs))]
    labels = np.array([first[n][0] for n in names])
    # The first member's groups (its group column or near-duplicate photos): the second
    # cross-validation and the bootstrap keep drives together as training did.
    groups = np.unique([first[n][2] for n in names], return_inverse=True)[1]
    probabilities = np.array([[predictions[m][n][1] for m in runs] for n in names])
    seed = next(iter(settings.values())).seed

    scored = {m: probabilities[:, k] for k, m in enumerate(runs)}
    scored |= {c: combination_out_of_fold(c, probabilities, labels, groups, seed) for c in COMBINATIONS}
    draws = dict(zip(scored, bootstrap_metrics(list(scored.values()), labels, groups, seed=seed)))
    estimates = {name: {**binary_metrics(p, labels), "ci95": {k: interval(v) for k, v in draws[name].items()}}
                 for name, p in scored.items()}
    best_member = max(runs, key=lambda m: estimates[m]["mcc"])
    chosen = spec.combine if spec.combine != "auto" else max(COMBINATIONS, key=lambda c: estimates[c]["mcc"])
    against_best = {c: paired_difference(draws[best_member], draws[c]) for c in COMBINATIONS}
    recommended = against_best[chosen]["ci95"] is not None and against_best[chosen]["ci95"][0] > 0
    combiner, calibration = fit_combination(chosen, probabilities, labels, groups, seed)
    metrics: dict[str, Any] = {
        "estimate": f"out-of-fold over {len(names)} photos in {groups.max() + 1} groups; combinations scored by a "
                    f"second {COMBINATION_FOLDS}-fold grouped cross-validation",
        "members": {m: _summary(estimates[m]) for m in runs},
        "combinations": {c: {**_summary(estimates[c]), "minus_best_member": against_best[c]} for c in COMBINATIONS},
        "best_member": best_member, "combine": chosen, "recommended": recommended,
        "combiner": combiner.to_dict(), "calibration": calibration.to_dict(),
    }
    save_ensemble(out / "bundle", {m: run / "bundle" for m, run in runs.items()}, combiner, calibration, metrics)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"mcc": metrics["mcc"], "mcc_ci95": metrics["ci95"]["mcc"], "auroc": metrics["auroc"],
            "brier": metrics["brier"]}
