"""Cross-site evaluation on Flower: every model on every site's held-out cases, only summaries travel.

The server (`CrossSiteServer.main`, a ServerApp main for either engine) reaches the sites and sends each
one `evaluate.cross_site` message per model: the model's weights (float32 ArrayRecord) and its
architecture, the site's own data specification and the split to score (default `test`). The site
predicts each of its cases of that split (in the domains its data entries name) as `fedgin evaluate` does
(fedgin.evaluation.evaluate.score_cached_cases) and replies with the summary rows only: mean / std / n
per organ for every case, per domain, modality and protocol. Per-case rows (case ids, no images) come
back only from a site whose node config says `share-case-results=true`.

Results: `cross_site.csv` (one row per model x site x group x organ), `cross_site.json` (what was
evaluated, the sites left out) and `cross_site.png` (model x site-domain heat map of the Dice averaged
over organs), written into a staging folder that replaces the output folder once complete.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from rich.console import Console
from rich.table import Table

from fedgin.config import ClientSpec, ModelConfig, RunConfig
from fedgin.errors import ConfigError
from fedgin.federation import protocol
from fedgin.federation.site_requests import SiteRequests
from fedgin.folders import check_replaceable

#: The ClientApp's action: message type "evaluate.cross_site".
ACTION = "cross_site"
MESSAGE_TYPE = f"{MessageType.EVALUATE}.{ACTION}"
#: The request's records and keys.
ARRAYS = "arrays"
REQUEST = "fedgin-cross-site"
MODEL_NAME = "model"
MODEL_CONFIG = "model-config"
SITE_SPEC = "client-spec"
SPLIT = "split"
#: The reply's ConfigRecord: summary rows (JSON), the number of cases, per-case rows if the site allows.
REPLY = "fedgin-cross-site-result"
SUMMARY = "summary"
N_CASES = "n-cases"
CASES = "cases"
#: Node config key with which a site allows its per-case rows (case ids and scores, never images) to leave.
NODE_SHARE_CASES = protocol.NODE_SHARE_CASES
#: The columns of cross_site.csv.
COLUMNS: tuple[str, ...] = (
    "model", "site", "group_by", "group", "organ", "n_cases",
    "dice_mean", "dice_std", "hd95_mean", "hd95_std", "nsd_mean", "nsd_std", "n_hd95_undefined",
)  # fmt: skip


def held_out_cases(spec: ClientSpec, split: str) -> list:
    """The site's cached cases of `split`, in the domains of its data entries (skip/max carve training
    shares and are not applied); each case once."""
    from fedgin.cache import Cache

    selected, seen = [], set()
    for data in spec.data:
        cache = Cache(data.cache)
        for entry in cache.cases(split=split):
            if (data.domains is None or entry.domain in data.domains) and entry.case_id not in seen:
                seen.add(entry.case_id)
                selected.append((cache, entry))
    return selected


def site_reply(message: Message, context: Context) -> Message:
    """The ClientApp's answer: one model's summary on this site's held-out cases (its own caches, from the
    node config's `cache` as for training)."""
    from fedgin.evaluation.evaluate import json_safe, model_predictor, score_cached_cases, summary_rows
    from fedgin.federation.client import local_caches
    from fedgin.model import build_unet, resolve_device

    request = message.content[REQUEST]
    spec = local_caches(ClientSpec.model_validate_json(str(request[SITE_SPEC])), context.node_config)
    try:
        model_config = ModelConfig.model_validate_json(str(request[MODEL_CONFIG]))
        split = str(request[SPLIT])
        selected = held_out_cases(spec, split)
        if not selected:
            raise ConfigError(
                f"no cached cases of split {split!r} in {', '.join(str(d.cache) for d in spec.data)}"
            )
        device = resolve_device("auto")
        model = build_unet(model_config)
        model.load_state_dict(message.content[ARRAYS].to_torch_state_dict())
        model.to(device).eval()
        predict = model_predictor(model, model_config, device, amp=device.type == "cuda", batch_size=32)
        rows, _ = score_cached_cases(predict, selected, progress=False)
        record = {SUMMARY: json.dumps(json_safe(summary_rows(rows))), N_CASES: len(selected)}
        if bool(context.node_config.get(NODE_SHARE_CASES, False)):
            record[CASES] = json.dumps(json_safe(rows))
    except Exception as error:
        raise RuntimeError(f"client {spec.name}: {type(error).__name__}: {error}") from error
    return Message(RecordDict({REPLY: ConfigRecord(record)}), reply_to=message)


