"""Models for prediction: a training checkpoint or a slim exported model file, with its preprocessing."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from fedgin.config import DataSpec, ModelConfig, PreprocessConfig, RunConfig
from fedgin.errors import DataError
from fedgin.labels import LABEL_NAMES

#: Format tag of exported model files; bumped when their content changes meaning.
EXPORT_FORMAT = "fedgin-model/1"
EXPORT_PREFIX = "fedgin-model/"
#: Suggested file name ending of exported models.
EXPORT_SUFFIX = ".fedgin.pt"


@dataclass
class PredictionModel:
    """A network ready for inference, with everything needed to feed it and name its outputs."""

    network: nn.Module
    model_config: ModelConfig
    preprocess: PreprocessConfig
    labels: dict[int, str]
    path: Path
    kind: Literal["checkpoint", "export"]
    #: Where `preprocess` came from (the training caches' prepare.json, the run config, the export).
    preprocess_source: str
    provenance: dict[str, Any] = field(default_factory=dict)
    #: Things the user should know about this model (e.g. a run config that disagrees with its caches).
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        run = self.provenance.get("run_name")
        where = f"run {run!r}" if run else self.kind
        position = (
            f"round {self.provenance['round']}"
            if self.provenance.get("round") is not None
            else (f"step {self.provenance['step']}" if self.provenance.get("step") is not None else "")
        )
        return f"{self.path.name} ({self.kind}, {where}{', ' + position if position else ''})"


def _training_specs(config: RunConfig) -> Iterator[DataSpec]:
    """Every cache a run trained on: centralized/local data, then each federated site's data."""
    yield from config.data.train
    for client in config.federation.clients:
        yield from client.data


