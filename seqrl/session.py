"""One run of a recipe, start to end: claim the output directory, set up, restore a checkpoint,
make the run's first writes, train, finish (`final/`), and let everything go again, whatever
happens on the way (`seqrl.rundir` for the directory, `seqrl.train` for the loop)."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

from seqrl import distributed, lora, preemption, rewards
from seqrl.checkpoint import changed_settings, estimate_bytes, load_checkpoint, resolve_resume, space_warning
from seqrl.config import RecipeConfig, dump_recipe, recipe_as_today
from seqrl.errors import SeqrlError, disk_writes, note_user_error
from seqrl.evaluate import trial_decode
from seqrl.languages import recipe_languages
from seqrl.preemption import Preempted, stop_signals_caught
from seqrl.run import Run, setup
from seqrl.rundir import claim, commit, is_inside
from seqrl.runlog import check_trackers
from seqrl.train import agree_max, finish, train


def finetune(cfg: RecipeConfig, reward_functions: dict | None = None, command: str | None = None) -> Path | None:
    """Run the recipe; return the `final/` model directory (None on processes other than rank 0).
    Raises `Preempted` once the checkpoint is written when SIGTERM or SIGUSR1 stopped the run.
    `reward_functions`: Python callables for the recipe's rewards of those names (`seqrl.finetune`);
    `command`: what started the run, for the model card."""
    # A stop signal is recorded from the first line (set-up may take minutes): one during set-up
    # ends the run just before its first write, one during training after the step under way.
    with stop_signals_caught():
        return _finetune(cfg, reward_functions, command)


def _finetune(cfg: RecipeConfig, reward_functions: dict | None, command: str | None) -> Path | None:
    out = Path(cfg.run.output_dir)
    resume_from = resolve_resume(out, cfg.run.resume)
    check_trackers(cfg.log.trackers)
    reward_fns = (rewards.build(cfg.rewards, reward_functions, recipe_languages(cfg.tokenizer)[1])
                  if cfg.schedule.samples() else [])
    cpu = use_cpu(cfg.run.cpu)
    distributed.check_hardware(cfg.run.mixed_precision, cpu or not torch.cuda.is_available())
    # Seedable sampler: the data order is a function of (seed, epoch), so resumes and runs on any
    # number of processes see the same global batches.
    accelerator = Accelerator(gradient_accumulation_steps=cfg.optim.grad_accum_steps,
                              mixed_precision=cfg.run.mixed_precision, cpu=cpu,
                              log_with=cfg.log.trackers or None,  # (TensorBoard writes to RUN/<log.project>)
                              project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out)),
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    try:  # what accelerate set up is what was asked for, or the run stops here
        notes = distributed.check_process(accelerator, cfg.run.mixed_precision)
    except SeqrlError:
        teardown(accelerator, None, clean=False)
        raise
    if accelerator.is_main_process:
        for note in notes:
            print(f"seqrl finetune: warning: {note}", file=sys.stderr)
    lock = claim(out, cfg.run.overwrite, resume_from, accelerator)  # held until the run ends
    if cfg.run.resume == "auto" and resume_from is None:
        accelerator.print(f"run.resume=auto: no checkpoint in {out / 'checkpoints'}; starting fresh")
    run = None
    try:
        run = setup(cfg, accelerator, out, reward_fns, resume_from)
        split = cfg.data.eval_split if cfg.data.eval_split in run.datasets else cfg.data.train_split
        trial_decode(run.text_model, accelerator.unwrap_model(run.model), run.datasets[split], cfg.eval, split)
        state = resume(run, resume_from) if resume_from else None
        signalled = agree_max(accelerator, preemption.requested())[0]  # (every process stops, or none)
        if signalled:
            raise Preempted(f"stopped by {preemption.signal_name(signalled)} during set-up, before the run "
                            f"wrote anything; run the same command again")
        start(run, resume_from, state)
        loop = train(run, state)
        final = finish(run, loop, command) if not loop.preempted else None
        if loop.preempted:
            raise Preempted(f"stopped by {loop.preempted} after step {loop.step}, checkpoint written to "
                            f"{loop.checkpoint}; to continue, run the same command with --set run.resume=auto")
    except Preempted:  # every process stopped at the same step: a clean end
        teardown(accelerator, run, clean=True)
        raise
    except BaseException as err:
        if isinstance(err, SeqrlError):  # (marked before gloo goes, so the other processes see it when it does)
            note_user_error()
        teardown(accelerator, run, clean=False)
        raise
    finally:
        lock.release()
    teardown(accelerator, run, clean=True)
    return final


def use_cpu(forced: bool) -> bool:
    """CPU when asked, and for a multi-process launch on a machine without GPUs: accelerate only
    forms a (gloo) process group on the CPU when told `cpu=True`; otherwise each launched
    process would silently train alone."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    local, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
    if not forced and launched and 0 < gpus < local:  # else torch fails with "invalid device ordinal"
        raise SeqrlError(f"{local} processes on this machine but {gpus} GPU(s): launch at most {gpus} per "
                         f"machine, or run on the CPU (run.cpu: true, or CUDA_VISIBLE_DEVICES= to hide the GPUs)")
    return forced or (launched and not torch.cuda.is_available())


