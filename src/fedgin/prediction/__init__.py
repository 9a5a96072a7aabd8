"""Segmenting new scans: NIfTI files or DICOM series in, label NIfTI files in the input's geometry out."""

from fedgin.prediction.model_file import (
    EXPORT_FORMAT,
    PredictionModel,
    export_model,
    load_prediction_model,
    training_preprocess,
)
from fedgin.prediction.run import (
    CaseResult,
    PredictionReport,
    choose_modality,
    find_inputs,
    predict_label,
    run_prediction,
    volumes_table,
)

__all__ = [
    "EXPORT_FORMAT",
    "CaseResult",
    "PredictionModel",
    "PredictionReport",
    "choose_modality",
    "export_model",
    "find_inputs",
    "load_prediction_model",
    "predict_label",
    "run_prediction",
    "training_preprocess",
    "volumes_table",
]
