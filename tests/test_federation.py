"""Federated training on Flower's simulation engine: records, FedAvg's aggregate, resume, faults."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message
from pydantic import ValidationError
from typer.testing import CliRunner

from fedgin.checkpoints import load_checkpoint, load_model
from fedgin.cli import app as cli_app
from fedgin.config import ClientSpec, DataSpec, RunConfig, dump_toml, validate
from fedgin.errors import ConfigError
from fedgin.federation import FederationError, run_federation
from fedgin.federation.client import (
    build_client_app,
    client_run_config,
    proximal_term,
    site_settings,
    train_round,
)
from fedgin.federation.protocol import client_spec
from fedgin.federation.server import initial_state
from fedgin.federation.weights import norm_keys, screen, to_record
from fedgin.model import build_unet
from fedgin.training.schedule import learning_rate


def fl_config(
    caches: dict[str, Path], output: Path, clients: list[dict] | None = None, **fed: object
) -> RunConfig:
    """Two sites with different amounts of data (CT: train + test splits, MRI: train only)."""
    clients = clients or [
        {"name": "ct", "data": [{"cache": caches["ct"], "splits": ["train", "test"]}]},
        {"name": "mri", "data": [{"cache": caches["t2"]}]},
    ]
    return RunConfig(
        name="fl-tiny",
        seed=7,
        output=output,
        model={"channels": (4, 8), "strides": (2,), "num_res_units": 1},
        train={"batch_size": 4, "device": "cpu"},
        federation={
            "rounds": 2,
            "local_steps": 2,
            "min_clients": 2,
            "round_timeout_s": 120,
            "clients": clients,
            "server_eval": [{"cache": caches["ct"]}, {"cache": caches["t2"]}],
            **fed,
        },
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def rounds_csv(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "rounds.csv", newline="") as handle:
        return list(csv.DictReader(handle))


#: How long the 'slow' client of the timeout test keeps its reply (the round timeout is 40 s).
SLOW_CLIENT_S = 70.0


# -- ClientApps for the tests (module level so that Ray's workers can import them) ----------------------
def recording_train(message: Message, context: Context) -> Message:
    """fedgin's client, also saving what it sends so the test can recompute FedAvg's mean."""
    reply = train_round(message, context)
    config, _ = site_settings(message, context)
    name = str(reply.content["client"]["name"])
    round_ = int(message.content["config"]["server-round"])
    folder = config.output / "client_updates"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "arrays": reply.content["arrays"].to_torch_state_dict(),
            "num-examples": float(reply.content["metrics"]["num-examples"]),
            "lr": float(message.content["config"]["lr"]),
        },
        folder / f"{name}_round{round_}.pt",
    )
    return reply


def faulty_train(message: Message, context: Context) -> Message:
    """fedgin's client, except that client 'nan' replies with a NaN among its weights."""
    reply = train_round(message, context)
    if str(reply.content["client"]["name"]) == "nan":
        arrays = reply.content["arrays"]
        key = next(iter(arrays.keys()))
        values = arrays[key].numpy().copy()
        values.flat[0] = np.nan
        arrays[key] = Array(values)
    return reply


def slow_train(message: Message, context: Context) -> Message:
    """fedgin's client, except that client 'slow' replies long after the round timeout."""
    reply = train_round(message, context)
    if str(reply.content["client"]["name"]) == "slow":
        time.sleep(SLOW_CLIENT_S)
    return reply


# -- without Flower -------------------------------------------------------------------------------------
def test_screen_rejects_nan_wrong_shape_and_keys() -> None:
    reference = ArrayRecord({"a": Array(np.zeros((2, 3), np.float32)), "b": Array(np.zeros(4, np.float32))})
    good = ArrayRecord({"a": Array(np.ones((2, 3), np.float32)), "b": Array(np.ones(4, np.float32))})
    assert screen(good, reference, {"a", "b"}) is None
    nan = ArrayRecord({"a": Array(np.full((2, 3), np.nan, np.float32)), "b": Array(np.ones(4, np.float32))})
    assert "non-finite" in screen(nan, reference, {"a", "b"})
    inf = ArrayRecord({"a": Array(np.ones((2, 3), np.float32)), "b": Array(np.full(4, np.inf, np.float32))})
    assert "non-finite weights in b" in screen(inf, reference, {"a", "b"})
    shape = ArrayRecord({"a": Array(np.ones((3, 2), np.float32)), "b": Array(np.ones(4, np.float32))})
    assert "wrong shape for a" in screen(shape, reference, {"a", "b"})
    assert "wrong keys" in screen(ArrayRecord({"a": good["a"]}), reference, {"a", "b"})


