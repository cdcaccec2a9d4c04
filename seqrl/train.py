"""The training loop: set-up, then each optimizer step runs the schedule's plan (cross-entropy
or MIXER), with logging, evaluation and checkpoints on their cadence.

accelerate handles every device and process concern in plain sight: `prepare`, `accumulate`,
`backward`, `clip_grad_norm_`, `gather_object`. The learning-rate schedule is stepped by hand
once per optimizer step (not prepared), so its length is counted in optimizer steps whatever
the number of processes.
"""

from __future__ import annotations

import copy
import gc
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from datasets import DatasetDict
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from seqrl import data, modeling, rewards
from seqrl.baselines import EMABaseline, LearnedBaseline
from seqrl.checkpoint import save_checkpoint
from seqrl.config import RecipeConfig, dump_recipe
from seqrl.errors import SeqrlError
from seqrl.evaluate import evaluate_split
from seqrl.plots import plot_run
from seqrl.runlog import METRICS_FILE, RunLog, check_trackers
from seqrl.schedule import Schedule
from seqrl.steps import mixer_step, xent_step

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
    rl_loader: DataLoader
    schedule: Schedule
    total_steps: int
    runlog: RunLog
    rewards: list[rewards.Reward]
    ema: EMABaseline | None = None
    learned_baseline: torch.nn.Module | None = None
    reference: torch.nn.Module | None = None


def finetune(cfg: RecipeConfig) -> Path:
    """Run the recipe; return the `final/` model directory."""
    out = Path(cfg.run.output_dir)
    check_output_dir(out, cfg.run.overwrite)
    check_trackers(cfg.log.trackers)
    reward_fns = rewards.build(cfg.rewards) if cfg.schedule.kind != "xent" else []
    accelerator = Accelerator(gradient_accumulation_steps=cfg.optim.grad_accum_steps,
                              mixed_precision=cfg.run.mixed_precision, cpu=cfg.run.cpu,
                              log_with=cfg.log.trackers or None, project_dir=str(out))
    run = None
    try:
        run = setup(cfg, accelerator, out, reward_fns)
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