def resume(run: Run, path: Path) -> dict:
    """Restore a checkpoint into the run's model, optimizer and baselines (in memory)."""
    lora_model = run.model if run.cfg.model.lora else None
    # The base weights' fingerprint before the load: DeepSpeed and FSDP checkpoints hold the whole
    # model, and loading one puts its base weights back, which would make the comparison vacuous.
    base = lora.base_fingerprint(lora_model, distributed.summed(run.accelerator)) if lora_model is not None else None
    buffers = lora.buffers_fingerprint(lora_model) if lora_model is not None else None
    rates = list(run.lr_scheduler.base_lrs)  # this recipe's rates, before the checkpoint's replace them
    state = {**load_checkpoint(run.accelerator, path, lora_model), "path": str(path)}
    follow_recipe_rates(run.lr_scheduler, rates)
    # (checkpoints written before buffers were fingerprinted hold no "lora_buffers")
    if lora_model is not None and (state.get("lora_base") != base or state.get("lora_buffers", buffers) != buffers):
        raise SeqrlError(f"run.resume: the adapters of {path} were trained on other base weights (another "
                         f"model.name_or_path, or run.seed for a model built from a config); use its own recipe")
    # (checkpoints before the baselines became objects hold the ema baseline's state as "ema")
    run.baseline.load_state_dict(state["baseline"] if "baseline" in state else state.get("ema") or {})
    if run.reference is not None:
        run.reference.load(path, run.accelerator.unwrap_model(run.model))
    run.accelerator.print(f"resumed from {path} at step {state['step']}")
    return state


def follow_recipe_rates(scheduler: torch.optim.lr_scheduler.LambdaLR, rates: list[float]) -> None:
    """The recipe's learning rates over a checkpoint's: torch restores a scheduler's `base_lrs` and
    the optimizer's current rates from the checkpoint, so a resume that changes `optim.lr` (which
    the run prints as a changed setting) would silently go on at the old rate. Unchanged rates
    give the same floats as the checkpoint's, so an exact resume stays exact."""
    scheduler.base_lrs = rates
    lrs = [rate * factor(scheduler.last_epoch) for rate, factor in zip(rates, scheduler.lr_lambdas, strict=True)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs


def start(run: Run, resume_from: Path | None, state: dict | None) -> None:
    """The run's first writes, once set-up and any checkpoint have loaded: clear an old run
    (unless this one continues it), tokenizer and resolved recipe in place, metrics opened."""
    acc = run.accelerator
    if acc.is_main_process:
        recipe = dump_recipe(run.cfg)
        if resume_from is not None:
            changed = changed_settings(resume_from, recipe, recipe_as_today)
            if changed:
                acc.print(f"resuming with settings changed since the checkpoint: {changed}")
        trackers_dir = (run.cfg.log.project,) if run.cfg.log.trackers else ()  # (accelerate's logging_dir/project)
        with disk_writes(run.out):
            commit(run.out, resume_from is None or not is_inside(resume_from, run.out), recipe, run.tokenizer_dir,
                   trackers_dir, run.cfg.run.overwrite)
        low = space_warning(run.out, estimate_bytes(acc.unwrap_model(run.model), bool(run.cfg.model.lora),
                                                    run.reference))
        if low:
            print(f"seqrl finetune: warning: {low}", file=sys.stderr)
    acc.wait_for_everyone()
    run.runlog.open(after_step=state["step"] if state else None)


def teardown(accelerator: Accelerator, run: Run | None, clean: bool) -> None:
    """Drop every reference to the wrapped model before the process group goes: a DDP model
    still alive while gloo is torn down was seen to hang the interpreter on exit. After an error
    or Ctrl-C (`clean=False`) there is no barrier: the other processes may be gone."""
    if run is not None:
        run.runlog.close()
        run.model = run.optimizer = run.text_model = run.reference = run.baseline = None
    del run
    accelerator.free_memory()
    gc.collect()
    if clean:
        accelerator.wait_for_everyone()
        accelerator.end_training()
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
