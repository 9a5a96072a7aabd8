"""What fedgin's ServerApp and ClientApp send each other: every record, key and node/app-config name.

Once per node and server process (a resumed server is a new process: it starts again here):

1. Query (server -> node, empty). The node answers with an IDENTITY ConfigRecord: its `client-name`
   (deployment: the SuperNode's node config) or its `partition-id` (simulation: Flower's node config),
   which the server maps to that site's entry of `federation.clients` (`client_spec`).
2. The node's first train message also carries a SETTINGS ConfigRecord: RUN_SETTINGS, the run's settings
   without any site's data (`run_settings`: no `federation.clients`, `federation.server_eval` or
   `data`), and SITE_SPEC, that site's own ClientSpec. The node keeps both in its Context.state
   (SITE_STATE), its local caches (node config `cache`) already applied. A node whose reply is missing or
   an error gets them again with its next train message (its state may be gone: a restarted SuperNode).

Every round (train message): the global weights (ArrayRecord ARRAYS, in `federation.update_dtype`) and a
CONFIG ConfigRecord with Flower's SERVER_ROUND, the round's learning rate LR (the server runs the schedule
over rounds) and, with FedProx, Flower's PROXIMAL_MU; with client-side DP clipping, Flower's CLIPPING_NORM.
The reply: the trained weights (ARRAYS, without
FedBN's local keys), a METRICS MetricRecord (NUM_EXAMPLES, TRAIN_LOSS, STEPS, SECONDS) and a SITE
ConfigRecord (SITE_NAME and the site's validation Dice per domain, VAL_DICE_PREFIX + domain); under DP
the METRICS also hold UNIT_WEIGHT (1, the weight of every site) and, with client-side adaptive clipping,
NORM_BIT (whether the site's update was clipped). No image,
label or path leaves a site, and no site learns another site's data specification.

Outside the rounds (after the same query): `query.stats` asks a site for its federated statistics
(fedgin.federation.statistics: aggregates only) and `evaluate.cross_site` sends it a model to score on its
held-out cases (fedgin.federation.cross_site: summary rows only; per-case rows with NODE_SHARE_CASES). Both
requests carry the site's own spec; which of the three tasks a deployment's run does is APP_TASK.
"""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import ConfigRecord

from fedgin.config import ClientSpec, DataConfig, RunConfig
from fedgin.errors import ConfigError

# -- records of a train message and its reply (Flower's default arrayrecord_key / configrecord_key) --------
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
#: The reply's ConfigRecord about the site: its name and validation Dice per domain.
SITE = "client"
#: The ConfigRecord of a node's first train message: the run's settings and the site's spec.
SETTINGS = "fedgin-settings"
#: The query reply's ConfigRecord: which site the node is.
IDENTITY = "identity"

# -- keys of the CONFIG record ---------------------------------------------------------------------------
#: Written by Flower's FedAvg.configure_train.
SERVER_ROUND = "server-round"
#: Written by Flower's FedProx.configure_train.
PROXIMAL_MU = "proximal-mu"
#: The round's learning rate; absent: train.lr, constant.
LR = "lr"
#: Written by Flower's client-side DP wrappers: the L2 norm a site clips its update to.
CLIPPING_NORM = "clipping_norm"

# -- keys of the SETTINGS record (and of the node's SITE_STATE record) ----------------------------------
RUN_SETTINGS = "run-config"
SITE_SPEC = "client-spec"

# -- keys of the METRICS record --------------------------------------------------------------------------
#: FedAvg's weight (the strategies' weighted_by_key).
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
STEPS = "steps"
SECONDS = "seconds"
#: Under DP, FedAvg's weight instead of NUM_EXAMPLES: 1 for every site (equal weights bound a site's
#: influence on the mean by clipping_norm / sites).
UNIT_WEIGHT = "dp-unit-weight"
#: The site's training examples of one modality: EXAMPLES_PREFIX + modality ("num-examples-ct"), for
#: `federation.weighting = "modality_balanced"`.
EXAMPLES_PREFIX = "num-examples-"
#: The weight the server gives a reply under a `federation.weighting` other than examples (set on the server).
AGGREGATION_WEIGHT = "aggregation-weight"
#: Flower's client-side adaptive clipping: 1.0 when the site's update was clipped.
NORM_BIT = "norm_bit"

