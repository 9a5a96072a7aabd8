"""The ClientApp: one site trains the broadcast global model on its own cached slices with GIN."""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedgin.config import ClientSpec, DataConfig, RunConfig
from fedgin.errors import ConfigError
from fedgin.federation.weights import norm_keys, to_record, to_state_dict
from fedgin.training.data import build_train_slices, build_validation_set
from fedgin.training.seeding import derive_seed
from fedgin.training.trainer import ExtraLoss, LocalTrainer

#: Keys of the train message's ConfigRecord written by the server.
CONFIG_KEY = "fedgin-config"
#: The round's learning rate (the server runs the schedule over rounds); absent: train.lr, constant.
LR_KEY = "lr"
#: Key of the client's Context.state record holding FedBN's local normalisation weights.
LOCAL_STATE_KEY = "fedbn-local"


def client_spec(config: RunConfig, node_config: dict) -> ClientSpec:
    """The site this node is: `client-name` in the node config (deployment) or the partition id."""
    clients = config.federation.clients
    if "client-name" in node_config:
        name = str(node_config["client-name"])
        for spec in clients:
            if spec.name == name:
                return spec
        raise ConfigError(f"client {name!r} is not in federation.clients")
    partition = int(node_config.get("partition-id", -1))
    if not 0 <= partition < len(clients):
        raise ConfigError(f"partition {partition} has no entry in federation.clients ({len(clients)})")
    return clients[partition]


def client_run_config(config: RunConfig, spec: ClientSpec, server_round: int) -> RunConfig:
    """The client's local run: its data and GIN settings, seed derived from (seed, client, round).

    Deriving the seed from the round (instead of carrying a step counter across rounds) makes a round
    a pure function of (global weights, run seed, client, round), so a resumed federation replays the
    uninterrupted one exactly.
    """
    return config.model_copy(
        update={
            "seed": derive_seed(config.seed, "client", spec.name, server_round),
            "data": DataConfig(train=spec.data, val=[], test=[]),
            "gin": spec.gin or config.gin,
        }
    )


def proximal_term(model: nn.Module, mu: float) -> ExtraLoss:
    """FedProx's mu/2 ||w - w_global||^2 against the weights the round started from."""
    anchors = [parameter.detach().clone() for parameter in model.parameters()]

    def term(current: nn.Module) -> torch.Tensor:
        total = sum(
            ((parameter - anchor) ** 2).sum()
            for parameter, anchor in zip(current.parameters(), anchors, strict=True)
        )
        return 0.5 * mu * total

    return term


def train_round(message: Message, context: Context) -> Message:
    """Load the global weights, train locally, reply with weights, num-examples and the train loss.

    The optimizer is created afresh every round (AdamW moments are not carried across rounds, as in the
    authors' code), which also keeps clients stateless apart from FedBN's local normalisation weights.
    """
    settings = message.content["config"]
    config = RunConfig.model_validate_json(str(settings[CONFIG_KEY]))
    spec = client_spec(config, dict(context.node_config))
    try:
        return _train(message, context, config, spec)
    except Exception as error:  # the server logs the reason; name the site so the log says which one
        raise RuntimeError(f"client {spec.name}: {type(error).__name__}: {error}") from error


def _train(message: Message, context: Context, config: RunConfig, spec: ClientSpec) -> Message:
    settings = message.content["config"]
    federation = config.federation
    server_round = int(settings["server-round"])
    local = client_run_config(config, spec, server_round)

    train_set = build_train_slices(local)
    trainer = LocalTrainer(local, train_set, lr=float(settings.get(LR_KEY, config.train.lr)))
    model = trainer.model
    reference = model.state_dict()
    state = to_state_dict(message.content["arrays"], reference)
    local_keys = norm_keys(model) if federation.fedbn else set()
    if local_keys and LOCAL_STATE_KEY in context.state.array_records:
        state.update(to_state_dict(context.state[LOCAL_STATE_KEY], reference))
    model.load_state_dict(state)

    mu = float(settings.get("proximal-mu", 0.0))
    extra = proximal_term(model, mu) if mu > 0 else None
    steps = federation.local_steps or federation.local_epochs * trainer.batches_per_epoch
    stats = trainer.train_steps(steps, extra_loss=extra)

    validation: dict[str, float] = {}
    if federation.client_validation:
        # Validation Dice per domain stays a summary figure: no image or label leaves the site.
        site_validation = build_validation_set(local.model_copy(update={"data": DataConfig(train=spec.data)}))
        scores = site_validation.evaluate(model, trainer.device, trainer.amp, local.model)
        validation = {f"val-dice-{domain}": value for domain, value in scores.items()}

    trained = model.state_dict()
    if local_keys:
        context.state[LOCAL_STATE_KEY] = to_record(trained, exclude=set(trained) - local_keys)
    reply = RecordDict(
        {
            "arrays": to_record(trained, exclude=local_keys, dtype=federation.update_dtype),
            "metrics": MetricRecord(
                {
                    "num-examples": len(train_set),
                    "train-loss": stats.mean_loss,
                    "steps": stats.steps,
                    "seconds": stats.seconds,
                }
            ),
            "client": ConfigRecord({"name": spec.name, **validation}),
        }
    )
    return Message(content=reply, reply_to=message)


def build_client_app() -> ClientApp:
    """The fedgin ClientApp (stateless apart from FedBN's local weights in the node's Context)."""
    app = ClientApp()
    app.train()(train_round)
    return app


app = build_client_app()

__all__ = ["app", "build_client_app", "client_run_config", "client_spec", "train_round"]