@dataclass
class Model:
    """A model to evaluate: its name in the matrix, its weights and architecture, where it came from."""

    name: str
    state: dict[str, torch.Tensor]
    config: ModelConfig
    source: str = ""

    @classmethod
    def from_checkpoint(cls, name: str, path: Path) -> Model:
        from fedgin.checkpoints import load_checkpoint, require_finite_weights

        checkpoint = load_checkpoint(path)  # weights_only: a checkpoint is never unpickled
        require_finite_weights(path, checkpoint["model"])  # a diverged model would score 0 everywhere
        config = RunConfig.model_validate(checkpoint["config"])
        if config.federation.fedbn and config.federation.clients:
            raise ConfigError(
                f"{path}: a FedBN model's normalisation layers stay on its sites; it has no global model "
                "to evaluate across sites"
            )
        return cls(name, dict(checkpoint["model"]), config.model, str(path))


@dataclass
class CrossSiteResult:
    """The matrix rows, where they were written, the sites left out (with why)."""

    out_dir: Path
    rows: list[dict] = field(default_factory=list)
    missing: dict[str, dict[str, str]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def matrix(self, group_by: str = "all") -> dict[tuple[str, str], float]:
        """(model, site or site/domain) -> Dice averaged over organs (the `mean` organ rows)."""
        return matrix(self.rows, group_by)


def matrix(rows: list[dict], group_by: str = "all") -> dict[tuple[str, str], float]:
    """(model, column) -> mean-over-organs Dice; columns are sites (`all`) or `site/group`."""
    cells = {}
    for row in rows:
        if row["group_by"] == group_by and row["organ"] == "mean":
            column = row["site"] if group_by == "all" else f"{row['site']}/{row['group']}"
            cells[(row["model"], column)] = float(row["dice_mean"])
    return cells


class CrossSiteServer(SiteRequests):
    """The ServerApp main of cross-site evaluation (simulation and deployment)."""

    def __init__(
        self, config: RunConfig, console: Console, models: list[Model], out_dir: Path, split: str = "test"
    ) -> None:
        super().__init__(config, console)
        if not models:
            raise ConfigError("cross-site evaluation needs at least one model")
        names = [model.name for model in models]
        if len(set(names)) != len(names):
            raise ConfigError(f"cross-site evaluation: model names must differ ({', '.join(names)})")
        self.models, self.out_dir, self.split = models, Path(out_dir), split
        check_replaceable(self.out_dir, "cross-site")  # before any site is asked: nothing else is replaced
        self.result: CrossSiteResult | None = None

    def main(self, grid: Grid, context: Context) -> None:
        self.reach(grid)
        rows: list[dict] = []
        missing: dict[str, dict[str, str]] = {}
        for model in self.models:
            arrays = ArrayRecord({key: value.detach().float() for key, value in model.state.items()})
            contents = {
                node: RecordDict(
                    {
                        ARRAYS: arrays,
                        REQUEST: ConfigRecord(
                            {
                                MODEL_NAME: model.name,
                                MODEL_CONFIG: model.config.model_dump_json(),
                                SITE_SPEC: spec.model_dump_json(),
                                SPLIT: self.split,
                            }
                        ),
                    }
                )
                for node, spec in self.nodes.items()
            }
            answers = self.ask(grid, MESSAGE_TYPE, contents)
            problems = {**self.unreached, **answers.problems}
            if problems:
                missing[model.name] = problems
                for site, problem in answers.problems.items():
                    self.console.print(
                        f"[yellow]warning:[/] site {site!r} did not evaluate {model.name}: {problem}"
                    )
            for site in sorted(answers.replies):
                for summary in json.loads(str(answers.replies[site][REPLY][SUMMARY])):
                    rows.append({"model": model.name, "site": site, **summary})
            self.console.print(f"cross-site: {model.name} evaluated at {len(answers.replies)} site(s)")
        if not rows:
            from fedgin.federation.screening import FederationError

            raise FederationError("no site evaluated any model (see the warnings above)")
        info = {
            "split": self.split,
            "models": {model.name: model.source for model in self.models},
            "sites": [spec.name for spec in self.config.federation.clients],
            "missing": missing,
            "columns": "summary rows of `fedgin evaluate` (summary.csv) per model and site",
        }
        files = write_staged(self.out_dir, rows, info)
        self.result = CrossSiteResult(self.out_dir, rows, missing, files)


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("nan" if row.get(key) is None else row.get(key)) for key in COLUMNS})
    return buffer.getvalue()


