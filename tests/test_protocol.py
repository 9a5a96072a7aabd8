"""What travels between fedgin's ServerApp and ClientApp (fedgin.federation.protocol), the screening
strategy's configuration, FederationConfig's validators and Flower's node config as tomli_w writes it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.common.config import parse_config_args
from pydantic import ValidationError
from typer.testing import CliRunner

from fedgin.cli import app as cli_app
from fedgin.config import ClientSpec, DataSpec, RunConfig, validate
from fedgin.errors import ConfigError
from fedgin.federation import protocol, run_federation
from fedgin.federation.client import build_client_app, site_settings, train_round
from fedgin.federation.fedavg import ScreenedFedAvg
from fedgin.federation.flower import node_config_argument, supernode_command
from fedgin.federation.server import build_strategy
from test_federation import fl_config


# -- a ClientApp that notes what each train message carried (module level: Ray's workers import it) -------
def noting_train(message: Message, context: Context) -> Message:
    """fedgin's client, also writing down the records of every train message it gets."""
    carried = sorted(message.content.keys())
    settings = message.content.get(protocol.SETTINGS)
    reply = train_round(message, context)
    config, spec = site_settings(message, context)
    note = {"records": carried, "round": int(message.content["config"]["server-round"])}
    if settings is not None:
        run = json.loads(str(settings[protocol.RUN_SETTINGS]))
        note["site"] = json.loads(str(settings[protocol.SITE_SPEC]))["name"]
        note["run_clients"], note["run_server_eval"] = (
            run["federation"]["clients"],
            run["federation"]["server_eval"],
        )
        note["run_data"] = run["data"]
    folder = config.output / "notes"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{spec.name}_{len(list(folder.glob(f'{spec.name}_*')))}.json").write_text(json.dumps(note))
    return reply


def notes(run_dir: Path, site: str) -> list[dict]:
    paths = sorted((run_dir / "notes").glob(f"{site}_*.json"), key=lambda path: int(path.stem.split("_")[-1]))
    return [json.loads(path.read_text()) for path in paths]


def test_a_site_gets_only_its_own_spec_once_per_server_process(
    caches: dict[str, Path], tmp_path: Path
) -> None:
    config = fl_config(caches, tmp_path / "run", rounds=3, client_validation=False)
    app = build_client_app(noting_train)
    assert run_federation(config, stop_after=2, client_app=app).rounds == 2
    assert run_federation(config, resume=True, client_app=app).rounds == 3  # a new server process
    for site in ("ct", "mri"):
        first, second, resumed = notes(config.output, site)
        assert [first["round"], second["round"], resumed["round"]] == [1, 2, 3]
        # the first message of each server process: the run's settings and this site's spec only
        for note in (first, resumed):
            assert note["records"] == sorted(["arrays", "config", protocol.SETTINGS])
            assert note["site"] == site
            assert note["run_clients"] == [] and note["run_server_eval"] == []
            assert note["run_data"] == {"train": [], "val": None, "test": []}
        # later rounds: the weights and the round's settings, nothing static
        assert second["records"] == ["arrays", "config"] and "site" not in second


def train_message(node: int, content: dict) -> Message:
    """A train message as the server's grid delivers it (outside a ServerApp, with its metadata given)."""
    metadata = Metadata(
        run_id=1, message_id=f"to-{node}", src_node_id=0, dst_node_id=node, reply_to_message_id="",
        group_id="", created_at=time.time(), ttl=3600.0, message_type=MessageType.TRAIN,
    )  # fmt: skip
    return Message(RecordDict(content), metadata=metadata)


def reply(node: int, content: dict) -> Message:
    return Message(RecordDict(content), reply_to=train_message(node, {}))


def test_site_settings_are_kept_in_the_nodes_state_with_its_local_caches(tmp_path: Path) -> None:
    config = RunConfig(
        federation={"clients": [{"name": "ct", "data": [{"cache": "/server/view"}]}], "min_clients": 1}
    )
    spec = config.federation.clients[0]
    context = Context(
        run_id=1, node_id=7, node_config={"client-name": "ct", "cache": str(tmp_path / "local")},
        state=RecordDict(), run_config={},
    )  # fmt: skip
    settings = protocol.settings_record(config, spec)
    first = train_message(
        7, {protocol.CONFIG: ConfigRecord({"server-round": 1}), protocol.SETTINGS: settings}
    )
    later = train_message(7, {protocol.CONFIG: ConfigRecord({"server-round": 2})})
    received, site = site_settings(first, context)
    assert received.federation.clients == [] and received.model == config.model
    assert site.name == "ct" and [entry.cache for entry in site.data] == [tmp_path / "local"]
    assert site_settings(later, context) == (received, site)
    with pytest.raises(ConfigError, match="holds no run settings"):
        site_settings(later, Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={}))
    # the query's answer: the site's name in deployment, its partition in simulation
    assert dict(protocol.site_identity(context.node_config)) == {"client-name": "ct"}
    assert dict(protocol.site_identity({"partition-id": 1, "num-partitions": 2})) == {"partition-id": 1}


