"""The `fedgin` command line: a thin layer over the Python API."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from fedgin.errors import ConfigError, DataError, FedginError, os_error_line, value_error_line

if TYPE_CHECKING:
    from fedgin.config import RunConfig

#: Option names accepted but not shown in --help, so that every command shows one spelling (`-o/--out`).
HIDDEN_OPTION_ALIASES = {"output": "out"}


def hidden_option_alias(name: str) -> str:
    """Click's token normaliser: `--output` (spelled so by earlier versions) reaches the `--out` option.

    Click also passes command names and choice values through it; no command or choice is called `output`.
    """
    return HIDDEN_OPTION_ALIASES.get(name, name)


app = typer.Typer(
    name="fedgin",
    help="Federated multi-modal abdominal organ segmentation with GIN augmentation (FedGIN).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"token_normalize_func": hidden_option_alias},
)
console = Console()
error_console = Console(stderr=True)

CommandT = TypeVar("CommandT", bound=Callable[..., Any])

AllowChangedSettingsOption = Annotated[
    bool,
    typer.Option(
        "--allow-changed-settings",
        help="With --resume: continue with settings other than the checkpoint's (e.g. another lr); "
        "config.toml is then replaced. Changed data is refused anyway.",
    ),
]


def print_error(message: str) -> None:
    """One `error: ...` line on stderr."""
    # escape(): messages quote TOML tables like [preprocess], which rich would take for markup
    error_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def user_errors(command: CommandT) -> CommandT:
    """Show a FedginError as one line on stderr and exit 2, instead of a traceback.

    An OSError (a read-only or full output folder, a path through a file) or a ValueError is shown as one
    line too, naming the path when the exception has one (exit 2 as well); set FEDGIN_TRACEBACK=1 to see
    its traceback instead. Every other exception is a fedgin bug and keeps its traceback. Ctrl-C exits 130
    with the interrupt's own message when it has one (a federation names the round it kept).
    """

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FedginError as error:
            print_error(str(error))
            raise typer.Exit(2) from None
        except (OSError, ValueError) as error:
            if os.environ.get("FEDGIN_TRACEBACK"):
                raise
            print_error(os_error_line(error) if isinstance(error, OSError) else value_error_line(error))
            raise typer.Exit(2) from None
        except KeyboardInterrupt as interrupt:
            message = (
                str(interrupt) or "interrupted: finished work is kept; run the same command again to resume"
            )
            error_console.print(escape(message), highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def parse_triple(text: str, name: str, cast: Callable[[str], Any]) -> tuple[Any, Any, Any]:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 3:
        raise ConfigError(f"--{name} needs three comma-separated values, got {text!r}")
    try:
        return tuple(cast(part) for part in parts)  # type: ignore[return-value]
    except ValueError:
        raise ConfigError(f"--{name}: {text!r} is not three numbers") from None


def load_protocols(value: str | None) -> str | dict | None:
    """`--protocols`: a preset name as it is, a TOML file's ProtocolMix as its raw tables."""
    from fedgin.config import read_toml
    from fedgin.synth.protocols import MIXES

    if value is None or value in MIXES:
        return value
    if value.endswith(".toml") or Path(value).exists():
        return read_toml(Path(value))
    return value  # an unknown preset name: SynthConfig's check names it and the presets


@app.command()
@user_errors
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the data set into.")],
    layout: Annotated[
        str, typer.Option(help="File layout: totalseg (sXXXX/ct.nii.gz, ...) or amos (imagesTr/, ...).")
    ] = "totalseg",
    modality: Annotated[
        str, typer.Option(help="ct, mri_t1, mri_t2 or a list, e.g. ct,mri_t2 (totalseg: MRI sequences only).")
    ] = "ct",
    protocols: Annotated[
        str | None,
        typer.Option(
            help=escape(
                "Acquisition protocols: a preset (totalseg-ct, totalseg-mri, amos, single; see `fedgin "
                "protocols`) or a TOML file with [weights] and optional [custom.NAME] protocols. "
                "Default: the layout's realistic mix."
            )
        ),
    ] = None,
    subjects: Annotated[int, typer.Option(help="Subjects per modality.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the anatomy and the rendering.")] = 0,
    shape: Annotated[str, typer.Option(help="Voxels x,y,z (z is axial).")] = "128,128,64",
    spacing: Annotated[str, typer.Option(help="Voxel size x,y,z in mm.")] = "3.0,3.0,5.0",
    preview: Annotated[
        bool, typer.Option(help="Also save preview.png: one slice per protocol of the mix, organs outlined.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty output folder.")] = False,
) -> None:
    """Generate the embedded synthetic abdomen (CT, MRI T1, MRI T2 under acquisition protocols) as NIfTI."""
    from fedgin.config import SynthConfig, validate
    from fedgin.synth import generate, resolve_mix, save_protocol_preview

    if layout not in ("totalseg", "amos"):
        raise ConfigError(f"--layout must be totalseg or amos, got {layout!r}")
    config = validate(
        {
            "subjects": subjects,
            "seed": seed,
            "shape": parse_triple(shape, "shape", int),
            "spacing": parse_triple(spacing, "spacing", float),
            "modalities": [part.strip() for part in modality.split(",") if part.strip()],
            "protocols": load_protocols(protocols),
        },
        SynthConfig,
        source=f"fedgin synth{f' --protocols {protocols}' if protocols else ''}",
    )
    check_synth_memory(config.shape, shape)
    summary = generate(config, layout, out, overwrite=overwrite)  # type: ignore[arg-type]
    used = Counter(case.protocol for case in summary.cases)
    listing = ", ".join(f"{name} x{count}" for name, count in sorted(used.items()))
    console.print(
        f"wrote {len(summary.cases)} cases to [bold]{out}[/] "
        f"({summary.seconds_per_subject:.2f} s per subject); protocols: {listing}"
    )
    if preview:
        mix = resolve_mix(config, layout)
        names = [name for modality in config.modalities for name in sorted(mix.for_modality(modality))]
        png = save_protocol_preview(out / "preview.png", config, names)
        console.print(f"preview: {png}")


