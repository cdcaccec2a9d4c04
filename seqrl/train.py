"""The training loop: set-up, the cross-entropy step, and the eval/checkpoint/log cadence.

accelerate handles every device and process concern in plain sight: `prepare`, `accumulate`,
`backward`, `clip_grad_norm_`, `gather_object`. The learning-rate schedule is stepped by hand
once per optimizer step (not prepared), so its length is counted in optimizer steps whatever
the number of processes.
"""

from __future__ import annotations

import gc
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from datasets import DatasetDict
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from seqrl import data, modeling
from seqrl.checkpoint import save_checkpoint
from seqrl.config import RecipeConfig, dump_recipe
from seqrl.errors import SeqrlError
from seqrl.estimators import masked_xent
from seqrl.evaluate import evaluate_split
from seqrl.runlog import METRICS_FILE, RunLog, check_trackers

log = logging.getLogger(__name__)
RUN_MARKERS = ("recipe.yaml", METRICS_FILE)


@dataclass
class Run:
    """What the loop works on, built once by `setup`."""

    cfg: RecipeConfig
    accelerator: Accelerator
    out: Path
    text_model: modeling.TextModel
    datasets: DatasetDict
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: DataLoader
    total_steps: int
    runlog: RunLog


def finetune(cfg: RecipeConfig) -> Path:
    """Run the recipe; return the `final/` model directory."""
    out = Path(cfg.run.output_dir)
    check_output_dir(out, cfg.run.overwrite)
    check_trackers(cfg.log.trackers)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.optim.grad_accum_steps,
                              mixed_precision=cfg.run.mixed_precision, cpu=cfg.run.cpu,
                              log_with=cfg.log.trackers or None, project_dir=str(out))
    run = None
    try:
        run = setup(cfg, accelerator, out)
        train(run)
        return finish(run)
    finally:
        teardown(accelerator, run)


def check_output_dir(out: Path, overwrite: bool) -> None:
    held = [m for m in RUN_MARKERS if (out / m).exists()]
    if held and not overwrite:
        raise SeqrlError(f"run.output_dir '{out}' already holds a run ({held[0]}); choose another "
                         f"run.output_dir or set run.overwrite=true to replace it")