def setup(cfg: RecipeConfig, accelerator: Accelerator, out: Path, reward_fns: list) -> Run:
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
    check_lengths(cfg, text_model)
    tokenized, reports = data.tokenize(raw, text_model, cfg.data)
    for report in reports:
        accelerator.print(report.line())
    collate = data.TrainCollator(text_model, cfg.data)
    loader = DataLoader(tokenized[cfg.data.train_split], batch_size=cfg.xent.batch_size, shuffle=True,
                        collate_fn=collate)
    rl_batch = cfg.reinforce.batch_size or cfg.xent.batch_size
    rl_loader = DataLoader(tokenized[cfg.data.train_split], batch_size=rl_batch, shuffle=True, collate_fn=collate)
    learned = LearnedBaseline(text_model.model.config.hidden_size) if cfg.reinforce.baseline == "learned" else None
    groups = [{"params": text_model.model.parameters()}]
    if learned is not None:  # MIXER trains its reward predictor at a fraction of the network's rate
        groups.append({"params": learned.parameters(), "lr": cfg.optim.lr * cfg.reinforce.baseline_lr_scale})
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                                  weight_decay=cfg.optim.weight_decay)
    model, optimizer, loader, rl_loader, *rest = accelerator.prepare(
        text_model.model, optimizer, loader, rl_loader, *([learned] if learned is not None else []))
    accum = cfg.optim.grad_accum_steps
    schedule = Schedule(cfg.schedule, max(1, len(loader) // accum), max(1, len(rl_loader) // accum),
                        cfg.data.max_target_tokens)
    total = min(schedule.total_steps, cfg.run.max_steps or schedule.total_steps)
    lr_scheduler = get_scheduler(cfg.optim.decay if cfg.optim.decay != "constant" else "constant_with_warmup",
                                 optimizer, num_warmup_steps=cfg.optim.warmup_steps, num_training_steps=total)
    n_params = sum(p.numel() for p in text_model.model.parameters())
    accelerator.print(f"model: {type(text_model.model).__name__}, {n_params / 1e6:.2f}M parameters, "
                      f"vocab {len(text_model.tokenizer)}; {total} optimizer steps on "
                      f"{accelerator.num_processes} process(es), device {accelerator.device}")
    for start, plan in schedule.boundaries():
        accelerator.print(f"  from step {start}: stage {plan.stage}, last {plan.n_rl_tokens} target tokens "
                          f"sampled, xent weight {plan.xent_weight}")
    ema = EMABaseline(cfg.reinforce.ema_decay) if cfg.reinforce.baseline == "ema" else None
    return Run(cfg, accelerator, out, text_model, tokenized, model, optimizer, lr_scheduler, loader, rl_loader,
               schedule, total, RunLog(accelerator, out, cfg), reward_fns, ema, rest[0] if rest else None)


def build_text_model(cfg: RecipeConfig, accelerator: Accelerator, out: Path, raw: DatasetDict) -> modeling.TextModel:
    """Rank 0 trains the tokenizer (if one is trained) and saves it; the others load that copy."""
    if cfg.tokenizer.name_or_path is not None or cfg.model.name_or_path is not None:
        return modeling.build(cfg.model, cfg.tokenizer, cfg.data)
    tok_dir = out / "tokenizer"
    with accelerator.main_process_first():
        if accelerator.is_main_process:
            train = raw[cfg.data.train_split]
            texts = [cfg.data.source_prefix + s for s in list(train[cfg.data.source_field]) if isinstance(s, str)]
            texts += [t for t in list(train[cfg.data.target_field]) if isinstance(t, str)]
            modeling.train_tokenizer(texts, cfg.tokenizer).save_pretrained(tok_dir)
    tok_cfg = type(cfg.tokenizer)(**{**vars(cfg.tokenizer), "name_or_path": str(tok_dir)})
    return modeling.build(cfg.model, tok_cfg, cfg.data)


def check_lengths(cfg: RecipeConfig, text_model: modeling.TextModel) -> None:
    """Every length in the recipe must fit the model's position embeddings; say which does not."""
    problem = text_model.length_problem(cfg.data.max_source_tokens, 0)
    if problem:
        raise SeqrlError(f"data.max_source_tokens: {problem}; lower it or give the model more positions")
    for field_name, new_tokens in (("data.max_target_tokens", cfg.data.max_target_tokens),
                                   ("eval.max_new_tokens", cfg.eval.max_new_tokens)):
        problem = text_model.length_problem(cfg.data.max_source_tokens, new_tokens)
        if problem:
            raise SeqrlError(f"{field_name}: {problem}; lower it or give the model more positions")


def train(run: Run) -> None:
    """Optimizer steps until `total_steps`: the XENT stage on the XENT loader, the rest on the
    REINFORCE loader (its own batch size), each step running the schedule's plan for it."""
    cfg, acc = run.cfg, run.accelerator
    loop = _Loop(tqdm(total=run.total_steps, desc="train",
                      disable=not (cfg.log.progress_bar and acc.is_main_process)))
    phases = [(run.loader, min(run.schedule.xent_steps, run.total_steps)), (run.rl_loader, run.total_steps)]
    for loader, end in phases:
        epoch = 0
        while loop.step < end:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            for batch in loader:
                if micro_step(run, batch, loop) and loop.step >= end:
                    break
            epoch += 1
            loop.epoch += 1
    loop.bar.close()


@dataclass
class _Loop:
    bar: tqdm
    step: int = 0
    epoch: int = 0
    window: "_Window" = field(default_factory=lambda: _Window())
    stage: tuple | None = None


def micro_step(run: Run, batch: dict, loop: _Loop) -> bool:
    """One micro-batch; returns True when it completed an optimizer step."""
    cfg, acc = run.cfg, run.accelerator
    plan = run.schedule.plan(loop.step)
    if (plan.stage, plan.n_rl_tokens) != loop.stage:
        loop.stage = (plan.stage, plan.n_rl_tokens)
        run.runlog.write(loop.step, {"stage_start": 1, "stage": plan.stage, "delta": plan.n_rl_tokens,
                                     "xent_weight": plan.xent_weight})
    if not plan.is_xent and run.reference is None and cfg.reinforce.kl_coef > 0:
        run.reference = _frozen_copy(acc.unwrap_model(run.model))
    with acc.accumulate(run.model):
        start = time.perf_counter()
        loss, stats = xent_step(run, batch["model_inputs"]) if plan.is_xent else mixer_step(run, batch, plan)
        acc.backward(loss)
        if acc.sync_gradients and cfg.optim.max_grad_norm:
            stats["train/grad_norm"] = float(acc.clip_grad_norm_(run.model.parameters(), cfg.optim.max_grad_norm))
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        stats["time/step_s"] = time.perf_counter() - start
    loop.window.add({"train/loss": float(loss.detach()), **stats})
    if not acc.sync_gradients:
        return False
    run.lr_scheduler.step()
    loop.step += 1
    loop.bar.update(1)
    on_step_end(run, loop.step, loop.epoch, loop.window, loop.bar)
    return True


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The KL penalty's reference: the policy as it was when sequence-level training began."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def on_step_end(run: Run, step: int, epoch: int, window: "_Window", bar: tqdm) -> None:
    cfg = run.cfg
    if step % cfg.log.every == 0 or step == run.total_steps:
        metrics = window.flush(run.accelerator)
        if metrics:
            metrics.update({"lr": run.lr_scheduler.get_last_lr()[0], "epoch": epoch})
            run.runlog.write(step, metrics)
            bar.set_postfix(loss=f"{metrics['train/loss']:.3f}")
    if cfg.eval.every and step % cfg.eval.every == 0 and step < run.total_steps:
        evaluate(run, step, cfg.data.eval_split, cfg.eval.max_examples)
    if step == run.schedule.xent_steps < run.total_steps and cfg.eval.test_after_xent and cfg.data.test_split:
        evaluate(run, step, cfg.data.test_split, None, run.out / f"predictions-{cfg.data.test_split}-xent.jsonl")
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
        run.runlog.close()
        for path in plot_run(run.out):
            run.accelerator.print(f"plot: {path}")
    run.accelerator.wait_for_everyone()
    return final


def teardown(accelerator: Accelerator, run: Run | None) -> None:
    """Drop every reference to the wrapped model before `end_training`: a DDP model still alive
    while the gloo process group is destroyed was seen to hang the interpreter on exit."""
    if run is not None:
        run.runlog.close()
        run.model = run.optimizer = run.text_model = run.reference = run.learned_baseline = None
    del run
    accelerator.free_memory()
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()


class _Window:
    """Training statistics between two log lines: means, and `*_tokens` counts as rates."""

    def __init__(self):
        self.sums, self.counts, self.start = {}, {}, time.perf_counter()

    def add(self, stats: dict[str, float]) -> None:
        for key, value in stats.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def flush(self, accelerator: Accelerator) -> dict[str, float]:
        """Averaged over steps and processes (gathered as small dicts: key sets may differ by rank)."""
        seconds = time.perf_counter() - self.start
        windows = gather_object([(self.sums, self.counts)])
        self.sums, self.counts, self.start = {}, {}, time.perf_counter()
        keys = sorted({k for sums, _ in windows for k in sums})
        out = {}
        for key in keys:
            total = sum(sums.get(key, 0.0) for sums, _ in windows)
            if key.endswith("_tokens"):  # summed over processes: throughput of the whole run
                out[f"train/{key}_per_s"] = total / seconds
            else:
                out[key] = total / sum(counts.get(key, 0) for _, counts in windows)
        return out