#: Bytes of memory per voxel while one synthetic volume is rendered (measured: about 64 at 192 x 192 x 96).
SYNTH_BYTES_PER_VOXEL = 64


def physical_memory() -> int | None:
    """This machine's memory in bytes, None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_synth_memory(shape: tuple[int, int, int], option: str) -> None:
    """ConfigError (one line) for a `--shape` whose volume could not be rendered in this machine's memory."""
    needed = SYNTH_BYTES_PER_VOXEL * shape[0] * shape[1] * shape[2]
    memory = physical_memory()
    if memory is not None and needed > memory:
        raise ConfigError(
            f"--shape {option}: rendering one volume needs about {needed / 2**30:,.0f} GiB of memory, "
            f"more than this machine's {memory / 2**30:,.0f} GiB"
        )


@app.command()
@user_errors
def protocols(
    # Arguments are described in the docstring: with click 8.5, typer 0.20 drops typer.Argument(help=...).
    mix: Annotated[str | None, typer.Argument()] = None,
    markdown: Annotated[bool, typer.Option(help="Print a Markdown table (for documentation).")] = False,
) -> None:
    """List acquisition protocols and each mix's share of them within a modality.

    MIX is a preset or a mix TOML file; default: every shipped mix.
    """
    from rich.table import Table

    from fedgin.config import SynthConfig, validate
    from fedgin.synth.protocols import MIXES, describe, family_of, resolve_mix

    mixes = {
        name: resolve_mix(
            validate({"protocols": load_protocols(name), "modalities": []}, SynthConfig, source=name)
        )
        for name in ([mix] if mix is not None else list(MIXES))
    }
    library = {name: entry[0] for resolved in mixes.values() for name, entry in resolved.entries.items()}
    rows = []
    for name, protocol in sorted(library.items(), key=lambda item: (family_of(item[1]), item[0])):
        modality = family_of(protocol)
        shares = []
        for resolved in mixes.values():
            entries = resolved.for_modality(modality)
            weight = entries.get(name, (None, 0.0))[1]
            total = sum(w for _, w in entries.values())
            shares.append(f"{weight / total:.0%}" if weight > 0 else "")
        rows.append([modality, name, describe(protocol), *shares])
    header = ["modality", "protocol", "what", *mixes]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for row in rows:
            lines.append("| " + " | ".join(f"`{c}`" if i == 1 else c for i, c in enumerate(row)) + " |")
        typer.echo("\n".join(lines))
        return
    wide = console.width >= 140  # the description column only where it fits
    table = Table(title="Acquisition protocols: each mix's share within a modality")
    for column in header:
        if column != "what" or wide:
            justify = "right" if column in mixes else "left"
            table.add_column(column, justify=justify, no_wrap=column == "protocol")
    for row in rows:
        table.add_row(*(cell for i, cell in enumerate(row) if i != 2 or wide))
    console.print(table)