def clear_run(out: Path) -> None:
    """Remove what an earlier run left (only reached with run.overwrite or an empty dir)."""
    for path in out.glob("*") if out.is_dir() else []:
        if path.name in (*RUN_MARKERS, "final", "checkpoints", "tokenizer") or path.name.startswith("predictions-"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def setup(cfg: RecipeConfig, accelerator: Accelerator, out: Path) -> Run:
    """Output dir, seed, data, tokenizer, model, optimizer, loader: everything before step 1."""
    if accelerator.is_main_process:
        clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(dump_recipe(cfg), encoding="utf-8")
    accelerator.wait_for_everyone()
    set_seed(cfg.run.seed)
    splits = [s for s in dict.fromkeys([cfg.data.train_split, cfg.data.eval_split, cfg.data.test_split]) if s]
    raw = data.load_raw(cfg.data, splits)
    text_model = build_text_model(cfg, accelerator, out, raw)
    tokenized, reports = data.tokenize(raw, text_model, cfg.data)
    for report in reports:
        accelerator.print(report.line())
    train_set = tokenized[cfg.data.train_split].select_columns(["source_ids", "target_ids"])
    loader = DataLoader(train_set, batch_size=cfg.xent.batch_size, shuffle=True,
                        collate_fn=text_model.collate, drop_last=False)
    optimizer = torch.optim.AdamW(text_model.model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    model, optimizer, loader = accelerator.prepare(text_model.model, optimizer, loader)
    total = total_steps(cfg, len(loader))
    lr_scheduler = get_scheduler(cfg.optim.decay if cfg.optim.decay != "constant" else "constant_with_warmup",
                                 optimizer, num_warmup_steps=cfg.optim.warmup_steps, num_training_steps=total)
    n_params = sum(p.numel() for p in text_model.model.parameters())
    accelerator.print(f"model: {type(text_model.model).__name__}, {n_params / 1e6:.2f}M parameters, "
                      f"vocab {len(text_model.tokenizer)}; {total} optimizer steps on "
                      f"{accelerator.num_processes} process(es), device {accelerator.device}")
    return Run(cfg, accelerator, out, text_model, tokenized, model, optimizer, lr_scheduler, loader,
               total, RunLog(accelerator, out, cfg))


def build_text_model(cfg: RecipeConfig, accelerator: Accelerator, out: Path, raw: DatasetDict) -> modeling.TextModel:
    """Rank 0 trains the tokenizer (if one is trained) and saves it; the others load that copy."""
    needs_training = cfg.tokenizer.name_or_path is None and cfg.model.name_or_path is None
    if not needs_training:
        return modeling.build(cfg.model, cfg.tokenizer, cfg.data)
    tok_dir = out / "tokenizer"
    with accelerator.main_process_first():
        if accelerator.is_main_process:
            train = raw[cfg.data.train_split]
            texts = [cfg.data.source_prefix + s for s in list(train[cfg.data.source_field]) if isinstance(s, str)]
            texts += [t for t in list(train[cfg.data.target_field]) if isinstance(t, str)]
            tokenizer = modeling.train_tokenizer(texts, cfg.tokenizer)
            tokenizer.save_pretrained(tok_dir)
    tok_cfg = type(cfg.tokenizer)(**{**vars(cfg.tokenizer), "name_or_path": str(tok_dir)})
    return modeling.build(cfg.model, tok_cfg, cfg.data)


def total_steps(cfg: RecipeConfig, batches_per_epoch: int) -> int:
    """Optimizer steps of the run: the schedule's length, capped by run.max_steps."""
    steps_per_epoch = max(1, batches_per_epoch // cfg.optim.grad_accum_steps)
    if cfg.schedule.xent_steps is not None:
        total = cfg.schedule.xent_steps
    else:
        total = max(1, math.ceil(cfg.schedule.xent_epochs * steps_per_epoch))
    return min(total, cfg.run.max_steps) if cfg.run.max_steps else total


def xent_step(run: Run, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Teacher forcing: mean cross-entropy of the gold target tokens."""
    logits, labels = run.text_model.target_logits(run.model, batch)  # (B, T, V), (B, T)
    loss, n_tokens = masked_xent(logits, labels, run.cfg.xent.label_smoothing)
    return loss, {"tokens": float(n_tokens)}


def train(run: Run) -> None:
    """Optimizer steps until `total_steps`; log, evaluate and checkpoint on their cadence."""
    cfg, acc = run.cfg, run.accelerator
    step, epoch, window = 0, 0, _Window()
    bar = tqdm(total=run.total_steps, desc="train", disable=not (cfg.log.progress_bar and acc.is_main_process))
    while step < run.total_steps:
        if hasattr(run.loader, "set_epoch"):
            run.loader.set_epoch(epoch)
        for batch in run.loader:
            with acc.accumulate(run.model):
                loss, stats = xent_step(run, batch)
                acc.backward(loss)
                if acc.sync_gradients and cfg.optim.max_grad_norm:
                    stats["grad_norm"] = float(acc.clip_grad_norm_(run.model.parameters(), cfg.optim.max_grad_norm))
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
            window.add(loss.detach(), stats)
            if not acc.sync_gradients:
                continue
            run.lr_scheduler.step()
            step += 1
            bar.update(1)
            on_step_end(run, step, epoch, window, bar)
            if step >= run.total_steps:
                break
        epoch += 1
    bar.close()


def on_step_end(run: Run, step: int, epoch: int, window: "_Window", bar: tqdm) -> None:
    cfg = run.cfg
    if step % cfg.log.every == 0 or step == run.total_steps:
        metrics = window.flush(run.accelerator)
        metrics.update({"lr": run.lr_scheduler.get_last_lr()[0], "epoch": epoch})
        run.runlog.write(step, metrics)
        bar.set_postfix(loss=f"{metrics['train/loss']:.3f}")
    if cfg.eval.every and step % cfg.eval.every == 0 and step < run.total_steps:
        evaluate(run, step, cfg.data.eval_split, cfg.eval.max_examples)
    if cfg.run.save_every and step % cfg.run.save_every == 0:
        save_checkpoint(run.accelerator, run.out, step, {"epoch": epoch}, cfg.run.keep_checkpoints)


def evaluate(run: Run, step: int, split: str, max_examples: int | None, predictions: Path | None = None) -> dict:
    model = run.accelerator.unwrap_model(run.model)
    start = time.perf_counter()
    scores = evaluate_split(run.text_model, model, run.datasets[split], run.accelerator, run.cfg.data,
                            run.cfg.eval, max_examples=max_examples, predictions_path=predictions,
                            progress=run.cfg.log.progress_bar)
    prefix = "eval" if split == run.cfg.data.eval_split else split
    metrics = {f"{prefix}/{k}": v for k, v in scores.items()}
    if scores:
        metrics[f"{prefix}/seconds"] = time.perf_counter() - start
        run.runlog.write(step, metrics)
        run.accelerator.print(f"step {step} {split}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    return metrics


def finish(run: Run) -> Path:
    """Final evaluation(s) with predictions files, then `final/` (plain transformers directory)."""
    cfg, step = run.cfg, run.total_steps
    evaluate(run, step, cfg.data.eval_split, cfg.eval.max_examples, run.out / f"predictions-{cfg.data.eval_split}.jsonl")
    if cfg.data.test_split:
        evaluate(run, step, cfg.data.test_split, None, run.out / f"predictions-{cfg.data.test_split}.jsonl")
    final = run.out / "final"
    if run.accelerator.is_main_process:
        tmp = run.out / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        run.text_model.save(tmp, run.accelerator.unwrap_model(run.model))
        tmp.rename(final)
    run.accelerator.wait_for_everyone()
    return final


def teardown(accelerator: Accelerator, run: Run | None) -> None:
    """Drop every reference to the wrapped model before `end_training`: a DDP model still alive
    while the gloo process group is destroyed was seen to hang the interpreter on exit."""
    if run is not None:
        run.runlog.close()
        run.model = run.optimizer = run.text_model = None
    del run
    accelerator.free_memory()
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()


class _Window:
    """Running sums of the training metrics between two log lines."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.loss, self.n, self.stats, self.start = 0.0, 0, {}, time.perf_counter()

    def add(self, loss: torch.Tensor, stats: dict[str, float]) -> None:
        self.loss += float(loss)
        self.n += 1
        for k, v in stats.items():
            total, count = self.stats.get(k, (0.0, 0))
            self.stats[k] = (total + v, count + 1)

    def mean(self, key: str) -> float:
        total, count = self.stats.get(key, (0.0, 0))
        return total / max(count, 1)

    def flush(self, accelerator: Accelerator) -> dict[str, float]:
        """Means over the window and over processes; tokens/s counts every process's tokens."""
        seconds = time.perf_counter() - self.start
        tokens = self.stats.get("tokens", (0.0, 0))[0]
        sums = torch.tensor([self.loss / max(self.n, 1), self.mean("grad_norm"), tokens], device=accelerator.device)
        sums = accelerator.reduce(sums, reduction="sum")
        world = accelerator.num_processes
        metrics = {"train/loss": float(sums[0]) / world, "train/tokens_per_s": float(sums[2]) / seconds}
        if "grad_norm" in self.stats:  # clipping reports the same global norm on every rank
            metrics["train/grad_norm"] = float(sums[1]) / world
        self.reset()
        return metrics
