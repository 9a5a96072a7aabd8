"""The ClientApp: one site trains the broadcast global model on its own cached slices with GIN."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedgin.config import ClientSpec, DataConfig, Modality, RunConfig
from fedgin.errors import ConfigError
from fedgin.federation import protocol
from fedgin.federation.faults import poison_update, shuffle_labels
from fedgin.federation.privacy import clip_on_site
from fedgin.federation.secure_aggregation import (
    is_secure,
    name_arrays,
    plain_content,
    secagg_mod,
    secure_reply,
    unit_weight,
)
from fedgin.federation.weights import norm_keys, to_record, to_state_dict
from fedgin.model import build_unet
from fedgin.training.data import build_train_slices, build_validation_set
from fedgin.training.seeding import derive_seed, torch_generator
from fedgin.training.trainer import ExtraLoss, LocalTrainer

#: What a ClientApp registers for train messages (fedgin's `train_round`, or a test's wrapper of it).
TrainFunction = Callable[[Message, Context], Message]


def local_caches(spec: ClientSpec, node_config: Mapping) -> ClientSpec:
    """The site's spec with its data read from its own caches (`cache` in the node config), if given.

    `cache` is one folder (it replaces the cache of every data entry of the site) or one folder per
    data entry, in the order of the run config, separated by the OS path separator (`:` on Linux).
    """
    if protocol.NODE_CACHE not in node_config:
        return spec
    caches = [Path(part) for part in str(node_config[protocol.NODE_CACHE]).split(os.pathsep) if part]
    if len(caches) == 1:
        caches *= len(spec.data)
    if len(caches) != len(spec.data):
        raise ConfigError(
            f"site {spec.name!r}: the node config names {len(caches)} caches but the run config gives the "
            f"site {len(spec.data)} data entries (one cache for all, or one per entry separated by "
            f"{os.pathsep!r})"
        )
    data = [entry.model_copy(update={"cache": cache}) for entry, cache in zip(spec.data, caches, strict=True)]
    return spec.model_copy(update={"data": data})


def site_settings(message: Message, context: Context) -> tuple[RunConfig, ClientSpec]:
    """The run's settings and this site's spec: from the node's first train message, kept in its state.

    The site's local caches (node config `cache`) are applied once, when the spec arrives.
    """
    return settings_from(message.content, context, message.metadata.dst_node_id)


def _validated(model: type[RunConfig] | type[ClientSpec], text: object, node: int):
    """The server's settings as the site's model, or one line naming what does not validate."""
    from pydantic import ValidationError

    from fedgin.errors import validation_problems

    try:
        return model.model_validate_json(str(text))
    except ValidationError as error:
        raise ConfigError(
            f"node {node}: the server's {model.__name__} does not validate here: {validation_problems(error)}"
        ) from None


def settings_from(content: RecordDict, context: Context, node: int) -> tuple[RunConfig, ClientSpec]:
    """`site_settings` of a train message's content (a plain one, or a SecAgg+ one made plain)."""
    state = context.state
    if protocol.SETTINGS in content.config_records:
        received = content[protocol.SETTINGS]
        config = _validated(RunConfig, received[protocol.RUN_SETTINGS], node)
        spec = local_caches(_validated(ClientSpec, received[protocol.SITE_SPEC], node), context.node_config)
        state[protocol.SITE_STATE] = ConfigRecord(
            {
                protocol.RUN_SETTINGS: received[protocol.RUN_SETTINGS],
                protocol.SITE_SPEC: spec.model_dump_json(),
            }
        )
        return config, spec
    if protocol.SITE_STATE not in state.config_records:
        raise ConfigError(
            f"node {node} holds no run settings (they come with its first train message; the server sends "
            "them again next round)"
        )
    kept = state[protocol.SITE_STATE]
    config = _validated(RunConfig, kept[protocol.RUN_SETTINGS], node)
    return config, _validated(ClientSpec, kept[protocol.SITE_SPEC], node)


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
    authors' code), which also keeps clients stateless apart from the run's settings and FedBN's local
    normalisation weights in the node's Context.
    """
    if is_secure(message):
        return train_securely(message, context)
    config, spec = site_settings(message, context)
    return train_site(message, context, config, spec)


def train_securely(message: Message, context: Context) -> Message:
    """A SecAgg+ round (fedgin.federation.secure_aggregation): the same training, the update sent masked
    by Flower's secaggplus_mod (which calls this in its stage of the protocol)."""
    content = plain_content(message)
    config, spec = settings_from(content, context, message.metadata.dst_node_id)
    keys = list(build_unet(config.model).state_dict())
    content[protocol.ARRAYS] = name_arrays(content[protocol.ARRAYS], keys)
    start = {
        key: torch.from_numpy(np.array(array.numpy())) for key, array in content[protocol.ARRAYS].items()
    }
    reply = site_round(content, context, config, spec)
    return secure_reply(message, reply, start, unit_weight(reply[protocol.METRICS]))


def train_site(message: Message, context: Context, config: RunConfig, spec: ClientSpec) -> Message:
    """One round of `spec`'s local training; an error names the site (the server logs the reason)."""
    return Message(content=site_round(message.content, context, config, spec), reply_to=message)