def read_rows(path: Path) -> list[dict]:
    """cross_site.csv's rows (numbers as floats)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in COLUMNS[5:]:
            row[key] = float(row[key])
    return rows


def write_staged(out_dir: Path, rows: list[dict], info: Mapping) -> list[Path]:
    """cross_site.csv, .json and .png into a staging folder, then in place of `out_dir` (only a
    cross-site folder fedgin made is replaced)."""
    from fedgin.figures import plot_cross_site
    from fedgin.io_utils import atomic_write_json, atomic_write_text, staged_folder

    with staged_folder(out_dir, "cross-site") as staging:
        atomic_write_text(staging / "cross_site.csv", csv_text(rows))
        atomic_write_json(staging / "cross_site.json", dict(info))
        plot_cross_site(rows, staging / "cross_site.png")
    return [out_dir / name for name in ("cross_site.csv", "cross_site.json", "cross_site.png")]


def matrix_table(result: CrossSiteResult) -> Table:
    """The model x site matrix for the terminal: Dice averaged over organs, all held-out cases of a site."""
    cells = result.matrix("all")
    models = list(dict.fromkeys(model for model, _ in cells))
    sites = list(dict.fromkeys(site for _, site in cells))
    table = Table(title=f"Cross-site Dice (mean over organs) in {result.out_dir}")
    table.add_column("model")
    for site in sites:
        table.add_column(site, justify="right")
    for model in models:
        table.add_row(
            model, *(f"{cells[(model, site)]:.3f}" if (model, site) in cells else "-" for site in sites)
        )
    return table


def run_cross_site(
    config: RunConfig,
    models: list[Model],
    out_dir: Path,
    *,
    split: str = "test",
    console: Console | None = None,
) -> CrossSiteResult:
    """Cross-site evaluation of `models` at the federation's sites on Flower's simulation engine."""
    from fedgin.federation.client import app
    from fedgin.federation.preflight import check_held_out_cases
    from fedgin.federation.simulation import simulate

    console = console or Console()
    config.federation.require_clients()
    check_held_out_cases(config, split)  # before Ray starts: one line for a site with nothing to score
    server = CrossSiteServer(config, console, models, out_dir, split)
    try:
        simulate(
            config,
            server.main,
            app,
            server.interrupt,
            Path(config.output) / ".flwr",
            interrupted=lambda: (
                "interrupted before the cross-site results were complete; run the same command again"
            ),
        )
    except KeyboardInterrupt:
        if server.result is None:
            raise
        # The results were written before the Ctrl-C took effect: the evaluation is complete.
    if server.result is None:
        from fedgin.federation.screening import FederationError

        raise FederationError("the cross-site evaluation did not finish (see the messages above)")
    return server.result


def parse_models(values: list[str]) -> list[Model]:
    """`NAME=CHECKPOINT` (or a bare CHECKPOINT, named by its run folder) -> models."""
    models = []
    for value in values:
        name, _, path = value.rpartition("=") if "=" in value else ("", "", value)
        checkpoint = Path(path)
        models.append(
            Model.from_checkpoint(name or checkpoint.parent.parent.name or checkpoint.stem, checkpoint)
        )
    return models


__all__ = [
    "COLUMNS",
    "MESSAGE_TYPE",
    "CrossSiteResult",
    "CrossSiteServer",
    "Model",
    "held_out_cases",
    "matrix",
    "matrix_table",
    "parse_models",
    "read_rows",
    "run_cross_site",
    "site_reply",
]