def test_client_seeds_and_config_checks(caches: dict[str, Path], tmp_path: Path) -> None:
    config = fl_config(caches, tmp_path / "run")
    spec = client_spec(config, {"partition-id": 1})
    assert spec.name == "mri" and client_spec(config, {"client-name": "ct"}).name == "ct"
    first, again = client_run_config(config, spec, 1), client_run_config(config, spec, 1)
    assert first.seed == again.seed != client_run_config(config, spec, 2).seed
    assert first.data.train == spec.data
    with pytest.raises(ConfigError, match="no entry"):
        client_spec(config, {"partition-id": 5})
    # Unique names are validators (of a TOML file: one ConfigError line; of RunConfig(...)); too few sites
    # for min_clients is refused where the federation starts.
    raw = fl_config(caches, tmp_path / "x").model_dump(mode="json")
    with pytest.raises(ConfigError, match="min_clients"):
        fl_config(caches, tmp_path / "x", min_clients=3).federation.require_clients()
    duplicate = [ClientSpec(name="a", data=[DataSpec(cache=caches["ct"])])] * 2
    with pytest.raises(ConfigError, match="unique"):
        validate(
            {**raw, "federation": {**raw["federation"], "clients": [c.model_dump() for c in duplicate]}},
            RunConfig,
        )
    with pytest.raises(ValidationError, match="unique"):
        fl_config(caches, tmp_path / "y", clients=duplicate)
    # FedBN keeps the instance norms' affine weights local, never convolutions.
    keys = norm_keys(build_unet(config.model))
    assert keys and all(".N." in key for key in keys)


# -- real Flower simulations ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(caches: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = fl_config(caches, tmp_path_factory.mktemp("fl") / "full")
    result = run_federation(config)
    assert result.rounds == 2
    return config.output


def test_federation_records_and_checkpoints(caches: dict[str, Path], uninterrupted: Path) -> None:
    run = uninterrupted
    rows = rounds_csv(run)
    model_bytes = sum(v.numel() * v.element_size() for v in weights(run / "checkpoints" / "last.pt").values())
    assert [row["round"] for row in rows] == ["1", "2"]
    for row in rows:
        assert row["clients"] == "2" and row["left_out"] == ""
        assert row["examples_ct"] == "36" and row["examples_mri"] == "24"  # slices of 3 and 2 cases
        for column in ("loss_ct", "loss_mri", "train_loss", "val_dice_ct", "val_dice_mri_t2", "val_score"):
            assert math.isfinite(float(row[column])), column
        organs = [
            float(row[f"val_dice_ct_{organ}"])
            for organ in ("liver", "kidneys", "spleen", "pancreas", "gallbladder")
        ]
        # Each site validated its own trained model on its own val cases, per domain.
        assert 0.0 <= float(row["site_val_ct_ct"]) <= 1.0 and 0.0 <= float(row["site_val_mri_mri_t2"]) <= 1.0
        assert "site_val_ct_mri_t2" not in row and "site_val_mri_ct" not in row
        # The per-domain figure is the mean over cases of each case's organ mean, hence the organs' mean.
        assert float(row["val_dice_ct"]) == pytest.approx(sum(organs) / 5, abs=1e-4)
        # Both directions carry the whole model to / from each of the two clients.
        assert int(row["bytes_up"]) >= 2 * model_bytes and int(row["bytes_down"]) >= 2 * model_bytes
    assert (run / "learning_curve.png").stat().st_size > 10_000
    config = RunConfig.model_validate(tomllib.loads((run / "config.toml").read_text()))
    assert config.federation.rounds == 2 and [c.name for c in config.federation.clients] == ["ct", "mri"]
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["round"] == 2 and len(last["history"]) == 2
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["round"] == best["best_round"] == last["best_round"]
    _, loaded_config = load_model(run / "checkpoints" / "last.pt")  # `fedgin evaluate` can use it
    assert loaded_config.federation.clients == config.federation.clients
    start = initial_state(config)
    changed = [key for key, value in last["model"].items() if not torch.equal(value, start[key])]
    assert len(changed) > len(start) // 2