@app.command()
@user_errors
def prepare(
    source: Annotated[str, typer.Option(help="totalseg-ct, totalseg-mri, amos or nnunet.")],
    root: Annotated[Path, typer.Option(help="The data set's root folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Cache folder to write (or resume).")],
    config: Annotated[
        Path | None,
        typer.Option(
            help=escape("A run or study TOML (checked whole) whose [preprocess] overrides the defaults.")
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes (one volume in memory each).")] = 2,
    modality: Annotated[
        str | None, typer.Option(help="ct or mri: for nnunet, or to keep one modality of amos.")
    ] = None,
    label_map: Annotated[
        str | None,
        typer.Option(help='nnunet: JSON {source value: fedgin class}, e.g. \'{"1": 1, "2": 2}\', or a file.'),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Put every case in this split (e.g. test for AMOS as test set).")
    ] = None,
    fail_fast: Annotated[bool, typer.Option(help="Stop at the first bad case.")] = False,
) -> None:
    """Preprocess a data set (TotalSegmentator, AMOS, nnU-Net folder) into a training cache."""
    from fedgin.prepare import prepare as run_prepare

    check_workers(workers)
    report = run_prepare(
        source,
        root,
        out,
        load_preprocess_config(config),
        workers=workers,
        label_map=parse_label_map(label_map),
        modality=modality,  # type: ignore[arg-type]
        split_override=split,
        fail_fast=fail_fast,
    )
    console.print(
        f"cache [bold]{out}[/]: {len(report.prepared)} prepared, {len(report.skipped)} unchanged, "
        f"{len(report.failed)} failed"
    )
    if report.failed:
        for message in report.failed:
            error_console.print(f"[red]failed:[/] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command()
@user_errors
def inspect(
    cache: Annotated[Path, typer.Argument()],
) -> None:
    """Print a cache's contents: cases per modality and split, spacing, organ voxels, intensities.

    CACHE is a cache folder written by `fedgin prepare`.
    """
    from fedgin.cache import Cache, summarize

    console.print(summarize(Cache(cache)))


def _require_resume(resume: bool, allow_changed_settings: bool) -> None:
    if allow_changed_settings and not resume:
        raise ConfigError("--allow-changed-settings applies to --resume only; add --resume or leave it out")


def load_federation_config(path: Path, output: Path | None, rounds: int | None) -> RunConfig:
    """A federation's RunConfig from TOML with the command line's overrides (`federate`, `deploy run`)."""
    from fedgin.config import RunConfig, load_toml

    config = load_toml(path, RunConfig)
    if output is not None:
        config.output = output
    if rounds is not None:
        config.federation.rounds = rounds
    config.federation.require_clients()
    return config


@app.command()
@user_errors
def federate(
    config: Annotated[
        Path,
        typer.Option("--config", "-c", help=escape("Run TOML with [federation] and [[federation.clients]].")),
    ],
    resume: Annotated[bool, typer.Option(help="Continue from the last completed round.")] = False,
    allow_changed_settings: AllowChangedSettingsOption = False,
    overwrite: Annotated[bool, typer.Option(help="Delete an existing run directory first.")] = False,
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (overrides `output`).")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Override federation.rounds.")] = None,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            help="Write TensorBoard event files into DIR/<name> (sets tracking.tensorboard).", metavar="DIR"
        ),
    ] = None,
    cross_site: Annotated[
        bool,
        typer.Option(
            "--cross-site",
            help="Then evaluate the best global model at every site on its held-out (test) cases "
            "(RUN/cross_site).",
        ),
    ] = False,
) -> None:
    """Run a federation (FedAvg/FedProx/FedBN with GIN) on Flower's simulation engine."""
    from fedgin.federation import run_federation

    run_config = load_federation_config(config, output, rounds)
    if tensorboard is not None:
        run_config.tracking.tensorboard = tensorboard
    if cross_site:
        from fedgin.federation.preflight import check_held_out_cases

        check_held_out_cases(run_config, "test")  # before training, not after it
    _require_resume(resume, allow_changed_settings)
    result = run_federation(
        run_config,
        resume=resume,
        overwrite=overwrite,
        console=console,
        allow_changed_settings=allow_changed_settings,
    )
    console.print(
        f"federation {result.run_dir}: {result.rounds} rounds in {result.seconds:.1f} s, best validation "
        f"score {result.best_score:.4f} at round {result.best_round}; checkpoints in "
        f"{result.run_dir / 'checkpoints'}"
    )
    if cross_site:
        from fedgin.federation.cross_site import Model, matrix_table, run_cross_site

        best = Model.from_checkpoint("global", result.run_dir / "checkpoints" / "best.pt")
        evaluated = run_cross_site(run_config, [best], result.run_dir / "cross_site", console=console)
        console.print(matrix_table(evaluated))


@app.command()
@user_errors
def stats(
    config: Annotated[
        Path,
        typer.Option("--config", "-c", help=escape("Run TOML with [[federation.clients]] and [stats].")),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for stats.json and figures; default: OUTPUT/stats."),
    ] = None,
) -> None:
    """Federated statistics of the sites' data on Flower's simulation engine (only aggregates leave a site).

    Per site, modality and protocol: cases and slices, voxel spacing, intensity histograms and quantiles
    (raw and preprocessed), organ volumes and label values; one warning line for a site unlike the others.
    """
    from fedgin.config import RunConfig, load_toml
    from fedgin.federation.statistics import default_out, run_statistics

    run_config = load_toml(config, RunConfig)
    result = run_statistics(run_config, console=console, out=output or default_out(run_config))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    console.print(f"{len(result.sites)} site(s) described; wrote {', '.join(str(p) for p in result.files)}")


@app.command("cross-site")
@user_errors
def cross_site_command(
    config: Annotated[
        Path, typer.Option("--config", "-c", help=escape("Run TOML with [[federation.clients]]."))
    ],
    model: Annotated[
        list[str],
        typer.Option(
            "--model", "-m", help="NAME=CHECKPOINT of a model to evaluate at every site (repeat the option)."
        ),
    ],
    split: Annotated[str, typer.Option(help="The sites' held-out split to score.")] = "test",
    output: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for cross_site.csv/.png; default: OUTPUT/cross_site."),
    ] = None,
) -> None:
    """Every model on every site's held-out cases, on Flower's simulation engine: a site x model matrix.

    Each site returns only summaries (Dice, HD95, surface Dice per organ and domain), never images.
    """
    from fedgin.config import RunConfig, load_toml
    from fedgin.federation.cross_site import matrix_table, parse_models, run_cross_site

    run_config = load_toml(config, RunConfig)
    models = parse_models(model)
    out = output or Path(run_config.output) / "cross_site"
    result = run_cross_site(run_config, models, out, split=split, console=console)
    console.print(matrix_table(result))
    console.print(f"wrote {', '.join(str(p) for p in result.files)}")