def training_preprocess(config: RunConfig) -> tuple[PreprocessConfig, str, list[str]]:
    """The preprocessing the model was trained with: (config, where it came from, notes for the user).

    The caches' prepare.json records what the training data really went through; a run config's
    [preprocess] table is only what its author wrote, and nothing stops it from differing from the caches.
    So the caches win when they can be read, and a disagreement is reported.
    """
    from fedgin.cache import PREPARE_FILE

    found: dict[str, list[str]] = {}
    configs: dict[str, PreprocessConfig] = {}
    for spec in _training_specs(config):
        record = Path(spec.cache) / PREPARE_FILE
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            preprocess = PreprocessConfig.model_validate(data["config"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # cache not on this machine (or not readable): fall back to the run config
        key = preprocess.model_dump_json()
        configs[key] = preprocess
        found.setdefault(key, []).append(str(spec.cache))
    if not configs:
        return config.preprocess, "the run configuration's [preprocess] (training caches not found)", []
    notes = []
    if len(configs) > 1:
        listing = "; ".join(f"{', '.join(caches)}: {key}" for key, caches in found.items())
        notes.append(f"training caches differ in preprocessing ({listing}); using the first")
    key = next(iter(configs))
    chosen, caches = configs[key], found[key]
    if chosen != config.preprocess:
        notes.append(
            "the run configuration's [preprocess] differs from the training caches' prepare.json; using the "
            f"caches' (what the model was trained on): {chosen.model_dump(mode='json')}"
        )
    return chosen, f"prepare.json of the training cache {caches[0]}", notes


def _build_network(path: Path, model_config: ModelConfig, labels: dict[int, str], state: dict) -> nn.Module:
    """The network of a model file; DataError when its weights do not fit it or are not all finite (a
    diverged run's model segments nothing, and is never used for prediction or exported)."""
    from fedgin.checkpoints import load_weights, require_finite_weights
    from fedgin.model import build_unet

    require_finite_weights(path, state)
    return load_weights(path, build_unet(model_config, out_channels=len(labels)), state)


def _provenance(path: Path, checkpoint: dict[str, Any], config: RunConfig) -> dict[str, Any]:
    """Where a checkpoint's model came from: run, position in training and its validation score."""
    step = checkpoint.get("step")
    federated = checkpoint.get("kind") == "federated"
    best_at = checkpoint.get("best_round" if federated else "best_step")
    best_score = checkpoint.get("best_score")
    if isinstance(best_score, float) and not math.isfinite(best_score):
        best_score = None
    provenance = {
        "run_name": config.name,
        "kind": checkpoint.get("kind", "single-site"),
        "checkpoint": path.name,
        "step": step,
        "round": checkpoint.get("round"),
        "best_score": best_score,
        "best_at": best_at,
        # The score of *this* model is only known when it is the best one (best.pt); last.pt keeps the best
        # score of the run, which belongs to another model.
        "score": best_score if best_at is not None and best_at == step else None,
        "seed": config.seed,
        "gin": config.gin.enabled,
    }
    return json.loads(json.dumps(provenance, default=str))  # plain values only (JSON sidecars, exports)


def _labels_from(raw: Any, path: Path) -> dict[int, str]:
    try:
        labels = {int(key): str(value) for key, value in dict(raw).items()}
    except (TypeError, ValueError):
        raise DataError(path, "exported model has an unreadable label table") from None
    if sorted(labels) != list(range(len(labels))):
        raise DataError(path, f"exported model's label values are not 0..N-1: {sorted(labels)}")
    return labels


def _from_export(path: Path, payload: dict[str, Any], device: torch.device) -> PredictionModel:
    tag = str(payload.get("format", ""))
    if tag != EXPORT_FORMAT:
        raise DataError(path, f"exported model format {tag!r} is unknown (this fedgin reads {EXPORT_FORMAT})")
    try:
        model_config = ModelConfig.model_validate(payload["model_config"])
        preprocess = PreprocessConfig.model_validate(payload["preprocess"])
    except (KeyError, ValueError) as error:
        raise DataError(path, f"exported model has an invalid configuration ({error})") from None
    labels = _labels_from(payload.get("labels"), path)
    network = _build_network(path, model_config, labels, payload["model"]).to(device).eval()
    return PredictionModel(
        network=network,
        model_config=model_config,
        preprocess=preprocess,
        labels=labels,
        path=path,
        kind="export",
        preprocess_source=str(payload.get("preprocess_source", "the exported model")),
        provenance=dict(payload.get("provenance", {})),
    )


def _from_checkpoint(path: Path, checkpoint: dict[str, Any], device: torch.device) -> PredictionModel:
    from fedgin.config import validate

    config = validate(checkpoint["config"], RunConfig, source=f"{path} (config)")
    preprocess, source, notes = training_preprocess(config)
    labels = dict(LABEL_NAMES)
    network = _build_network(path, config.model, labels, checkpoint["model"]).to(device).eval()
    return PredictionModel(
        network=network,
        model_config=config.model,
        preprocess=preprocess,
        labels=labels,
        path=path,
        kind="checkpoint",
        preprocess_source=source,
        provenance=_provenance(path, checkpoint, config),
        notes=notes,
    )


def load_prediction_model(path: str | Path, device: torch.device | str = "cpu") -> PredictionModel:
    """Load an exported model (`fedgin export`) or a training checkpoint, in eval mode on `device`.

    Both hold only tensors and plain values and are read with `weights_only=True`: no code in the file can
    run, and a file that needs more is refused (see `fedgin.checkpoints.load_torch_file`).
    """
    from fedgin.checkpoints import load_torch_file

    path = Path(path)
    device = torch.device(device)
    if not path.is_file():
        raise DataError(path, "model file not found (give a checkpoint or a `fedgin export` file)")
    payload = load_torch_file(path, device)
    if isinstance(payload, dict) and str(payload.get("format", "")).startswith(EXPORT_PREFIX):
        return _from_export(path, payload, device)
    if not (isinstance(payload, dict) and "model" in payload and "config" in payload):
        raise DataError(path, "not a fedgin model or checkpoint (no model weights or config)")
    return _from_checkpoint(path, payload, device)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_export(path: Path) -> bool:
    """Whether `path` holds a model file of `export_model` (read safely; anything unreadable is not one)."""
    from fedgin.checkpoints import load_torch_file

    try:
        payload = load_torch_file(path, "cpu")
    except DataError:
        return False
    return isinstance(payload, dict) and str(payload.get("format", "")).startswith(EXPORT_PREFIX)


def export_model(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> PredictionModel:
    """Write a slim model file: weights, model and preprocessing config, label names and provenance.

    No optimizer state or history, so the file is small and loads with `weights_only=True`; the
    preprocessing is resolved now, while the training caches are likely reachable (see
    `training_preprocess`). Returns the model as `fedgin predict` will see it.
    """
    import fedgin
    from fedgin.checkpoints import save_torch_file

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not overwrite:
        raise DataError(out, "already exists; pass --overwrite to replace it")
    if out.exists() and checkpoint.exists() and out.resolve() == checkpoint.resolve():
        raise DataError(out, "is the checkpoint itself; choose another output file")
    if out.exists() and out.is_dir():
        raise DataError(out, "is a folder; give a file name such as model.fedgin.pt")
    if out.exists() and not _is_export(out):
        raise DataError(
            out,
            "is not a model file fedgin exported (a training checkpoint or another file); --overwrite "
            "replaces only an exported model: choose another output file",
        )
    model = load_prediction_model(checkpoint, "cpu")
    provenance = {
        **model.provenance,
        "source_sha256": _sha256(checkpoint),
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "fedgin_version": fedgin.__version__,
        "torch_version": str(torch.__version__),
    }
    state = {key: value.detach().cpu().contiguous() for key, value in model.network.state_dict().items()}
    # Everything but the weights goes through JSON, so the file holds only types `weights_only` accepts.
    plain = json.loads(
        json.dumps(
            {
                "format": EXPORT_FORMAT,
                "model_config": model.model_config.model_dump(mode="json"),
                "preprocess": model.preprocess.model_dump(mode="json"),
                "preprocess_source": model.preprocess_source,
                "labels": {str(index): name for index, name in model.labels.items()},
                "provenance": provenance,
            },
            default=str,
        )
    )
    save_torch_file(out, {**plain, "model": state})  # a full disk: an OSError naming `out`, no file left
    model.provenance = plain["provenance"]
    return model
