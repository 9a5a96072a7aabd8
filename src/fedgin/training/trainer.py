"""The local trainer: AdamW, GIN on every batch, mixed precision on CUDA, atomic resumable checkpoints."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader

from fedgin.augment import RandAffine, RandGIN, RandIPA
from fedgin.checkpoints import load_weights, nonfinite_weights
from fedgin.config import RunConfig
from fedgin.evaluation.inference import autocast_context
from fedgin.model import build_loss, build_unet, resolve_amp, resolve_device
from fedgin.patches import PatchSampler
from fedgin.runs import Best, RunDirectory, RunDiverged, RunState
from fedgin.slices import ForegroundBatchSampler, SliceDataset
from fedgin.tracking import Tracker
from fedgin.training.consistency import consistency_loss
from fedgin.training.data import ValidationSet, build_train_slices, build_validation_set
from fedgin.training.schedule import learning_rate
from fedgin.training.seeding import derive_seed, rng_state, seed_everything, set_rng_state, torch_generator

#: Extra loss terms a caller may add (FedProx's proximal term), called with the model after the task loss.
ExtraLoss = Callable[[nn.Module], torch.Tensor]


@dataclass
class StepStats:
    """What a stretch of training steps did: mean loss, slices seen, time spent and time waiting for data."""

    steps: int = 0
    loss_sum: float = 0.0
    slices: int = 0
    seconds: float = 0.0
    data_seconds: float = 0.0
    gin_seconds: float = 0.0
    consistency_sum: float = 0.0  # GIN-IPA's consistency term (weighted), part of loss_sum

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    @property
    def mean_consistency(self) -> float:
        return self.consistency_sum / max(self.steps, 1)

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds else 0.0


class LocalTrainer:
    """Trains one U-Net on one site's slices; used by centralized and local runs and by federated clients.

    Everything random at step t (the batch, the GIN networks, dropout) derives from (seed, t), so a run
    resumed from a checkpoint continues exactly as the uninterrupted run would have.
    """

    def __init__(
        self,
        config: RunConfig,
        train_set: SliceDataset,
        device: torch.device | None = None,
        lr: float | None = None,
    ) -> None:
        """`lr` fixes the learning rate (a federated client: the server schedules it by round); None
        follows `config.train`'s schedule over this run's steps."""
        self.config = config
        self.train_set = train_set
        self.device = device or resolve_device(config.train.device)
        self.amp = resolve_amp(config.train.amp, self.device)
        seed_everything(config.seed, config.train.deterministic)
        torch.manual_seed(derive_seed(config.seed, "init"))
        self.model = build_unet(config.model).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
        )
        self.loss_fn = build_loss(config.train.loss)
        uses_fp16 = self.amp and self.device.type == "cuda" and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=uses_fp16)
        gin = config.gin
        self.gin = (
            RandGIN(
                prob=gin.prob,
                n_layers=gin.n_layers,
                interm_channels=gin.interm_channels,
                kernel_sizes=gin.kernel_sizes,
                alpha_range=gin.alpha_range,
                shared_network=gin.shared_network,
            )
            if gin.enabled
            else None
        )
        # GIN-IPA: the three views of every sample go through the model together (3 x the batch).
        self.ipa = (
            RandIPA(self.gin, grid=gin.ipa_grid, downscale=gin.ipa_downscale, order=gin.ipa_order)
            if self.gin is not None and gin.ipa
            else None
        )
        affine = config.affine
        self.affine = (
            RandAffine(affine.prob, affine.rotate_deg, affine.scale, affine.translate)
            if affine.enabled
            else None
        )
        self.fixed_lr = lr
        self.step = 0
        self.lr = lr if lr is not None else config.train.lr
        self._batches: Iterator[dict] | None = None
        self._batches_from = -1

    # -- data -------------------------------------------------------------------------------------------
    @property
    def batches_per_epoch(self) -> int:
        return max(1, len(self.train_set) // self.config.train.batch_size)

    def batch_stream(self, start_step: int) -> Iterator[dict]:
        """Batches for steps start_step, start_step + 1, ...; batch t depends on (seed, t) only."""
        if isinstance(self.train_set, PatchSampler):
            for step in itertools.count(start_step):
                generator = torch_generator(self.config.seed, "patches", step)
                yield self.train_set.sample(self.config.train.batch_size, generator)
        epoch, offset = divmod(start_step, self.batches_per_epoch)
        while True:
            sampler = ForegroundBatchSampler(
                self.train_set,
                self.config.train.batch_size,
                foreground_fraction=self.config.train.foreground_fraction,
                generator=torch_generator(self.config.seed, "batches", epoch),
            )
            index_batches = list(sampler)[offset:]
            loader = DataLoader(
                self.train_set,
                batch_sampler=index_batches,
                num_workers=self.config.train.num_workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=False,
            )
            yield from loader
            epoch, offset = epoch + 1, 0

    def next_batch(self) -> dict:
        if self._batches is None or self._batches_from != self.step:
            self._batches = self.batch_stream(self.step)
        batch = next(self._batches)
        self._batches_from = self.step + 1
        return batch

    @property
    def total_steps(self) -> int:
        """The steps of the whole run (the schedule's length): train.epochs passes, else train.steps."""
        train = self.config.train
        return train.epochs * self.batches_per_epoch if train.epochs else train.steps

    def learning_rate(self, step: int) -> float:
        """The learning rate of `step`: fixed, or from the schedule (steps past the end keep its last)."""
        if self.fixed_lr is not None:
            return self.fixed_lr
        total = self.total_steps
        return learning_rate(self.config.train, min(step, total - 1), total)

    # -- training ---------------------------------------------------------------------------------------
    def train_steps(
        self,
        steps: int,
        extra_loss: ExtraLoss | None = None,
        progress: Progress | None = None,
        task: int | None = None,
    ) -> StepStats:
        """Run `steps` optimizer steps; returns the loss and throughput of this stretch."""
        stats = StepStats()
        self.model.train()
        for _ in range(steps):
            started = time.perf_counter()
            batch = self.next_batch()
            image = batch["image"].to(self.device, non_blocking=True)
            label = batch["label"].to(self.device, non_blocking=True)
            if self.affine is not None:  # pose and size first, then GIN's intensities
                image, label = self.affine(
                    image, label, generator=torch_generator(self.config.seed, "affine", self.step)
                )
            loaded = time.perf_counter()
            samples = int(image.shape[0])
            if self.ipa is not None:
                views = self.ipa(image, generator=torch_generator(self.config.seed, "gin", self.step))
                image = views.stacked()
            elif self.gin is not None:
                image = self.gin(image, generator=torch_generator(self.config.seed, "gin", self.step))
            augmented = time.perf_counter()
            torch.manual_seed(derive_seed(self.config.seed, "step", self.step))
            self.lr = self.learning_rate(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr
            consistency = None
            with autocast_context(self.device, self.amp):
                logits = self.model(image)
                if self.ipa is None:
                    loss = self.loss_fn(logits.float(), label)
                else:  # segmentation on the blended view, consistency over all three (Ouyang et al.)
                    loss = self.loss_fn(logits[:samples].float(), label)
                    consistency = self.config.gin.consistency_weight * consistency_loss(logits.chunk(3))
                    loss = loss + consistency
            if extra_loss is not None:
                loss = loss + extra_loss(self.model)
            if not torch.isfinite(loss):
                raise RunDiverged(
                    f"step {self.step + 1}: the training loss is {loss.item()}; {self.likely_cause(batch)}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            finished = time.perf_counter()
            stats.steps += 1
            stats.loss_sum += float(loss.detach())
            if consistency is not None:
                stats.consistency_sum += float(consistency.detach())
            stats.slices += samples  # training slices drawn, not the IPA views made of them
            stats.seconds += finished - started
            stats.data_seconds += loaded - started
            stats.gin_seconds += augmented - loaded
            if progress is not None and task is not None:
                progress.update(
                    task, advance=1, loss=f"{stats.mean_loss:.3f}", speed=f"{stats.slices_per_second:.0f}"
                )
        # A finite loss can still be followed by a step to NaN or Inf weights (the next step's loss would
        # show it, but the stretch may end here and its model be saved or sent).
        problem = nonfinite_weights(self.model.state_dict())
        if problem is not None:
            raise RunDiverged(
                f"step {self.step}: the model's weights are not all finite ({problem}); "
                f"{self.likely_cause(None)}"
            )
        return stats

    def likely_cause(self, batch: dict | None) -> str:
        """Why training produced NaN or Inf, as far as cheaply known: the batch's images (naming the case
        and slice), a non-finite setting, weights already broken by an earlier step, else a too high rate."""
        if batch is not None:
            images = batch["image"]
            broken = ~torch.isfinite(images.flatten(1)).all(1)
            if bool(broken.any()):
                where = "a training patch"
                if "case_id" in batch:
                    first = int(broken.nonzero()[0])
                    where = f"case {batch['case_id'][first]} (slice {int(batch['slice'][first])})"
                return (
                    f"the cached image of {where} holds NaN or Inf: the cache is damaged or was prepared "
                    "from a broken scan; prepare it again"
                )
        train = self.config.train
        settings = {"train.lr": self.lr, "train.weight_decay": train.weight_decay}
        if self.ipa is not None:
            settings["gin.consistency_weight"] = self.config.gin.consistency_weight
        for name, value in settings.items():
            if not math.isfinite(value):
                return f"{name} is {value}; give a finite value"
        if batch is not None and nonfinite_weights(self.model.state_dict()) is not None:
            return f"the weights became NaN or Inf at an earlier step (is train.lr = {self.lr:g} too high?)"
        return f"training diverged (is train.lr = {self.lr:g} too high?)"

    # -- checkpoints ------------------------------------------------------------------------------------
    def save(self, run: RunDirectory, name: str, history: list[dict], best: Best) -> None:
        """checkpoints/<name> with the optimizer, scaler and RNG state needed to resume exactly."""
        run.save_checkpoint(
            name,
            model=self.model.state_dict(),
            config=self.config,
            progress=self.step,
            history=history,
            best=best,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=rng_state(),
        )

    def restore(self, resumed: RunState) -> None:
        """Continue from a checkpoint `save` wrote: weights, optimizer, scaler, RNG state and step."""
        checkpoint = resumed.payload
        load_weights(resumed.path or "checkpoint", self.model, checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.step = resumed.progress
        set_rng_state(checkpoint["rng"])
        self._batches = None


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_score: float
    best_step: int
    history: list[dict] = field(default_factory=list)


def run_training(
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    stop_after: int | None = None,
    allow_changed_settings: bool = False,
) -> TrainResult:
    """A centralized or local run: train, validate every `val_interval` steps, keep best and last.

    `stop_after` ends the call after that many steps of this call (used to test resuming). A resumed run
    must have the settings of its checkpoint unless `allow_changed_settings`, and its data (always).
    Training that produces NaN or Inf stops with RunDiverged; best.pt and last.pt keep the last good model.
    """
    console = console or Console()
    run = RunDirectory(config.output, "single-site", title=config.name)
    run_dir = run.path
    resume_from = run.check(resume, overwrite)
    resumed = None
    if resume_from is not None:  # read on the CPU: restore() moves it to the trainer's device
        resumed = run.read_checkpoint(resume_from)
        run.check_resume(resumed, config, allow_changed_settings)
    # Everything that can refuse the configuration (data, model, loss, device) runs before the folder is
    # written, so a corrected configuration needs no --overwrite.
    train_set = build_train_slices(config)
    validation = build_validation_set(config)
    trainer = LocalTrainer(config, train_set)
    history: list[dict] = []
    best = Best()
    if resumed is not None:
        trainer.restore(resumed)
        history, best = resumed.history, resumed.best
    # TensorBoard (tracking.tensorboard): a missing extra refuses the run before its folder is written.
    tracker = Tracker.open(config.tracking, config.name, resume_step=trainer.step)
    run.start(config, resume_from, overwrite)
    if resume_from is not None:
        console.print(f"resuming {run_dir} at step {trainer.step}")
    console.print(
        f"[bold]{config.name}[/]: {len(train_set)} training slices from {train_set.num_cases} cases, "
        f"GIN {'off' if trainer.gin is None else 'with IPA' if trainer.ipa else 'on'}, "
        f"device {trainer.device}, amp {trainer.amp}"
    )

    # An epoch is one pass over the training slices (in batches of batch_size); steps count otherwise.
    total = trainer.total_steps
    interval = config.train.val_interval
    done_this_call = 0
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  {task.fields[speed]} slices/s"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal and console.quiet,
    ) as progress:
        task = progress.add_task("train", total=total, completed=trainer.step, loss="-", speed="-")
        while trainer.step < total:
            # Train up to the next validation or checkpoint boundary, whichever comes first.
            every = config.train.checkpoint_interval
            chunk = min(
                interval - trainer.step % interval, every - trainer.step % every, total - trainer.step
            )
            if stop_after is not None:
                chunk = min(chunk, stop_after - done_this_call)
                if chunk <= 0:
                    break
            try:
                stats = trainer.train_steps(chunk, progress=progress, task=task)
            except RunDiverged as diverged:
                raise RunDiverged(f"{diverged}; {run.kept()}") from None
            done_this_call += chunk
            row: dict = {
                "step": trainer.step,
                "loss": round(stats.mean_loss, 5),
                "lr": float(f"{trainer.lr:.6g}"),
                "slices_per_s": round(stats.slices_per_second, 2),
                "data_wait_share": round(stats.data_seconds / max(stats.seconds, 1e-9), 4),
                "gin_share": round(stats.gin_seconds / max(stats.seconds, 1e-9), 4),
                "train_seconds": round(stats.seconds, 3),
            }
            if trainer.ipa is not None:
                row["consistency"] = round(stats.mean_consistency, 5)
            if trainer.step % interval == 0 or trainer.step == total:
                validating = time.perf_counter()
                columns, score = validation.record(trainer.model, trainer.device, trainer.amp, config.model)
                row["val_seconds"] = round(time.perf_counter() - validating, 3)
                row.update(columns)
                if not validation.cases:  # then the best model is the one with the lowest training loss
                    score = -stats.mean_loss
                row["val_score"] = round(score, 5)
                if score > best.score:
                    best = Best(score, trainer.step)
                    trainer.save(run, "best.pt", [*history, row], best)
                progress.console.print(
                    f"step {trainer.step}: loss {stats.mean_loss:.4f}, val "
                    + ", ".join(
                        f"{domain} {row[f'val_dice_{domain}']:.3f}" for domain in validation.domain_modality
                    )
                )
            history.append(row)
            run.write_history(history)
            trainer.save(run, "last.pt", history, best)
            tracker.scalars(trainer.step, row)  # after last.pt: only steps a resume keeps
    tracker.close()  # on an error or Ctrl-C the tracker closes itself when it is collected
    run.write_summary(trainer.step, best)
    return TrainResult(run_dir, trainer.step, best.score, best.progress, history)


__all__ = ["LocalTrainer", "StepStats", "TrainResult", "ValidationSet", "run_training"]