@app.command()
@user_errors
def certs(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the CA, server certificate and keys.")],
    sites: Annotated[str, typer.Option(help="Comma-separated site names, one SuperNode key pair each.")],
    host: Annotated[
        list[str] | None, typer.Option(help="Extra DNS name or IP of the SuperLink (besides localhost).")
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 30,
    overwrite: Annotated[
        bool,
        typer.Option(help="Make a new CA, server certificate and key pairs even if OUT already has them."),
    ] = False,
) -> None:
    """Make development TLS certificates and SuperNode keys for a deployment (see docs/deployment.md).

    Over an existing folder only the missing sites' key pairs are added; the CA, the server certificate
    and the existing key pairs are kept (--overwrite replaces them all).
    """
    from fedgin.federation.app_signing import publisher_key
    from fedgin.federation.certificates import make_dev_certificates

    names = [name.strip() for name in sites.split(",") if name.strip()]
    if not names:
        raise ConfigError("--sites needs at least one site name")
    made = make_dev_certificates(out, len(names), names, hosts=host, days=days, overwrite=overwrite)
    kept = " (kept the existing CA and server certificate)" if made.kept_ca else ""
    console.print(
        f"development certificates in {made.directory}{kept} (not for production: see its README)",
        highlight=False, soft_wrap=True,
    )  # fmt: skip
    for keys in made.supernodes:
        state = "kept" if keys.name in made.kept_sites else "new"
        console.print(f"  {keys.name} ({state}): {keys.private_key} / {keys.public_key}", soft_wrap=True)
    publisher = publisher_key(out)
    console.print(
        f"  app signing: {publisher.private_key} (operator only) / {publisher.public_key} (for every site)"
    )


deploy_app = typer.Typer(
    help="Run a federation across sites on Flower's deployment engine (TLS + SuperNode authentication).",
    no_args_is_help=True,
)
app.add_typer(deploy_app, name="deploy")
StateOption = Annotated[
    Path,
    typer.Option("--state", help="This machine's deployment folder (FLWR_HOME, SuperLink database, app)."),
]
SuperlinkOption = Annotated[str, typer.Option("--superlink", help="The SuperLink's HOST:PORT.")]
CaCertOption = Annotated[Path | None, typer.Option("--ca-cert", help="CA certificate (certs/ca.crt).")]
InsecureOption = Annotated[bool, typer.Option("--insecure", help="No TLS: loopback tests only.")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Print the Flower command, do not run it.")]
TrustedPublishersOption = Annotated[
    Path | None,
    typer.Option(
        "--trusted-publishers",
        help="Keys whose signed apps may run (trusted-publishers.yaml or publisher.pub).",
    ),
]
AllowUnsignedOption = Annotated[
    bool,
    typer.Option("--allow-unsigned-apps", help="Run any submitted app (anyone who can submit runs code)."),
]


@deploy_app.command("superlink")
@user_errors
def deploy_superlink(
    certs_dir: Annotated[
        Path | None, typer.Option("--certs", help="Folder with ca.crt, server.crt, server.key.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTPS port (Fleet, Control and Runtime APIs).")] = 9092,
    state: StateOption = Path("runs/fl-deploy"),
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Admit SuperNodes without a key.")] = False,
    trusted_publishers: TrustedPublishersOption = None,
    allow_unsigned_apps: AllowUnsignedOption = False,
    runs_root: Annotated[
        Path | None,
        typer.Option(
            "--runs-root",
            help="The only folder the ServerApp writes in: every run's output, statistics and cross-site "
            "folder and config file must lie below it (default: the folder this command runs in).",
        ),
    ] = None,
    insecure: InsecureOption = False,
    dry_run: DryRunOption = False,
) -> None:
    """Start the SuperLink (server machine); it keeps its state in STATE/superlink.db.

    Only runs of apps signed by a trusted publisher (default: CERTS/trusted-publishers.yaml) are admitted,
    each signed submission once; sites are registered on this machine (`fedgin deploy register`).
    """
    from fedgin.federation import flower as dep
    from fedgin.federation.app_signing import load_trusted
    from fedgin.federation.certificates import load_certificates

    root = dep.runs_root(runs_root or Path.cwd())
    tls = {} if insecure else _server_tls(load_certificates(certs_dir) if certs_dir else None)
    if tls:
        from fedgin.federation.preflight import check_server_credentials

        check_server_credentials(**tls)  # a broken file is one line now, not a crashing SuperExec later
    if trusted_publishers is None and certs_dir is not None and not allow_unsigned_apps:
        trusted_publishers = certs_dir / "trusted-publishers.yaml"
    signing: dict[str, Path] = {}
    if not allow_unsigned_apps:
        if trusted_publishers is None:
            raise ConfigError(
                "give --trusted-publishers (written by `fedgin certs`) or --allow-unsigned-apps"
            )
        load_trusted(trusted_publishers)  # one line now if it is missing or not a key file
        secret = state / "superexec.secret"
        signing = {"trusted_publishers": trusted_publishers, "superexec_secret": secret}
        if not dry_run:
            dep.write_superexec_secret(secret)
    command = dep.superlink_command(
        **tls, host=host, port=port, database=state / "superlink.db", auth=not no_auth, insecure=insecure,
        **signing,
    )  # fmt: skip
    env = dep.flower_env(state / ".flwr")
    env[dep.RUNS_ROOT_ENV] = str(root)  # inherited by flower-superexec and the ServerApp
    console.print(f"runs root: {root} (runs read and write only below it)", highlight=False, soft_wrap=True)
    dep.launch(command, env, console, dry_run)


def _server_tls(certs: Any) -> dict[str, Path]:
    if certs is None:
        raise ConfigError("the SuperLink needs --certs (make them with `fedgin certs`) or --insecure")
    return {"ca_cert": certs.ca_cert, "server_cert": certs.server_cert, "server_key": certs.server_key}


@deploy_app.command("register")
@user_errors
def deploy_register(
    public_key: Annotated[Path, typer.Argument()],
    site: Annotated[
        str, typer.Option("--site", help=escape("The site's name, as in [[federation.clients]]."))
    ],
    state: StateOption = Path("runs/fl-deploy"),
) -> None:
    """Allow one site's SuperNode key on the SuperLink (operator, on the SuperLink's machine).

    PUBLIC_KEY is the site's public key in OpenSSH format (supernodes/<site>.pub from `fedgin certs`).
    It is written into the SuperLink's database (STATE/superlink.db, the SuperLink's --state), running or
    not; the SuperLink refuses registrations over the network.
    """
    from fedgin.federation import flower as dep

    node_id = dep.register_node(state / dep.SUPERLINK_DATABASE, public_key, site)
    done = f"registered site {site} ({public_key}) as SuperNode {node_id}"
    console.print(done, highlight=False, soft_wrap=True)


@deploy_app.command("unregister")
@user_errors
def deploy_unregister(
    node: Annotated[str, typer.Argument(help="The SuperNode's id or its site's name.")],
    state: StateOption = Path("runs/fl-deploy"),
) -> None:
    """Revoke one site's SuperNode key (operator, on the SuperLink's machine); a running SuperNode with
    it is refused at its next request and stops."""
    from fedgin.federation import flower as dep

    node_id, name = dep.unregister_node(state / dep.SUPERLINK_DATABASE, node)
    console.print(f"unregistered SuperNode {node_id} ({name})", highlight=False, soft_wrap=True)


@deploy_app.command("supernode")
@user_errors
def deploy_supernode(
    site: Annotated[
        str, typer.Option("--site", help=escape("This site's name, as in [[federation.clients]]."))
    ],
    cache: Annotated[
        list[Path] | None,
        typer.Option(help="The site's cache; repeat for one cache per data entry of the site, in order."),
    ] = None,
    superlink: SuperlinkOption = "127.0.0.1:9092",
    ca_cert: CaCertOption = None,
    key: Annotated[
        Path | None,
        typer.Option("--key", help="The site's private key (<site>.key), registered by the operator."),
    ] = None,
    port: Annotated[int, typer.Option(help="The SuperNode's local Runtime API port (127.0.0.1).")] = 9094,
    state: StateOption = Path("runs/fl-deploy"),
    trusted_publishers: TrustedPublishersOption = None,
    allow_unsigned_apps: AllowUnsignedOption = False,
    insecure: InsecureOption = False,
    activation_timeout: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="Seconds to keep trying to connect and be activated (a refused activation is retried with "
            "back-off: the SuperLink refuses a crashed SuperNode's key for up to 60 s).",
        ),
    ] = 120.0,
    share_case_results: Annotated[
        bool,
        typer.Option(
            "--share-case-results",
            help="Cross-site evaluation: also return per-case rows (case ids and scores, never images).",
        ),
    ] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Start one site's SuperNode (site machine); its cache paths stay in its node config.

    The site runs only apps signed by a key in --trusted-publishers (the operator's publisher.pub).
    """
    from fedgin.cache import Cache
    from fedgin.federation import flower as dep
    from fedgin.federation.app_signing import load_trusted, write_trusted

    trusted = None
    if not allow_unsigned_apps:
        if trusted_publishers is None:
            raise ConfigError(
                "give --trusted-publishers (the operator's publisher.pub or trusted-publishers.yaml) "
                "or --allow-unsigned-apps"
            )
        load_trusted(trusted_publishers)  # one line now if it is missing or not a key file
        trusted = trusted_publishers
        if trusted_publishers.suffix == ".pub":  # Flower reads its trusted-entities YAML
            trusted = state / "trusted-publishers.yaml"
            if not dry_run:
                write_trusted(trusted, [trusted_publishers])

    for folder in cache or []:
        Cache(folder)  # a clear error now rather than in the first round
    from fedgin.federation.preflight import check_ca_certificate, check_supernode_private_key
    from fedgin.federation.supervisor import supervise

    if key is not None:
        check_supernode_private_key(key)
        if insecure:
            raise ConfigError("--key needs TLS (--ca-cert): SuperNode authentication refuses --insecure")
    if ca_cert is not None and not insecure:
        check_ca_certificate(ca_cert)
    command = dep.supernode_command(
        site, cache or None, superlink=superlink, ca_cert=ca_cert, private_key=key, port=port,
        insecure=insecure, trusted_publishers=trusted, share_case_results=share_case_results,
    )  # fmt: skip
    console.print(dep.format_command(command), highlight=False, soft_wrap=True)
    if dry_run:
        return
    env = dep.flower_env(state / ".flwr")
    if env.get("FLWR_LOG_LEVEL", "INFO").upper() not in ("DEBUG", "INFO"):
        env["FLWR_LOG_LEVEL"] = "INFO"  # the supervisor sees the connection in Flower's INFO line
    not_ready = f": is the SuperLink running and reachable at {superlink}?"
    if insecure:
        not_ready = ": a SuperLink with TLS never answers an --insecure SuperNode (give --ca-cert instead)"
    refused = (
        " (its key is not registered, or a SuperNode with this key is still online: the SuperLink keeps a "
        "crashed one online for up to 60 s)"
    )
    outcome = supervise(
        command, env, timeout_s=activation_timeout, not_ready_hint=not_ready, refused_hint=refused
    )
    if outcome.error:
        print_error(outcome.error)
    raise typer.Exit(outcome.code)


@deploy_app.command("run")
@user_errors
def deploy_run(
    config: Annotated[
        Path, typer.Option("--config", "-c", help=escape("Run TOML with [[federation.clients]]."))
    ],
    superlink: SuperlinkOption = "127.0.0.1:9092",
    ca_cert: CaCertOption = None,
    state: StateOption = Path("runs/fl-deploy"),
    resume: Annotated[bool, typer.Option(help="Continue from the last completed round.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete an existing run directory first.")] = False,
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (overrides `output`).")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Override federation.rounds.")] = None,
    publisher_key: Annotated[
        Path | None,
        typer.Option("--publisher-key", help="The operator's app-signing key (publisher.key, fedgin certs)."),
    ] = None,
    unsigned: Annotated[
        bool,
        typer.Option("--unsigned", help="Submit unsigned (for SuperLinks with --allow-unsigned-apps)."),
    ] = False,
    insecure: InsecureOption = False,
    dry_run: DryRunOption = False,
    task: Annotated[
        str,
        typer.Option(
            help="train (the rounds), stats (federated statistics into OUT/stats) or cross-site "
            "(every --model on every site's held-out split, into OUT/cross_site).",
        ),
    ] = "train",
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", help="--task cross-site: NAME=CHECKPOINT of a model (repeat the option)."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="--task cross-site: the sites' split to score.")] = "test",
) -> None:
    """Write the Flower app for CONFIG to STATE/app, sign it and submit it to the SuperLink (operator).

    The same SuperNodes that train answer --task stats and --task cross-site.
    """
    from fedgin.federation import flower as dep
    from fedgin.federation.app_signing import load_private_key

    if unsigned and publisher_key is not None:
        raise ConfigError("--unsigned and --publisher-key contradict each other: give one of them")
    if insecure and ca_cert is not None:
        raise ConfigError("--insecure and --ca-cert contradict each other: give one of them")
    ignored = {
        "--model": model and task != "cross-site",
        "--split": split != "test" and task != "cross-site",
        "--rounds": rounds is not None and task != "train",
    }
    for option, is_ignored in ignored.items():
        if is_ignored:
            raise ConfigError(f"{option} does not apply to --task {task}; leave it out")
    if not unsigned:
        if publisher_key is None:
            raise ConfigError("give --publisher-key (publisher.key from `fedgin certs`) or --unsigned")
        load_private_key(publisher_key)  # one line now if it is missing or not an Ed25519 key
    run_config = load_federation_config(config, output, rounds)
    env = dep.flower_env(state / ".flwr")
    dep.write_flower_config(state / ".flwr", superlink, ca_cert, insecure=insecure)
    models = None
    if task == "cross-site":
        from fedgin.federation.cross_site import parse_models

        models = {m.name: m.source for m in parse_models(list(model or []))}  # checked before submitting
    dep.write_app(
        run_config, state / "app", resume=resume, overwrite=overwrite, task=task, models=models, split=split
    )
    command = dep.run_command(state / "app", stream=True, publisher_key=None if unsigned else publisher_key)
    dep.launch(command, env, console, dry_run)


@app.command()
@user_errors
def evaluate(
    checkpoint: Annotated[
        Path | None, typer.Option(help="Model checkpoint to evaluate on the cached cases of --data.")
    ] = None,
    data: Annotated[
        list[Path] | None, typer.Option("--data", help="Cache folder(s) with the test cases.")
    ] = None,
    split: Annotated[
        str, typer.Option(help="With --checkpoint: split of the cached cases to evaluate, or all.")
    ] = "test",
    pred: Annotated[
        Path | None,
        typer.Option(help="Folder of predicted label NIfTI files (instead of --checkpoint and --data)."),
    ] = None,
    ref: Annotated[
        Path | None, typer.Option(help="Folder of reference label NIfTI files (named as in --pred).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for per_case.csv and summaries; default: RUN/eval_SPLIT for a checkpoint "
            "RUN/checkpoints/*.pt, or evaluation beside the --pred folder.",
        ),
    ] = None,
    method: Annotated[str | None, typer.Option(help="A method name to put in the CSV rows.")] = None,
    nsd_tolerance: Annotated[float, typer.Option(help="Surface Dice tolerance in mm.")] = 2.0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Per-case Dice, HD95 and surface Dice of a checkpoint on a cache, or of two label folders.

    Give either --checkpoint and --data (a model on cached cases) or --pred and --ref (two label folders).
    """
    from fedgin.evaluation.evaluate import evaluate_checkpoint, evaluate_folders, summary_table

    if not (math.isfinite(nsd_tolerance) and nsd_tolerance > 0):
        raise ConfigError(f"--nsd-tolerance must be a finite number of mm above 0, got {nsd_tolerance}")
    check_device_option(device)
    if checkpoint is not None and data:
        out = out or checkpoint.parent.parent / f"eval_{split}"
        result = evaluate_checkpoint(
            checkpoint,
            list(data),
            out,
            split=None if split == "all" else split,
            device=device,
            nsd_tolerance_mm=nsd_tolerance,
            method=method,
        )
    elif pred is not None and ref is not None:
        out = out or pred.parent / "evaluation"
        result = evaluate_folders(pred, ref, out, nsd_tolerance_mm=nsd_tolerance, method=method)
    else:
        raise ConfigError("give --checkpoint and --data, or --pred and --ref")
    console.print(summary_table(result))
    console.print(f"wrote {result.per_case_csv}, {result.summary_csv}, {result.summary_json}")


@app.command("gin-preview")
@user_errors
def gin_preview(
    data: Annotated[list[Path], typer.Option("--data", help="Cache folder(s); one slice of each domain.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path("gin_preview.png"),
    draws: Annotated[int, typer.Option(help="GIN draws per modality.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the draws.")] = 0,
    ipa: Annotated[
        bool, typer.Option(help="Show GIN-IPA instead: two GIN draws, the mask, both blends, a third view.")
    ] = False,
) -> None:
    """Save a PNG grid: one slice of each modality and several GIN draws of it (or GIN-IPA's views)."""
    import numpy as np

    from fedgin.augment.preview import save_gin_preview, save_ipa_preview
    from fedgin.cache import Cache

    if not 1 <= draws <= 64:
        raise ConfigError(f"--draws must be from 1 to 64, got {draws}")  # one column each
    images = {}
    for cache_dir in data:
        cache = Cache(cache_dir)
        for entry in cache.cases():
            if entry.domain not in images:
                # The slice with the most organ voxels shows the anatomy best.
                label = cache.load_label(entry)
                z = int((label > 0).reshape(label.shape[0], -1).sum(1).argmax())
                images[entry.domain] = np.array(cache.load_image(entry)[z])
    if not images:
        raise DataError(data[0], "no cached cases to preview (the cache is empty)")
    if ipa:
        console.print(f"wrote {save_ipa_preview(images, out, seed=seed)}")
        return
    console.print(f"wrote {save_gin_preview(images, out, draws=draws, seed=seed)}")


@app.command()
@user_errors
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run TOML (data, model, gin, train).")],
    resume: Annotated[bool, typer.Option(help="Continue from the run directory's last checkpoint.")] = False,
    allow_changed_settings: AllowChangedSettingsOption = False,
    overwrite: Annotated[bool, typer.Option(help="Delete an existing run directory first.")] = False,
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (overrides `output`).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Override train.steps.")] = None,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            help="Write TensorBoard event files into DIR/<name> (sets tracking.tensorboard).", metavar="DIR"
        ),
    ] = None,
) -> None:
    """Train a centralized or local model (GIN on or off) from a run configuration."""
    from fedgin.config import RunConfig, load_toml
    from fedgin.training import run_training

    run_config = load_toml(config, RunConfig)
    if output is not None:
        run_config.output = output
    if steps is not None:
        run_config.train.steps = steps
    if tensorboard is not None:
        run_config.tracking.tensorboard = tensorboard
    _require_resume(resume, allow_changed_settings)
    result = run_training(
        run_config,
        resume=resume,
        overwrite=overwrite,
        console=console,
        allow_changed_settings=allow_changed_settings,
    )
    console.print(
        f"run {result.run_dir}: {result.steps} steps, best validation score {result.best_score:.4f} "
        f"at step {result.best_step}; checkpoints in {result.run_dir / 'checkpoints'}"
    )


@app.command()
@user_errors
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the demo's data, caches and results.")
    ] = Path("runs/demo"),
    subjects: Annotated[int, typer.Option(help="Synthetic subjects per training data set.")] = 30,
    workers: Annotated[int, typer.Option(help="Worker processes for preparation.")] = 2,
    study: Annotated[
        bool, typer.Option(help="Run the quick complete-scenario study on the prepared data.")
    ] = True,
    seeds: Annotated[
        str | None,
        typer.Option(help="Comma-separated seeds of the demo's study; default 42 (the quick preset: 2)."),
    ] = None,
) -> None:
    """The main job on the embedded data: generate, prepare, then the quick FedGIN study and its report."""
    from fedgin.demo import run_demo, run_demo_study

    check_workers(workers)
    chosen = parse_seeds(seeds) if seeds is not None else None
    data = run_demo(out, subjects=subjects, workers=workers, console=console)
    if study:
        run_demo_study(out, console=console, fresh=data.regenerated, seeds=chosen)


