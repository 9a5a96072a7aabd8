"""Segmenting new scans: NIfTI files or DICOM series in, label NIfTI files in the input's geometry out."""

from fedgin.prediction.inputs import choose_modality, find_inputs
from fedgin.prediction.model_file import (
    EXPORT_FORMAT,
    PredictionModel,
    export_model,
    load_prediction_model,
    training_preprocess,
)
from fedgin.prediction.outputs import CaseResult, PredictionReport, volumes_table
from fedgin.prediction.run import predict_label, run_prediction

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