def test_fedavg_aggregate_and_exact_resume(
    caches: dict[str, Path], uninterrupted: Path, tmp_path: Path
) -> None:
    config = fl_config(caches, tmp_path / "resumed")
    first = run_federation(config, stop_after=1, client_app=build_client_app(recording_train))
    assert first.rounds == 1 and len(rounds_csv(config.output)) == 1

    # The global model after round 1 is the num-examples-weighted mean of the two clients' weights.
    updates = [torch.load(config.output / "client_updates" / f"{n}_round1.pt") for n in ("ct", "mri")]
    assert [u["num-examples"] for u in updates] == [36.0, 24.0]
    total = sum(u["num-examples"] for u in updates)
    global_1 = weights(config.output / "checkpoints" / "last.pt")
    for key, value in global_1.items():
        expected = sum(u["arrays"][key].double() * u["num-examples"] / total for u in updates)
        torch.testing.assert_close(value.double(), expected.to(value.dtype).double(), rtol=1e-6, atol=1e-7)
    assert not torch.equal(updates[0]["arrays"][key], updates[1]["arrays"][key])

    with pytest.raises(ConfigError, match="not empty"):
        run_federation(config)
    second = run_federation(config, resume=True, client_app=build_client_app(recording_train))
    assert second.rounds == 2 and [row["round"] for row in rounds_csv(config.output)] == ["1", "2"]
    # The poly schedule runs over rounds: the resumed server sent round 2 the rate of round 2.
    assert config.train.lr_schedule == "poly"
    expected = [learning_rate(config.train, r, 2) for r in range(2)]
    assert expected[1] < expected[0]
    for round_, lr in enumerate(expected, 1):
        for name in ("ct", "mri"):
            update = torch.load(config.output / "client_updates" / f"{name}_round{round_}.pt")
            assert update["lr"] == lr
    for resumed_row, full_row in zip(rounds_csv(config.output), rounds_csv(uninterrupted), strict=True):
        assert resumed_row["lr"] == full_row["lr"] and float(resumed_row["lr"]) == pytest.approx(
            expected[int(resumed_row["round"]) - 1], rel=1e-5
        )
    resumed, full = (
        weights(config.output / "checkpoints" / "last.pt"),
        weights(uninterrupted / "checkpoints" / "last.pt"),
    )
    assert resumed.keys() == full.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0, msg=key)


def test_server_killed_mid_round_resumes_to_the_same_weights(
    caches: dict[str, Path], uninterrupted: Path, tmp_path: Path
) -> None:
    """`fedgin federate` SIGKILLed (with its Ray workers) during round 2, then `--resume`d."""
    config = fl_config(caches, tmp_path / "killed")
    config_path = tmp_path / "fl.toml"
    dump_toml(config, config_path)
    last = config.output / "checkpoints" / "last.pt"
    with open(tmp_path / "federate.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "fedgin", "federate", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill takes Ray's processes with it
        )
        try:
            deadline = time.monotonic() + 300
            while not last.exists() and server.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert server.returncode == -signal.SIGKILL, (tmp_path / "federate.log").read_text()
    assert load_checkpoint(last)["round"] == 1  # killed after round 1 was saved, before round 2 was

    result = CliRunner().invoke(cli_app, ["federate", "--config", str(config_path), "--resume"])
    assert result.exit_code == 0, result.output
    assert " 2 rounds in " in " ".join(result.output.split())  # `fedgin federate`'s last line
    assert [row["round"] for row in rounds_csv(config.output)] == ["1", "2"]
    resumed, full = weights(last), weights(uninterrupted / "checkpoints" / "last.pt")
    assert resumed.keys() == full.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0, msg=key)