# -- keys of the SITE record -----------------------------------------------------------------------------
SITE_NAME = "name"
VAL_DICE_PREFIX = "val-dice-"

# -- the node's Context.state ----------------------------------------------------------------------------
#: FedBN's local normalisation weights (ArrayRecord).
LOCAL_STATE = "fedbn-local"
#: The run's settings and the site's spec as received (ConfigRecord with RUN_SETTINGS and SITE_SPEC).
SITE_STATE = "fedgin-site"

# -- node config (`flower-supernode --node-config`; Flower's simulation sets partition-id) -------------
NODE_CLIENT_NAME = "client-name"
NODE_CACHE = "cache"
NODE_PARTITION = "partition-id"
#: A site's consent that cross-site evaluations return its per-case rows (case ids and scores, no images).
NODE_SHARE_CASES = "share-case-results"

# -- the deployment's app config (pyproject.toml [tool.flwr.app.config], read by the ServerApp) ---------
#: Absolute path of the resolved fedgin run config (a file on the SuperLink's machine, not in the FAB).
APP_CONFIG_FILE = "fedgin-config-file"
APP_RESUME = "resume"
APP_OVERWRITE = "overwrite"
#: What the run does with the SuperNodes: TASK_TRAIN (the rounds), TASK_STATS or TASK_CROSS_SITE.
APP_TASK = "task"
TASK_TRAIN = "train"
TASK_STATS = "stats"
TASK_CROSS_SITE = "cross-site"
#: Statistics / cross-site: the output folder; cross-site: the models (JSON name -> checkpoint path on the
#: SuperLink's machine) and the sites' split to score.
APP_OUT = "out"
APP_MODELS = "models"
APP_SPLIT = "split"


def site_identity(node_config: Mapping) -> ConfigRecord:
    """The node's answer to the query: its site name (deployment) or its partition id (simulation)."""
    if NODE_CLIENT_NAME in node_config:
        return ConfigRecord({NODE_CLIENT_NAME: str(node_config[NODE_CLIENT_NAME])})
    return ConfigRecord({NODE_PARTITION: int(node_config.get(NODE_PARTITION, -1))})


def client_spec(config: RunConfig, identity: Mapping) -> ClientSpec:
    """The site a node is: `client-name` (deployment) or the partition id, in `federation.clients`."""
    clients = config.federation.clients
    if NODE_CLIENT_NAME in identity:
        name = str(identity[NODE_CLIENT_NAME])
        for spec in clients:
            if spec.name == name:
                return spec
        raise ConfigError(f"client {name!r} is not in federation.clients")
    partition = int(identity.get(NODE_PARTITION, -1))
    if not 0 <= partition < len(clients):
        raise ConfigError(f"partition {partition} has no entry in federation.clients ({len(clients)})")
    return clients[partition]


def run_settings(config: RunConfig) -> RunConfig:
    """The run's settings a site needs: everything but the sites' and the server's data."""
    federation = config.federation.model_copy(update={"clients": [], "server_eval": []})
    return config.model_copy(update={"data": DataConfig(), "federation": federation})


def settings_record(config: RunConfig, spec: ClientSpec) -> ConfigRecord:
    """The SETTINGS record of one site's first train message."""
    return ConfigRecord(
        {RUN_SETTINGS: run_settings(config).model_dump_json(), SITE_SPEC: spec.model_dump_json()}
    )


__all__ = ["client_spec", "run_settings", "settings_record", "site_identity"]
