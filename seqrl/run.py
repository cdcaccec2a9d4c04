"""Everything before the first step: data, tokenizer, model, optimizer, loaders, schedule,
baselines; `Run` holds it all for the loop in `seqrl.train`. Set-up writes nothing to the run
directory but a temporary tokenizer (`seqrl.rundir` commits the run once every check passed)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from datasets import DatasetDict
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from seqrl import baselines, batching, data, distributed, lora, modeling, software
from seqrl.baselines import Baseline, LearnedBaseline
from seqrl.candidates import CandidateMaker
from seqrl.config import ModelConfig, RecipeConfig
from seqrl.decoders import Decoding
from seqrl.decoders import resolve as resolve_decoding
from seqrl.errors import SeqrlError
from seqrl.mbr import MbrDecoder, build_utility
from seqrl.mbr import build_decoder as build_mbr_decoder
from seqrl.objectives import Objective
from seqrl.objectives import build as build_objective
from seqrl.reference import Reference
from seqrl.reference import build as build_reference
from seqrl.rewards import Reward
from seqrl.rewards.inputs import check_reference_free, probe
from seqrl.rundir import NEW_TOKENIZER
from seqrl.runlog import RunLog
from seqrl.schedule import Schedule, lr_factor
from seqrl.tokenizer import train_tokenizer, training_texts


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
    tokenizer_dir: Path | None
    """The trained tokenizer this run uses (None: a pretrained one, named by the recipe)."""
    candidates: CandidateMaker
    """Makes a MIXER step's candidates and rewards (`reinforce.candidates`, `reinforce.decoding`)."""
    baseline: Baseline
    """REINFORCE's baseline (`reinforce.baseline`), built once here."""
    objective: Objective
    """The sequence-level loss (`reinforce.estimator`), built once here."""
    reference: Reference | None = None
    """The KL penalty's reference policy and weight (with `reinforce.kl_coef` > 0)."""
    mbr: MbrDecoder | None = None
    """MBR decoding for evaluation (`eval.decode: mbr`), its utility built at set-up."""