def test_faulty_clients_are_left_out_fedprox_fedbn(
    caches: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ct = [{"cache": caches["ct"]}]
    missing = [{"cache": tmp_path / "no-such-cache"}]  # this site raises while loading its data
    # A missing cache is refused before Ray starts (test_federation_failures.py); without that check the
    # site fails inside its ClientApp, as one whose disk goes away mid-run would.
    monkeypatch.setattr("fedgin.federation.simulation.check_sites", lambda config: None)
    clients = [
        {"name": name, "data": data}
        for name, data in (("crash", missing), ("ct", ct), ("mri", [{"cache": caches["t2"]}]), ("nan", ct))
    ]
    # Also exercises FedProx (proximal-mu sent to the clients) and FedBN (norm weights stay on the sites).
    config = fl_config(
        caches,
        tmp_path / "faults",
        clients=clients,
        rounds=1,
        strategy="fedprox",
        proximal_mu=0.1,
        fedbn=True,
    )
    # 'crash' and 'nan' are left out of the run's only round: the run fails once its results are written.
    with (
        caplog.at_level("WARNING", logger="fedgin.federation"),
        pytest.raises(FederationError, match="2 of 4 sites contributed to none of the 1 round") as raised,
    ):
        run_federation(config, client_app=build_client_app(faulty_train))
    assert "site 'crash': client error: client crash: DataError" in str(raised.value)
    assert "site 'nan': non-finite weights" in str(raised.value)
    assert load_checkpoint(config.output / "checkpoints" / "last.pt")["round"] == 1
    (row,) = rounds_csv(config.output)
    assert row["clients"] == "2"
    assert "examples_crash" not in row and "examples_nan" not in row
    assert "client crash: DataError" in row["left_out"] and "no-such-cache" in row["left_out"]
    assert "nan: non-finite weights" in row["left_out"]
    assert "non-finite weights" in caplog.text and "client crash: DataError" in caplog.text
    assert all(
        torch.isfinite(v.float()).all() for v in weights(config.output / "checkpoints" / "last.pt").values()
    )
    final = weights(config.output / "checkpoints" / "last.pt")
    start, local = initial_state(config), norm_keys(build_unet(config.model))
    assert all(torch.equal(final[key], start[key]) for key in local)  # FedBN: never sent, never averaged
    assert not all(torch.equal(final[key], start[key]) for key in set(start) - local)
    full_reply = to_record(final).count_bytes()  # serialized arrays of the whole model
    assert int(row["bytes_up"]) < 3 * full_reply  # three replies (ct, mri, nan) without the norm weights


def test_proximal_term_is_zero_at_the_global_weights_and_grows() -> None:
    model = build_unet(RunConfig(model={"channels": (4, 8), "strides": (2,)}).model)
    term = proximal_term(model, mu=0.5)
    assert float(term(model)) == 0.0
    with torch.no_grad():
        first = next(model.parameters())
        first.add_(1.0)
    assert float(term(model)) == pytest.approx(0.5 * 0.5 * first.numel())


@pytest.mark.slow
def test_slow_client_is_left_out_after_the_round_timeout(caches: dict[str, Path], tmp_path: Path) -> None:
    clients = [
        {"name": "ct", "data": [{"cache": caches["ct"]}]},
        {"name": "slow", "data": [{"cache": caches["ct"]}]},
        {"name": "mri", "data": [{"cache": caches["t2"]}]},
    ]
    config = fl_config(caches, tmp_path / "timeout", clients=clients, rounds=1, round_timeout_s=40)
    started = time.perf_counter()
    with pytest.raises(FederationError, match="site 'slow': left out of every round"):
        # 'slow' never contributed to the only round
        run_federation(config, client_app=build_client_app(slow_train))
    (row,) = rounds_csv(config.output)
    assert row["clients"] == "2" and "no reply before the round timeout" in row["left_out"]
    assert float(row["seconds"]) < SLOW_CLIENT_S
    assert time.perf_counter() - started < 3 * SLOW_CLIENT_S