@app.command("study")
@user_errors
def study_command(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Study TOML (see the presets).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="A shipped preset instead of --config: quick, full-synthetic or paper.")
    ] = None,
    scenario: Annotated[str, typer.Option(help="With --preset: complete or limited.")] = "complete",
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="Study folder (overrides `output`).")
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds (overrides `seeds`).")] = None,
    methods: Annotated[
        str | None,
        typer.Option(help="Comma-separated methods (overrides `methods`; --resume may add or drop some)."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue a study: finished runs are kept.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete an existing study folder first.")] = False,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="Rewrite report.md from the finished runs.")
    ] = False,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            help="Write every run's TensorBoard event files under DIR (sets tracking.tensorboard).",
            metavar="DIR",
        ),
    ] = None,
) -> None:
    """Run every method of the FedGIN study for each seed (and MRI:CT ratio), then write report.md."""
    from fedgin.study import load_study, plan_study, preset_path, run_study
    from fedgin.study.report import write_report

    if (config is None) == (preset is None):
        raise ConfigError("give either --config STUDY.toml or --preset NAME")
    path = config if config is not None else preset_path(str(preset), scenario)
    settings = load_study(path)
    if output is not None:
        settings.output = output
    if seeds is not None:
        settings.seeds = parse_seeds(seeds)
    if methods is not None:
        settings.methods = parse_methods(methods)
    if tensorboard is not None:
        settings.tracking.tensorboard = tensorboard
    if report_only:
        console.print(f"report: {write_report(settings, plan_study(settings))}")
        return
    from fedgin.tracking import check_tracking

    check_tracking(settings.tracking)  # before the sources are prepared and the first run trains
    run_study(settings, resume=resume, overwrite=overwrite, console=console)


