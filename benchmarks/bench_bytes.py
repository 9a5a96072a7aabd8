"""Bytes sent per round to and from each client, float32 and float16 updates (`federation.update_dtype`).

Counted as Flower counts them (`RecordDict` payload: arrays, metrics, config), on the messages fedgin's server
and clients build: down, the global weights and the run's settings; up, the trained weights, the metrics and
the site's validation summary. Exact (no timing): the federation benchmark's rounds.csv gives the same
numbers for the quick preset's model.
"""

from __future__ import annotations

import argparse

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedgin.config import ModelConfig, RunConfig
from fedgin.federation.client import CONFIG_KEY
from fedgin.federation.weights import content_bytes, to_record
from fedgin.model import build_unet, count_parameters

MODELS = {
    "default (16-256, 2D)": ModelConfig(),
    "quick preset (16-128, 2D)": ModelConfig(channels=(16, 32, 64, 128), strides=(2, 2, 2)),
    "default (16-256, 3D)": ModelConfig(dimensions=3),
}


def message_bytes(model: ModelConfig, update_dtype: str) -> dict[str, int]:
    config = RunConfig(model=model, federation={"update_dtype": update_dtype})
    state = build_unet(model).state_dict()
    settings = ConfigRecord({CONFIG_KEY: config.model_dump_json(), "server-round": 1})
    down = RecordDict({"arrays": to_record(state, dtype=update_dtype), "config": settings})
    up = RecordDict(
        {
            "arrays": to_record(state, dtype=update_dtype),
            "metrics": MetricRecord({"num-examples": 1000, "train-loss": 0.5, "steps": 50, "seconds": 10.0}),
            "client": ConfigRecord({"name": "site_ct_mri", "val-dice-ct": 0.8, "val-dice-mri_t1": 0.7}),
        }
    )
    return {
        "weights_bytes": to_record(state, dtype=update_dtype).count_bytes(),
        "down_bytes": content_bytes(down),
        "up_bytes": content_bytes(up),
    }


def run() -> dict:
    results = {}
    for name, model in MODELS.items():
        parameters = count_parameters(build_unet(model))
        entry: dict = {"parameters": parameters}
        for dtype in ("float32", "float16"):
            entry[dtype] = message_bytes(model, dtype)
        entry["float16_over_float32_down"] = round(
            entry["float16"]["down_bytes"] / entry["float32"]["down_bytes"], 4
        )
        entry["float16_over_float32_up"] = round(
            entry["float16"]["up_bytes"] / entry["float32"]["up_bytes"], 4
        )
        results[name] = entry
    return results


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    print(f"{'model':>26} {'parameters':>11} {'dtype':>8} {'down MB':>9} {'up MB':>9}")
    for name, entry in run().items():
        for dtype in ("float32", "float16"):
            down, up = entry[dtype]["down_bytes"], entry[dtype]["up_bytes"]
            print(f"{name:>26} {entry['parameters']:>11,} {dtype:>8} {down / 1e6:>9.3f} {up / 1e6:>9.3f}")


if __name__ == "__main__":
    main()
