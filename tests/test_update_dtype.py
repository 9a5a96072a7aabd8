"""federation.update_dtype = "float16": half the bytes each way, float32 training and averaging."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message
from rich.console import Console

from fedgin.checkpoints import load_checkpoint
from fedgin.config import ModelConfig, RunConfig, validate
from fedgin.errors import ConfigError
from fedgin.federation import run_federation
from fedgin.federation.client import build_client_app, site_settings, train_round
from fedgin.federation.server import initial_state
from fedgin.federation.weights import to_float32, to_record, to_state_dict
from fedgin.model import build_unet
from test_federation import fl_config  # two sites (CT: train + test, MRI T2: train), tiny U-Net


# -- a ClientApp that keeps what it sends (module level so that Ray's workers can import it) ------------
def recording_train(message: Message, context: Context) -> Message:
    reply = train_round(message, context)
    config, _ = site_settings(message, context)
    folder = config.output / "client_updates"
    folder.mkdir(parents=True, exist_ok=True)
    received = message.content["arrays"]
    sent = reply.content["arrays"]
    torch.save(
        {
            "received_dtypes": sorted({str(received[key].dtype) for key in received}),
            "sent": {key: torch.from_numpy(sent[key].numpy().copy()) for key in sent},
            "num-examples": float(reply.content["metrics"]["num-examples"]),
        },
        folder / f"{reply.content['client']['name']}.pt",
    )
    return reply


def rounds_csv(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "rounds.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# -- without Flower -------------------------------------------------------------------------------------
def test_records_in_float16_keep_integer_buffers_and_come_back_as_float32() -> None:
    state = build_unet(ModelConfig(channels=(4, 8), strides=(2,), norm="batch")).state_dict()
    assert any(not value.dtype.is_floating_point for value in state.values())  # num_batches_tracked
    full, half = to_record(state), to_record(state, dtype="float16")
    for key, value in state.items():
        expected = "float16" if value.dtype.is_floating_point else str(value.numpy().dtype)
        assert half[key].dtype == expected, key
        assert full[key].dtype == str(value.numpy().dtype), key
    floats = sum(value.numel() for value in state.values() if value.dtype.is_floating_point)
    assert full.count_bytes() - half.count_bytes() == 2 * floats
    back = to_state_dict(half, state)
    for key, value in state.items():
        assert back[key].dtype == value.dtype
        torch.testing.assert_close(
            back[key], value.half().to(value.dtype) if value.is_floating_point() else value
        )
    widened = to_float32(half)
    assert {widened[key].dtype for key in widened} == {"float32", "int64"}
    assert to_float32(full) is full
    # Averaging float16 replies in float16 would round every partial sum; in float32 it does not.
    record = ArrayRecord({"w": Array(np.full(3, 1.0 / 3.0, np.float16))})
    assert to_float32(record)["w"].numpy().dtype == np.float32
    with pytest.raises(ConfigError, match="update_dtype"):
        validate({"federation": {"update_dtype": "bfloat16"}}, RunConfig)


# -- real Flower simulations ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(caches: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunConfig]:
    base = tmp_path_factory.mktemp("update_dtype")
    configs = {}
    for dtype in ("float32", "float16"):
        config = fl_config(caches, base / dtype, rounds=1, update_dtype=dtype)
        result = run_federation(
            config, console=Console(quiet=True), client_app=build_client_app(recording_train)
        )
        assert result.rounds == 1
        configs[dtype] = config
    return configs


def test_float16_halves_the_weight_bytes_each_way_and_still_trains(runs: dict[str, RunConfig]) -> None:
    config = runs["float32"]
    start = initial_state(config)
    floats = sum(value.numel() for value in start.values() if value.dtype.is_floating_point)
    weight_bytes = to_record(start).count_bytes()
    half_bytes = to_record(start, dtype="float16").count_bytes()
    # The weights' payload halves (4 -> 2 bytes a value); keys and shapes (a third of this tiny model's
    # record, under 0.1% of the default model's) do not shrink.
    assert weight_bytes - half_bytes == 2 * floats == (4 * floats) // 2

    rows = {dtype: rounds_csv(run.output) for dtype, run in runs.items()}
    assert all(len(table) == 1 and table[0]["clients"] == "2" for table in rows.values())
    row32, row16 = rows["float32"][0], rows["float16"][0]
    for column in ("bytes_down", "bytes_up"):
        # Two clients each way; the rest of a message (the run's settings, metrics) is the same size.
        assert int(row32[column]) - int(row16[column]) == 2 * (weight_bytes - half_bytes), column
        assert int(row32[column]) >= 2 * weight_bytes

    # The sites received and sent float16 weights (float32 in the float32 run).
    for dtype, run in runs.items():
        updates = {name: torch.load(run.output / "client_updates" / f"{name}.pt") for name in ("ct", "mri")}
        for update in updates.values():
            assert update["received_dtypes"] == [dtype]
            assert {value.dtype for value in update["sent"].values()} == {getattr(torch, dtype)}
        # The server averaged them in float32: its global model is the weighted mean of the replies.
        total = sum(update["num-examples"] for update in updates.values())
        global_ = load_checkpoint(run.output / "checkpoints" / "last.pt")["model"]
        for key, value in global_.items():
            assert value.dtype == torch.float32, key
            expected = sum(u["sent"][key].double() * u["num-examples"] / total for u in updates.values())
            torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7, msg=key)

    # The float16 run trained: finite loss, weights moved, and close to the float32 run's weights.
    assert math.isfinite(float(row16["train_loss"])) and math.isfinite(float(row16["val_score"]))
    global32 = load_checkpoint(runs["float32"].output / "checkpoints" / "last.pt")["model"]
    global16 = load_checkpoint(runs["float16"].output / "checkpoints" / "last.pt")["model"]
    moved = [key for key, value in global16.items() if (value - start[key]).abs().max() > 1e-4]
    assert len(moved) > len(start) // 2
    for key, value in global16.items():
        torch.testing.assert_close(value, global32[key], rtol=0, atol=2e-2, msg=key)