def check_device_option(device: str) -> None:
    """ConfigError (one line) for a `--device` that names no device (checked before any file is read)."""
    from fedgin.config import check_device_name

    try:
        check_device_name(device)
    except ValueError as error:
        raise ConfigError(f"--device {device}: {error}") from None


def check_workers(workers: int) -> None:
    """`--workers` below 1 would silently mean one (prepare runs serially at <= 1)."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")


def parse_seeds(text: str) -> list[int]:
    """`--seeds 1,2,3` -> [1, 2, 3]; ConfigError (one line) for no seed or one that is not an integer."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ConfigError("--seeds: no seed given (comma-separated integers, e.g. 42,123)")
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise ConfigError(f"--seeds: {text!r} is not comma-separated integers (e.g. 42,123)") from None


def parse_methods(text: str) -> list[str]:
    """`--methods fedgin,local` -> the methods; ConfigError (one line) for none or an unknown one."""
    from fedgin.study.config import METHODS

    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [method for method in chosen if method not in METHODS]
    if not chosen or unknown:
        problem = f"unknown method {unknown[0]!r}" if unknown else "no method given"
        raise ConfigError(f"--methods: {problem}; choose from {', '.join(METHODS)}")
    return chosen


@app.command()
@user_errors
def predict(
    input_path: Annotated[
        Path,
        typer.Option("--input", "-i", help="A NIfTI file, a folder of NIfTI files or a DICOM series folder."),
    ],
    output: Annotated[
        Path,
        typer.Option("--out", "-o", help="Label file (*.nii.gz) for one input, else a folder for all."),
    ],
    model: Annotated[
        Path, typer.Option("--model", "-m", help="A `fedgin export` model file or a training checkpoint.")
    ],
    modality: Annotated[
        str, typer.Option(help="ct, mri or auto (DICOM Modality tag, else the Hounsfield range).")
    ] = "auto",
    series: Annotated[
        str | None, typer.Option(help="SeriesInstanceUID to read from a folder with several DICOM series.")
    ] = None,
    preview: Annotated[bool, typer.Option(help="Also save a PNG of a few slices with the outlines.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace output files that exist.")] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda[:N].")] = "auto",
    amp: Annotated[
        bool | None, typer.Option("--amp/--no-amp", help="Mixed precision; default: on for CUDA.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Slices per forward pass.")] = 32,
    force: Annotated[
        bool, typer.Option(help="Segment an input even though it looks like a label map, not a scan.")
    ] = False,
) -> None:
    """Segment new scans: label NIfTI in each input's own geometry, organ volumes (mL) as table and CSV."""
    from fedgin.prediction import run_prediction, volumes_table

    check_device_option(device)
    report = run_prediction(
        input_path,
        output,
        model,
        modality=modality,
        series=series,
        preview=preview,
        overwrite=overwrite,
        device=device,
        amp=amp,
        batch_size=batch_size,
        console=console,
        force=force,
    )
    console.print(volumes_table(report))
    labels = [str(case.outputs.label) for case in report.cases]
    shown = (
        labels[0]
        if len(labels) == 1
        else f"{len(labels)} label files in {report.cases[0].outputs.label.parent}"
    )
    console.print(
        f"wrote {shown} (label names in the .json beside each), volumes in {report.volumes_csv}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )


@app.command()
@user_errors
def export(
    checkpoint: Annotated[
        Path,
        typer.Option("--checkpoint", "-c", help="A training checkpoint, e.g. runs/x/checkpoints/best.pt."),
    ],
    output: Annotated[Path, typer.Option("--out", "-o", help="Model file to write, e.g. model.fedgin.pt.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model file.")] = False,
) -> None:
    """Write one model file (weights, architecture, preprocessing, label names) for `fedgin predict`."""
    from rich.markup import escape

    from fedgin.prediction import export_model

    model = export_model(checkpoint, output, overwrite=overwrite)
    for note in model.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    size_mb = output.stat().st_size / 1e6
    console.print(f"wrote {output} ({size_mb:.1f} MB) from {model.describe()}; preprocessing from "
                  f"{model.preprocess_source}", highlight=False, soft_wrap=True, markup=False)  # fmt: skip


def load_preprocess_config(path: Path | None) -> Any:
    """The [preprocess] table of a run (or study) TOML; the whole file is validated, so that a misspelled
    table such as [preproces] is an error instead of a cache silently built with the defaults."""
    from fedgin.config import PreprocessConfig, RunConfig, read_toml, validate
    from fedgin.study.config import StudyConfig

    if path is None:
        return PreprocessConfig()
    raw = read_toml(path)
    model = StudyConfig if "sites" in raw else RunConfig  # a study TOML always has [[sites]]
    return validate(raw, model, source=str(path)).preprocess


def parse_label_map(text: str | None) -> dict[int, int] | None:
    if text is None:
        return None
    candidate = Path(text)
    source = str(candidate) if candidate.is_file() else "--label-map"
    raw_text = candidate.read_text(encoding="utf-8") if candidate.is_file() else text
    try:
        raw = json.loads(raw_text)
        return {int(key): int(value) for key, value in raw.items()}
    except (ValueError, AttributeError, TypeError):
        raise ConfigError(
            f"{source}: label map must be a JSON object of integers, e.g. '{{\"1\": 1}}'"
        ) from None


def main() -> None:
    app(prog_name="fedgin")