def setup(cfg: RecipeConfig, accelerator: Accelerator, out: Path, reward_fns: list,
          resume_from: Path | None = None) -> Run:
    """Seed, data, tokenizer, model, optimizer, loader: everything before step 1."""
    if accelerator.device.type == "cpu":
        # Subnormal floats make x86 arithmetic ~100x slower (a matmul here: 0.14 s -> 18 s), and the
        # risk loss makes them: a candidate's gradient is scaled by its q, e^-50 for an unlikely
        # one, then by token probabilities. Flushed to zero (set before the worker threads exist,
        # which inherit it), they cost nothing; a value under 1.2e-38 changes nothing that trains.
        torch.set_flush_denormal(True)
    set_seed(cfg.run.seed)
    if cfg.data.reference_free and cfg.schedule.samples():
        check_reference_free(reward_fns)
    raw = data.load_raw(cfg.data, data.needed_splits(cfg.data))
    carved = data.carve_note(cfg.data, raw)
    if carved:
        accelerator.print(carved)
    tokenizer_dir = tokenizer_location(cfg, out, resume_from)
    text_model = adapt(build_text_model(cfg, accelerator, raw, tokenizer_dir), cfg.model, accelerator)
    check_lengths(cfg, text_model.is_seq2seq, text_model.max_positions)
    tokenized, reports = data.tokenize(raw, text_model, cfg.data, accelerator)
    for report in reports:
        accelerator.print(report.cache_line())
        accelerator.print(report.line())
    if cfg.model.name_or_path or cfg.tokenizer.name_or_path:  # a tokenizer made for other data: can it read this?
        data.check_known_tokens(tokenized, text_model.tokenizer.unk_token_id, cfg.data)
    collate = batching.TrainCollator(text_model, cfg.data)
    if reward_fns:  # model-based rewards to the device; then every reward called once, before training
        probe_rewards(cfg, accelerator.device, text_model, tokenized[cfg.data.train_split], reward_fns)
    train_rows, processes = tokenized[cfg.data.train_split], accelerator.num_processes
    loader = batching.train_loader(train_rows, cfg.xent.batch_size, cfg.data, cfg.run.seed, processes, collate)
    rl_batch = cfg.reinforce.batch_size or cfg.xent.batch_size
    rl_loader = batching.train_loader(train_rows, rl_batch, cfg.data, cfg.run.seed, processes, collate)
    learned = LearnedBaseline(text_model.model.config.hidden_size) if cfg.reinforce.baseline.kind == "learned" else None
    optimizer = build_optimizer(cfg, text_model.model, learned)
    model, optimizer, loader, rl_loader, *rest = accelerator.prepare(
        text_model.model, optimizer, loader, rl_loader, *([learned] if learned is not None else []))
    accum = cfg.optim.grad_accum_steps
    schedule = Schedule(cfg.schedule, max(1, len(loader) // accum), max(1, len(rl_loader) // accum),
                        cfg.data.max_target_tokens)
    total = min(schedule.total_steps, cfg.run.max_steps or schedule.total_steps)
    lr_scheduler = build_lr_schedule(cfg, optimizer, schedule.xent_steps, total)
    accelerator.register_for_checkpointing(lr_scheduler)  # stepped by hand, saved with the state
    print_header(cfg, accelerator, text_model, schedule, total)
    reference = None
    if cfg.reinforce.kl_coef > 0 and cfg.schedule.samples():
        reference = build_reference(text_model.model, bool(cfg.model.lora),
                                    distributed.partitioned(accelerator, text_model.model), cfg.reinforce.kl_coef)
    baseline = baselines.build(cfg.reinforce.baseline, rest[0] if rest else None)
    candidates = CandidateMaker(text_model, accelerator, reward_fns, cfg.reinforce.candidates,
                                rollout_decoding(cfg, text_model, accelerator), cfg.reinforce.chunk_sources,
                                cfg.data.max_target_tokens, cfg.run.seed, total, greedy=baseline.needs_greedy)
    mbr = (build_mbr_decoder(text_model, cfg.mbr, cfg.eval.max_new_tokens, cfg.run.seed)
           if cfg.eval.decode == "mbr" else None)
    utility = build_utility(cfg.mbr) if cfg.reinforce.estimator.kind == "mbr" and cfg.schedule.samples() else None
    objective = build_objective(cfg.reinforce.estimator, utility, text_model, cfg.mbr.pair_batch)
    return Run(cfg, accelerator, out, text_model, tokenized, model, optimizer, lr_scheduler, loader, rl_loader,
               schedule, total, RunLog(accelerator, out, cfg), reward_fns, tokenizer_dir, candidates, baseline,
               objective, reference, mbr)


def probe_rewards(cfg: RecipeConfig, device: torch.device, text_model: modeling.TextModel, train, reward_fns: list
                  ) -> None:
    """Model-based rewards to the device, then every reward called once on two training rows."""
    for reward in reward_fns:
        reward.setup(device, train[cfg.data.target_field])
    rows = [train[i] for i in range(min(2, len(train)))]
    probe(text_model, reward_fns, batching.probe_batch(text_model, rows, cfg.data))


def build_optimizer(cfg: RecipeConfig, model: torch.nn.Module, learned: torch.nn.Module | None
                    ) -> torch.optim.Optimizer:
    """AdamW over the trained weights, and the learned baseline's regressor in a group of its own."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if learned is not None:  # its own constant rate (MIXER's fraction of the network's is ~0 under Adam)
        groups.append({"params": learned.parameters(), "lr": cfg.reinforce.baseline.lr})
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                             weight_decay=cfg.optim.weight_decay)


def build_lr_schedule(cfg: RecipeConfig, optimizer: torch.optim.Optimizer, xent_steps: int, total: int) -> LambdaLR:
    """The network's warm-up and decay (over the XENT stage only when `reinforce.lr` is set, then
    constant at it); the learned baseline's group keeps its own rate."""
    rl_start = xent_steps if cfg.reinforce.lr is not None and cfg.schedule.samples() else None
    network_factor = partial(lr_factor, warmup=cfg.optim.warmup_steps, decay=cfg.optim.decay,
                             decay_steps=rl_start if rl_start is not None else total, rl_start=rl_start,
                             rl_factor=(cfg.reinforce.lr or cfg.optim.lr) / cfg.optim.lr)
    return LambdaLR(optimizer, [network_factor] + [_constant] * (len(optimizer.param_groups) - 1))


def print_header(cfg: RecipeConfig, accelerator: Accelerator, text_model: modeling.TextModel, schedule: Schedule,
                 total: int) -> None:
    """The run header: model, steps, processes, and the stages the run will reach."""
    model = describe(text_model.model, cfg.model, text_model.new_weights)
    accelerator.print(f"model: {model}, vocab {len(text_model.tokenizer)}; "
                      f"{total} optimizer steps on {accelerator.num_processes} process(es), "
                      f"device {accelerator.device}")
    accelerator.print(distributed.describe(accelerator))
    accelerator.print(software.describe())
    for start, plan in schedule.boundaries():
        if start >= total:  # (stages after run.max_steps are never reached)
            break
        accelerator.print(f"  from step {start}: stage {plan.stage}, last {plan.n_rl_tokens} target tokens "
                          f"sampled, xent weight {plan.xent_weight}")


