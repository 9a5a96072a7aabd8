"""Bytes sent per round to and from each client, float32 and float16 updates (`federation.update_dtype`).

Counted as Flower counts them (`RecordDict` payload: arrays, metrics, config), on the messages fedgin's server
and clients build (fedgin.federation.protocol): down, the global weights and the round's settings, plus once
per site the run's settings and its own data specification (`first_down_bytes`); up, the trained weights, the
metrics and the site's validation summary. Exact (no timing): the federation benchmark's rounds.csv gives the
same numbers for the quick preset's model.
"""

from __future__ import annotations

import argparse

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedgin.config import ClientSpec, DataSpec, ModelConfig, RunConfig
from fedgin.federation import protocol
from fedgin.federation.weights import content_bytes, to_record
from fedgin.model import build_unet, count_parameters

MODELS = {
    "default (16-256, 2D)": ModelConfig(),
    "quick preset (16-128, 2D)": ModelConfig(channels=(16, 32, 64, 128), strides=(2, 2, 2)),
    "default (16-256, 3D)": ModelConfig(dimensions=3),
}


def message_bytes(model: ModelConfig, update_dtype: str) -> dict[str, int]:
    config = RunConfig(model=model, federation={"update_dtype": update_dtype})
    site = ClientSpec(name="site_ct_mri", data=[DataSpec(cache="caches/ct"), DataSpec(cache="caches/mri")])
    state = build_unet(model).state_dict()
    round_settings = ConfigRecord({protocol.SERVER_ROUND: 1, protocol.LR: config.train.lr})
    down = RecordDict(
        {protocol.ARRAYS: to_record(state, dtype=update_dtype), protocol.CONFIG: round_settings}
    )
    first_down = RecordDict({**down, protocol.SETTINGS: protocol.settings_record(config, site)})
    up = RecordDict(
        {
            protocol.ARRAYS: to_record(state, dtype=update_dtype),
            protocol.METRICS: MetricRecord(
                {
                    protocol.NUM_EXAMPLES: 1000,
                    protocol.TRAIN_LOSS: 0.5,
                    protocol.STEPS: 50,
                    protocol.SECONDS: 10.0,
                }
            ),
            protocol.SITE: ConfigRecord(
                {
                    protocol.SITE_NAME: site.name,
                    f"{protocol.VAL_DICE_PREFIX}ct": 0.8,
                    f"{protocol.VAL_DICE_PREFIX}mri_t1": 0.7,
                }
            ),
        }
    )
    return {
        "weights_bytes": to_record(state, dtype=update_dtype).count_bytes(),
        "down_bytes": content_bytes(down),
        "first_down_bytes": content_bytes(first_down),
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
    print(f"{'model':>26} {'parameters':>11} {'dtype':>8} {'down MB':>9} {'up MB':>9} {'first extra kB':>15}")
    for name, entry in run().items():
        for dtype in ("float32", "float16"):
            down, up = entry[dtype]["down_bytes"], entry[dtype]["up_bytes"]
            extra = entry[dtype]["first_down_bytes"] - down  # once per site: settings and its spec
            print(
                f"{name:>26} {entry['parameters']:>11,} {dtype:>8} {down / 1e6:>9.3f} {up / 1e6:>9.3f} "
                f"{extra / 1e3:>15.2f}"
            )


if __name__ == "__main__":
    main()