def test_screening_is_configured_through_init_and_uses_flowers_keys() -> None:
    strategy = ScreenedFedAvg(
        local_keys={"norm"}, node_timeout_s=5.0, weighted_by_key="examples", arrayrecord_key="weights",
        min_train_nodes=1, min_available_nodes=1, fraction_evaluate=0.0,
    )  # fmt: skip
    assert strategy.local_keys == {"norm"} and strategy.node_timeout_s == 5.0
    reference = ArrayRecord({"w": Array(np.zeros(3, np.float32)), "norm": Array(np.zeros(2, np.float32))})
    strategy.reference, strategy.sent = reference, {5, 6, 7, 8}
    good = {
        "weights": ArrayRecord({"w": Array(np.ones(3, np.float32))}),
        "metrics": MetricRecord({"examples": 3}),
    }
    fedgin_keys = {**good, "metrics": MetricRecord({"num-examples": 3})}
    other_arrays = {"arrays": good["weights"], "metrics": good["metrics"]}
    strategy.withhold(8, "unknown site: client 'x' is not in federation.clients")
    arrays, _ = strategy.aggregate_train(1, [reply(5, good), reply(6, fedgin_keys), reply(7, other_arrays)])
    assert arrays is not None and np.array_equal(arrays["w"].numpy(), np.ones(3, np.float32))
    reasons = {report.node_id: report.reason for report in strategy.reports}
    assert reasons[5] == "" and reasons[6] == "no positive examples in the reply's metrics"
    assert reasons[7] == "reply holds no ArrayRecord 'weights'"
    assert reasons[8].startswith("unknown site") and 8 not in strategy.sent

    config = RunConfig(federation={"strategy": "fedprox", "proximal_mu": 0.3, "round_timeout_s": 30})
    fedprox = build_strategy(config, {"norm"})
    assert (fedprox.weighted_by_key, fedprox.arrayrecord_key) == (protocol.NUM_EXAMPLES, protocol.ARRAYS)
    assert fedprox.proximal_mu == 0.3 and fedprox.node_timeout_s == 30 and fedprox.local_keys == {"norm"}
    # Simulation samples a round once every site's node is registered (Flower registers them while the
    # ServerApp runs); a deployment waits for min_clients, as a site may be down.
    sites = [{"name": name, "data": [{"cache": "c"}]} for name in "abcd"]
    four = RunConfig(federation={"clients": sites, "min_clients": 2})
    assert build_strategy(four, set(), wait_for_all_sites=True).min_available_nodes == 4
    assert build_strategy(four, set()).min_available_nodes == 2


def test_federation_checks_are_validators_of_federation_config(tmp_path: Path) -> None:
    site = {"name": "a", "data": [{"cache": "c"}]}
    with pytest.raises(ConfigError, match=r"fl.toml: federation.clients: client names must be unique"):
        validate({"federation": {"clients": [site, site]}}, RunConfig, source="fl.toml")
    with pytest.raises(ValidationError, match="unique"):
        RunConfig(federation={"clients": [site, site]})
    # Too few sites for min_clients: refused where the federation starts (the table alone reads fine).
    one_site = validate({"federation": {"clients": [site]}}, RunConfig)
    with pytest.raises(ConfigError, match="min_clients is 2 but only 1 clients are configured"):
        one_site.federation.require_clients()
    RunConfig()  # single-site training: no clients, min_clients' default of 2
    with pytest.raises(ConfigError, match=r"federation.clients: no clients \(add \[\[federation.clients\]\]"):
        RunConfig().federation.require_clients()
    # `fedgin federate` without sites: one line, before anything runs
    (tmp_path / "fl.toml").write_text(f'output = "{tmp_path / "run"}"\n[federation]\nrounds = 1\n')
    result = CliRunner().invoke(cli_app, ["federate", "--config", str(tmp_path / "fl.toml")])
    assert result.exit_code == 2 and "error: federation.clients: no clients" in result.stderr
    assert not (tmp_path / "run").exists()


def test_node_config_is_flowers_syntax_with_values_written_by_tomli_w(tmp_path: Path) -> None:
    odd = str(tmp_path / "my caches" / "ünï=1 #x\\y'z\tend")
    values = {"client-name": "site.a-1", "cache": odd, "flag": True, "count": 3}
    argument = node_config_argument(values)
    assert parse_config_args([argument]) == values
    first, second = tmp_path / "a b", tmp_path / "c'd"
    command = supernode_command("ct", [first, second], insecure=True)
    parsed = parse_config_args([command[command.index("--node-config") + 1]])
    assert parsed == {"client-name": "ct", "cache": f"{first}{os.pathsep}{second}"}
    with pytest.raises(ConfigError, match="double quote"):
        node_config_argument({"cache": 'a"b'})


def test_an_unknown_site_name_is_refused_by_the_server() -> None:
    config = RunConfig(
        federation={"clients": [{"name": "ct", "data": [DataSpec(cache=Path("c"))]}], "min_clients": 1}
    )
    assert protocol.client_spec(config, {"client-name": "ct"}) == ClientSpec(name="ct", data=[{"cache": "c"}])
    with pytest.raises(ConfigError, match=r"'mri' is not in federation\.clients"):
        protocol.client_spec(config, {"client-name": "mri"})