def rollout_decoding(cfg: RecipeConfig, text_model: modeling.TextModel, accelerator: Accelerator) -> Decoding:
    """How rollouts decode on this model and device (`reinforce.decoding`), said in the header."""
    settings = cfg.reinforce.decoding
    decoding = resolve_decoding(settings.kv_cache, settings.compile, settings.check_every, text_model.model,
                                accelerator.device, cfg.data.max_source_tokens)
    if cfg.schedule.samples():
        accelerator.print(f"rollouts: {decoding.cache} KV cache, compiled step {'on' if decoding.compile else 'off'}, "
                          f"end-of-rows check every {decoding.check_every} token(s)")
    return decoding


def adapt(text_model: modeling.TextModel, cfg: ModelConfig, accelerator: Accelerator) -> modeling.TextModel:
    """Gradient checkpointing and LoRA adapters, as the recipe asks."""
    if cfg.gradient_checkpointing:  # (non-reentrant: works with frozen base weights and with LoRA)
        text_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora is None:
        return text_model
    accelerator.register_save_state_pre_hook(lora.keep_trained)  # checkpoints hold what trains
    return dataclasses.replace(text_model, model=lora.apply(text_model.model, cfg.lora, text_model.new_weights))


def full_numel(p: torch.Tensor) -> int:
    """A parameter's size, whole: under DeepSpeed ZeRO-3 a rank holds an empty placeholder and the
    size is `ds_numel`."""
    return getattr(p, "ds_numel", p.numel())


def describe(model: torch.nn.Module, cfg: ModelConfig, new_weights: tuple[str, ...] = ()) -> str:
    total = sum(full_numel(p) for p in model.parameters())
    name = type(model.get_base_model() if cfg.lora else model).__name__
    text = f"{name}, {total / 1e6:.2f}M parameters"
    if cfg.lora:
        trained = sum(full_numel(p) for p in model.parameters() if p.requires_grad)
        text += f" ({trained / 1e6:.2f}M trained: {lora.describe(model, cfg.lora.rank, new_weights)})"
    return text + (", gradient checkpointing" if cfg.gradient_checkpointing else "")


def _constant(step: int) -> float:
    """The learned baseline's learning-rate factor: none of the network's schedule applies."""
    return 1.0


def tokenizer_location(cfg: RecipeConfig, out: Path, resume_from: Path | None) -> Path | None:
    """Where the run's trained tokenizer is: a resumed run's own (beside its checkpoints), or a
    temporary directory for the one this run trains; None when the recipe names a tokenizer."""
    if cfg.tokenizer.name_or_path is not None or cfg.model.name_or_path is not None:
        return None
    if resume_from is None:
        return out / NEW_TOKENIZER
    trained = resume_from.parent.parent / "tokenizer"
    if not trained.is_dir():
        raise SeqrlError(f"run.resume: the run of {resume_from} has no tokenizer/ beside its checkpoints; "
                         f"the checkpoint cannot be read without the tokenizer it was trained with")
    return trained


def build_text_model(cfg: RecipeConfig, accelerator: Accelerator, raw: DatasetDict,
                     tokenizer_dir: Path | None) -> modeling.TextModel:
    """The recipe's model and tokenizer. A tokenizer to train is trained by the main process
    into `tokenizer_dir` (the others load that copy); an existing one is loaded."""
    if tokenizer_dir is None:
        text_model = modeling.build(cfg.model, cfg.tokenizer, cfg.data)
    else:
        with accelerator.main_process_first():
            if accelerator.is_main_process and tokenizer_dir.name == NEW_TOKENIZER:
                train = raw[cfg.data.train_split]
                texts, examples = training_texts(train, cfg.data.source_field, cfg.data.target_field,
                                                 cfg.data.source_prefix, cfg.tokenizer.max_train_examples,
                                                 cfg.data.split_seed)
                train_tokenizer(texts, cfg.tokenizer).save_pretrained(tokenizer_dir)
                print(f"tokenizer: trained on {examples} of {len(train)} training examples")
        tok_cfg = type(cfg.tokenizer)(**{**vars(cfg.tokenizer), "name_or_path": str(tokenizer_dir)})
        text_model = modeling.build(cfg.model, tok_cfg, cfg.data)
    text_model.max_new_tokens = cfg.eval.max_new_tokens  # saved with the model: `seqrl generate`'s default
    return text_model


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
