"""Everything before the first step: output directory, data, tokenizer, model, optimizer,
loaders, schedule, baselines; `Run` holds it all for the loop in `seqrl.train`."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from datasets import DatasetDict
from torch.utils.data import DataLoader
from torch.optim.lr_scheduler import LambdaLR

from seqrl import data, modeling
from seqrl.baselines import EMABaseline, LearnedBaseline
from seqrl.config import RecipeConfig, dump_recipe
from seqrl.errors import SeqrlError
from seqrl.rewards import Reward
from seqrl.runlog import METRICS_FILE, RunLog
from seqrl.schedule import Schedule, lr_factor

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
    rewards: list[Reward]
    ema: EMABaseline | None = None
    learned_baseline: torch.nn.Module | None = None
    reference: torch.nn.Module | None = None


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


def setup(cfg: RecipeConfig, accelerator: Accelerator, out: Path, reward_fns: list,
          resume_from: Path | None = None) -> Run:
    """Output dir, seed, data, tokenizer, model, optimizer, loader: everything before step 1."""
    if accelerator.is_main_process:
        if resume_from is None:
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(cfg.run.seed)
    raw = data.load_raw(cfg.data, data.needed_splits(cfg.data))
    text_model = build_text_model(cfg, accelerator, out, raw, reuse_tokenizer=resume_from is not None)
    check_lengths(cfg, text_model.is_seq2seq, text_model.max_positions)
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
    if learned is not None:  # its own constant rate (MIXER's fraction of the network's is ~0 under Adam)
        groups.append({"params": learned.parameters(), "lr": cfg.reinforce.baseline_lr})
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                                  weight_decay=cfg.optim.weight_decay)
    model, optimizer, loader, rl_loader, *rest = accelerator.prepare(
        text_model.model, optimizer, loader, rl_loader, *([learned] if learned is not None else []))
    accum = cfg.optim.grad_accum_steps
    schedule = Schedule(cfg.schedule, max(1, len(loader) // accum), max(1, len(rl_loader) // accum),
                        cfg.data.max_target_tokens)
    total = min(schedule.total_steps, cfg.run.max_steps or schedule.total_steps)
    rl_start = schedule.xent_steps if cfg.reinforce.lr is not None and cfg.schedule.kind != "xent" else None
    network_factor = partial(lr_factor, warmup=cfg.optim.warmup_steps, decay=cfg.optim.decay,
                             decay_steps=rl_start if rl_start is not None else total, rl_start=rl_start,
                             rl_factor=(cfg.reinforce.lr or cfg.optim.lr) / cfg.optim.lr)
    lr_scheduler = LambdaLR(optimizer, [network_factor] + [_constant] * (len(groups) - 1))
    accelerator.register_for_checkpointing(lr_scheduler)  # stepped by hand, saved with the state
    n_params = sum(p.numel() for p in text_model.model.parameters())
    accelerator.print(f"model: {type(text_model.model).__name__}, {n_params / 1e6:.2f}M parameters, "
                      f"vocab {len(text_model.tokenizer)}; {total} optimizer steps on "
                      f"{accelerator.num_processes} process(es), device {accelerator.device}")
    for start, plan in schedule.boundaries():
        accelerator.print(f"  from step {start}: stage {plan.stage}, last {plan.n_rl_tokens} target tokens "
                          f"sampled, xent weight {plan.xent_weight}")
    ema = EMABaseline(cfg.reinforce.ema_decay) if cfg.reinforce.baseline == "ema" else None
    if accelerator.is_main_process:  # written last: a recipe that failed set-up leaves no "run" behind
        (out / "recipe.yaml").write_text(dump_recipe(cfg), encoding="utf-8")
    return Run(cfg, accelerator, out, text_model, tokenized, model, optimizer, lr_scheduler, loader, rl_loader,
               schedule, total, RunLog(accelerator, out, cfg), reward_fns, ema, rest[0] if rest else None)


def _constant(step: int) -> float:
    """The learned baseline's learning-rate factor: none of the network's schedule applies."""
    return 1.0


def build_text_model(cfg: RecipeConfig, accelerator: Accelerator, out: Path, raw: DatasetDict,
                     reuse_tokenizer: bool = False) -> modeling.TextModel:
    """Rank 0 trains the tokenizer (if one is trained) and saves it; the others load that copy.
    A resumed run reuses the tokenizer its checkpoints were trained with."""
    if cfg.tokenizer.name_or_path is not None or cfg.model.name_or_path is not None:
        return modeling.build(cfg.model, cfg.tokenizer, cfg.data)
    tok_dir = out / "tokenizer"
    with accelerator.main_process_first():
        if accelerator.is_main_process and not (reuse_tokenizer and tok_dir.is_dir()):
            train = raw[cfg.data.train_split]
            texts = [cfg.data.source_prefix + s for s in list(train[cfg.data.source_field]) if isinstance(s, str)]
            texts += [t for t in list(train[cfg.data.target_field]) if isinstance(t, str)]
            modeling.train_tokenizer(texts, cfg.tokenizer).save_pretrained(tok_dir)
    tok_cfg = type(cfg.tokenizer)(**{**vars(cfg.tokenizer), "name_or_path": str(tok_dir)})
    return modeling.build(cfg.model, tok_cfg, cfg.data)


def check_lengths(cfg: RecipeConfig, is_seq2seq: bool, max_positions: int | None) -> None:
    """Every length in the recipe must fit the model's position embeddings; say which does not."""
    problem = modeling.length_problem(is_seq2seq, max_positions, cfg.data.max_source_tokens, 0)
    if problem:
        raise SeqrlError(f"data.max_source_tokens: {problem}; lower it or give the model more positions")
    for field_name, new_tokens in (("data.max_target_tokens", cfg.data.max_target_tokens),
                                   ("eval.max_new_tokens", cfg.eval.max_new_tokens)):
        problem = modeling.length_problem(is_seq2seq, max_positions, cfg.data.max_source_tokens, new_tokens)
        if problem:
            raise SeqrlError(f"{field_name}: {problem}; lower it or give the model more positions")