def site_round(content: RecordDict, context: Context, config: RunConfig, spec: ClientSpec) -> RecordDict:
    """The reply content of one round of local training on a train message's content."""
    try:
        return _train(content, context, config, spec)
    except Exception as error:
        raise RuntimeError(f"client {spec.name}: {type(error).__name__}: {error}") from error


def _train(content: RecordDict, context: Context, config: RunConfig, spec: ClientSpec) -> RecordDict:
    settings = content[protocol.CONFIG]
    federation = config.federation
    server_round = int(settings[protocol.SERVER_ROUND])
    local = client_run_config(config, spec, server_round)

    train_set = build_train_slices(local)
    per_modality = modality_examples(train_set)
    fault = federation.fault
    poisoned = fault is not None and fault.site == spec.name
    if poisoned and fault.mode == "shuffled_labels":
        train_set = shuffle_labels(train_set, torch_generator(config.seed, "fault", spec.name, server_round))
    trainer = LocalTrainer(local, train_set, lr=float(settings.get(protocol.LR, config.train.lr)))
    model = trainer.model
    reference = model.state_dict()
    state = to_state_dict(content[protocol.ARRAYS], reference)
    local_keys = norm_keys(model) if federation.fedbn else set()
    if local_keys and protocol.LOCAL_STATE in context.state.array_records:
        state.update(to_state_dict(context.state[protocol.LOCAL_STATE], reference))
    model.load_state_dict(state)

    mu = float(settings.get(protocol.PROXIMAL_MU, 0.0))
    extra = proximal_term(model, mu) if mu > 0 else None
    steps = federation.local_steps or federation.local_epochs * trainer.batches_per_epoch
    stats = trainer.train_steps(steps, extra_loss=extra)

    validation: dict[str, float] = {}
    if federation.client_validation:
        # Validation Dice per domain stays a summary figure: no image or label leaves the site.
        site_validation = build_validation_set(local.model_copy(update={"data": DataConfig(train=spec.data)}))
        scores = site_validation.evaluate(model, trainer.device, trainer.amp, local.model)
        validation = {f"{protocol.VAL_DICE_PREFIX}{domain}": value for domain, value in scores.items()}

    trained = model.state_dict()
    if poisoned:
        generator = torch_generator(config.seed, "fault", spec.name, server_round)
        trained = poison_update(trained, state, fault, generator)
    privacy_metrics: dict[str, float] = {}
    privacy = federation.privacy
    if privacy is not None:
        privacy_metrics[protocol.UNIT_WEIGHT] = 1.0
        if privacy.clip_on == "client":  # after any fault: a site clips what it sends
            trained, bit = clip_on_site(trained, state, settings, adaptive=privacy.clipping == "adaptive")
            privacy_metrics.update(bit)
    if local_keys:
        context.state[protocol.LOCAL_STATE] = to_record(trained, exclude=set(trained) - local_keys)
    reply = RecordDict(
        {
            protocol.ARRAYS: to_record(trained, exclude=local_keys, dtype=federation.update_dtype),
            protocol.METRICS: MetricRecord(
                {
                    protocol.NUM_EXAMPLES: len(train_set),
                    protocol.TRAIN_LOSS: stats.mean_loss,
                    protocol.STEPS: stats.steps,
                    protocol.SECONDS: stats.seconds,
                    **{f"{protocol.EXAMPLES_PREFIX}{m}": count for m, count in per_modality.items()},
                    **privacy_metrics,
                }
            ),
            protocol.SITE: ConfigRecord({protocol.SITE_NAME: spec.name, **validation}),
        }
    )
    return reply


def modality_examples(train_set: object) -> dict[str, int]:
    """Training examples (slices) of each modality in a site's training set (SliceDataset or PatchSampler);
    every modality is named, 0 where the site has none (Flower aggregates only replies whose MetricRecords
    have the same keys)."""
    counts: dict[str, int] = dict.fromkeys(get_args(Modality), 0)
    for case in train_set.cases:  # type: ignore[attr-defined]
        entry = case.entry if hasattr(case, "entry") else case[1]
        counts[entry.modality] = counts.get(entry.modality, 0) + entry.n_slices
    return counts


def identify(message: Message, context: Context) -> Message:
    """The answer to the server's query: which site this node is (from its node config)."""
    identity = protocol.site_identity(context.node_config)
    return Message(content=RecordDict({protocol.IDENTITY: identity}), reply_to=message)


def build_client_app(train: TrainFunction = train_round) -> ClientApp:
    """A ClientApp answering fedgin's query, train, statistics and cross-site messages (`train`: a test's
    wrapper of train_round)."""
    from fedgin.federation import cross_site, statistics

    app = ClientApp()
    app.query()(identify)
    # Requests outside the rounds: federated statistics and cross-site evaluation (only summaries return).
    app.query(statistics.ACTION)(statistics.site_reply)
    app.evaluate(cross_site.ACTION)(cross_site.site_reply)
    # Flower's SecAgg+ mod on SecAgg+ rounds only (federation.secagg); plain rounds pass it untouched.
    app.train(mods=[secagg_mod])(train)
    return app


#: fedgin's ClientApp, for both engines (stateless apart from the run's settings and FedBN's local weights).
app = build_client_app()

__all__ = [
    "app",
    "build_client_app",
    "client_run_config",
    "identify",
    "local_caches",
    "settings_from",
    "site_round",
    "site_settings",
    "train_round",
    "train_securely",
    "train_site",
]
