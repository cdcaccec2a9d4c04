"""The training loop: each optimizer step runs the schedule's plan (cross-entropy or MIXER),
with logging, evaluation and checkpoints on their cadence. Set-up lives in `seqrl.run`, the
run from start to end in `seqrl.session`.

accelerate handles every device and process concern in plain sight: `prepare`, `accumulate`,
`backward`, `clip_grad_norm_`, `gather_object`. The learning-rate schedule is stepped by hand
once per optimizer step (not prepared), so its length is counted in optimizer steps whatever
the number of processes.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch.profiler import record_function
from tqdm.auto import tqdm

from seqrl import alarms, distributed, lora, preemption
from seqrl.checkpoint import estimate_bytes, save_checkpoint
from seqrl.config import dump_recipe
from seqrl.errors import disk_writes
from seqrl.evaluate import EvaluationStopped, evaluate_split
from seqrl.model_card import write_model_card
from seqrl.plots import plot_run
from seqrl.run import Run
from seqrl.runlog import LogWindow, last_scores
from seqrl.saving import gathered_weights, save_model_atomically
from seqrl.steps import mixer_step, xent_step


@dataclass
class _Loop:
    """Where the loop is; what a checkpoint must record to continue exactly."""

    bar: tqdm
    step: int = 0
    phase: int = 0
    phase_epoch: int = 0
    batch_in_epoch: int = 0
    stage: list | None = None
    best: float | None = None
    evals_since_best: int = 0
    recent: list = field(default_factory=list)  # the last `eval.select_window` scores (rank 0's)
    validated_at: int | None = None  # step of the last validation (finish need not repeat it)
    seconds_before: float = 0.0  # training time of the run before it was resumed
    started: float = field(default_factory=time.monotonic)
    stop: str | None = None  # why training ends before total_steps
    preempted: str | None = None  # the stop signal that ended the run
    checkpoint: Path | None = None  # the newest checkpoint this run wrote
    saved_at: float = field(default_factory=time.monotonic)  # when it was written (or the run began)
    window: LogWindow = field(default_factory=LogWindow)

    def seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.started

    def state(self) -> dict:
        return {"phase": self.phase, "phase_epoch": self.phase_epoch, "batch_in_epoch": self.batch_in_epoch,
                "stage": self.stage, "best": self.best, "evals_since_best": self.evals_since_best,
                "recent": self.recent, "seconds": self.seconds()}


def train(run: Run, state: dict | None = None) -> _Loop:
    """Optimizer steps until `total_steps` (or an early stop): the XENT stage on the XENT loader,
    the rest on the REINFORCE loader (its own batch size), each step running the schedule's plan
    for it. Returns where the loop ended."""
    cfg, acc = run.cfg, run.accelerator
    # (disable=None: tqdm draws only on a terminal, so a redirected log holds no escape codes)
    loop = _Loop(tqdm(total=run.total_steps, desc="train", mininterval=1.0,
                      disable=None if cfg.log.progress_bar and acc.is_main_process else True))
    if state:
        loop.step, loop.phase, loop.phase_epoch = state["step"], state["phase"], state["phase_epoch"]
        loop.batch_in_epoch, loop.stage = state["batch_in_epoch"], state["stage"]
        loop.best, loop.evals_since_best = state.get("best"), state.get("evals_since_best", 0)
        loop.recent = state.get("recent", [])
        loop.seconds_before = state.get("seconds", 0.0)
        loop.window.load(state.get("windows", []), acc)
        loop.checkpoint = Path(state["path"])
        loop.bar.update(loop.step)
    # A resumed run first runs the evaluations a stop signal left undone; a fresh one, the start's.
    due = state.get("pending_evaluations", []) if state else start_evaluations(run)
    left, signalled = run_evaluations(run, loop, due)
    if left:
        preempt(run, loop, signalled, left)
    phases = [(run.loader, min(run.schedule.xent_steps, run.total_steps)), (run.rl_loader, run.total_steps)]
    for phase, (loader, end) in enumerate(phases):
        if loop.step >= end or loop.stop:
            continue
        if phase != loop.phase:
            loop.phase, loop.phase_epoch, loop.batch_in_epoch = phase, 0, 0
        while loop.step < end and not loop.stop:
            loader.set_epoch(loop.phase_epoch)
            batches = acc.skip_first_batches(loader, loop.batch_in_epoch) if loop.batch_in_epoch else loader
            for batch in batches:
                loop.batch_in_epoch += 1
                if micro_step(run, batch, loop) and (loop.step >= end or loop.stop):
                    break
            else:  # the epoch ran out
                loop.phase_epoch, loop.batch_in_epoch = loop.phase_epoch + 1, 0
    loop.bar.close()
    if loop.preempted:  # kept by the resumed run: its history shows where it was stopped
        run.runlog.write(loop.step, {"preempted": 1})
    elif loop.stop:
        run.runlog.write(loop.step, {"early_stop": 1})
        acc.print(f"stopped at step {loop.step} of {run.total_steps}: {loop.stop}")
    return loop


def micro_step(run: Run, batch: dict, loop: _Loop) -> bool:
    """One micro-batch; returns True when it completed an optimizer step."""
    cfg, acc = run.cfg, run.accelerator
    plan = run.schedule.plan(loop.step)
    if [plan.stage, plan.n_rl_tokens] != loop.stage:
        loop.stage = [plan.stage, plan.n_rl_tokens]
        run.runlog.write(loop.step, {"stage_start": 1, "stage": plan.stage, "delta": plan.n_rl_tokens,
                                     "xent_weight": plan.xent_weight})
    if not plan.is_xent and run.reference is not None:
        run.reference.begin(acc.unwrap_model(run.model))  # a frozen copy: the policy as RL begins
    # Dropout noise as a function of (seed, step, micro-batch, process) only: data loaders and
    # evaluation also draw from torch's RNG, differently in a resumed run.
    torch.manual_seed(step_seed(cfg.run.seed, loop.step, loop.batch_in_epoch, acc.process_index))
    with acc.accumulate(run.model):
        start = time.perf_counter()
        # profiler regions (scripts/profile_step.py; ~free when not profiling): a step's seqrl/rollout,
        # seqrl/reward and seqrl/backward regions lie inside seqrl/forward (each step owns its backward)
        with record_function("seqrl/forward"):
            if plan.is_xent:
                loss, stats = xent_step(run.model, run.text_model, acc, batch["model_inputs"],
                                        cfg.xent.label_smoothing)
            else:
                shown = cfg.log.samples if run.runlog.samples_due(loop.step + 1) else 0  # (numbered like metrics)
                loss, stats, rows = mixer_step(
                    batch, plan, loop.step, model=run.model, text_model=run.text_model, accelerator=acc,
                    candidates=run.candidates, objective=run.objective, baseline=run.baseline,
                    reference=run.reference, samples=shown)
                if rows:
                    run.runlog.write_samples(loop.step + 1, rows, plan)
        optimizer_start = time.perf_counter()
        with record_function("seqrl/optimizer"):
            if acc.sync_gradients and cfg.optim.max_grad_norm:
                stats["train/grad_norm"] = float(acc.clip_grad_norm_(run.model.parameters(), cfg.optim.max_grad_norm))
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        stats.update({"time/step_s": end - start - stats.get("time/compile_s", 0.0),
                      "time/optimizer_s": end - optimizer_start})
    loop.window.add({"train/loss": loss, **stats})  # (a chunked step's stats hold its total)
    if not acc.sync_gradients:
        return False
    run.lr_scheduler.step()
    loop.step += 1
    loop.bar.update(1)
    on_step_end(run, loop)
    return True


def step_seed(*parts: int) -> int:
    """A 63-bit seed from integers (a hash, so nearby steps get unrelated streams)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def on_step_end(run: Run, loop: _Loop) -> None:
    cfg, step = run.cfg, loop.step
    if step % cfg.log.every == 0 or step == run.total_steps:
        metrics = loop.window.flush(run.accelerator)
        if metrics:
            metrics.update({"lr": run.lr_scheduler.get_last_lr()[0], "epoch": loop.phase_epoch})
            run.runlog.write(step, metrics)
            loop.bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", refresh=False)
    due = []
    if cfg.eval.every and step % cfg.eval.every == 0 and step < run.total_steps:
        due.append("validation")
    if step == run.schedule.xent_steps < run.total_steps and wants_test_after_xent(run):
        due.append("test_after_xent")
    # Decisions all processes share (signals and clocks differ between them).
    signalled, out_of_time, save_due = agree_max(
        run.accelerator, preemption.requested(),
        cfg.run.max_minutes is not None and loop.seconds() > 60 * cfg.run.max_minutes,
        bool(cfg.run.save_every_minutes) and time.monotonic() - loop.saved_at > 60 * cfg.run.save_every_minutes)
    if signalled:  # checkpoint first: the evaluations due now run when the run is resumed
        preempt(run, loop, signalled, due)
        return
    left, signalled = run_evaluations(run, loop, due)
    if due and not left:  # a signal while best/ was written (after the evaluation's last batch)
        signalled = agree_max(run.accelerator, preemption.requested())[0]
    if signalled:  # a signal during an evaluation: what it left undone runs when the run is resumed
        preempt(run, loop, signalled, left)
        return
    if out_of_time and not loop.stop:
        loop.stop = f"run.max_minutes ({cfg.run.max_minutes:g}) reached"
    # A run with checkpoints also leaves one where it stops, so it can be continued from there.
    periodic = cfg.run.save_every and step % cfg.run.save_every == 0
    ending = (loop.stop or step == run.total_steps) and (cfg.run.save_every or loop.checkpoint is not None)
    if periodic or save_due or ending:
        checkpoint(run, loop)


def wants_test_after_xent(run: Run) -> bool:
    return bool(run.cfg.eval.test_after_xent and run.cfg.data.test_split)


def start_evaluations(run: Run) -> list[str]:
    """Before the first step of a fresh run: validation with `eval.at_start`; the test split when
    the XENT stage has no steps (a start model trained elsewhere: its scores beside the end's)."""
    due = ["validation"] if run.cfg.eval.at_start else []
    if run.schedule.xent_steps == 0 < run.total_steps and wants_test_after_xent(run):
        due.append("test_after_xent")
    return due


def run_evaluations(run: Run, loop: _Loop, names: list[str]) -> tuple[list[str], int]:
    """The evaluations due at this step: `validation` (and `best/`), `test_after_xent`. Returns
    those a stop signal left undone, and the signal ([], 0 when all ran)."""
    test = run.cfg.data.test_split
    for done, name in enumerate(names):
        try:
            if name == "validation":
                validate(run, loop)
            else:
                evaluate(run, loop.step, test, run.cfg.eval.test_max_examples,
                         run.out / f"predictions-{test}-xent.jsonl")
        except EvaluationStopped as stopped:
            return list(names[done:]), stopped.signum
    return [], 0


def preempt(run: Run, loop: _Loop, signum: float, pending: list[str]) -> None:
    """End the run on a stop signal: a checkpoint that runs the `pending` evaluations on resume."""
    loop.preempted = preemption.signal_name(signum)
    loop.stop = f"stopped by {loop.preempted}"
    checkpoint(run, loop, pending_evaluations=pending)


def checkpoint(run: Run, loop: _Loop, pending_evaluations: list[str] = ()) -> None:
    state = {**loop.state(), "baseline": run.baseline.state_dict(),
             "pending_evaluations": list(pending_evaluations), "windows": loop.window.gathered()}
    if run.cfg.model.lora:
        state["lora_base"] = lora.base_fingerprint(run.model, distributed.summed(run.accelerator))
        state["lora_buffers"] = lora.buffers_fingerprint(run.model)
    need = estimate_bytes(run.accelerator.unwrap_model(run.model), bool(run.cfg.model.lora), run.reference)
    loop.checkpoint = save_checkpoint(run.accelerator, run.out, loop.step, state, run.cfg.run.keep_checkpoints,
                                      run.reference, dump_recipe(run.cfg), need)
    loop.saved_at = time.monotonic()


def agree_max(accelerator: Accelerator, *values: float) -> tuple[float, ...]:
    """Each value's maximum over the processes, on every process (one all-reduce): a flag true
    on any process is true on all."""
    if accelerator.num_processes == 1:
        return tuple(float(v) for v in values)
    votes = torch.tensor([float(v) for v in values], device=accelerator.device)
    torch.distributed.all_reduce(votes, op=torch.distributed.ReduceOp.MAX)
    return tuple(votes.tolist())


def validate(run: Run, loop: _Loop) -> None:
    """Score the validation split (its predictions file holds the latest) and keep `best/`."""
    split = run.cfg.data.eval_split
    track_best(run, loop, evaluate(run, loop.step, split, run.cfg.eval.max_examples,
                                   run.out / f"predictions-{split}.jsonl"))
    loop.validated_at = loop.step


def track_best(run: Run, loop: _Loop, metrics: dict) -> None:
    """Keep `best/` at a new best `eval.best_metric`; count evaluations without one (patience)."""
    cfg = run.cfg.eval
    if cfg.best_metric is None:
        return
    value = metrics.get(f"eval/{cfg.best_metric}")  # only rank 0 has the scores
    if value is not None:
        loop.recent = (loop.recent + [value])[-cfg.select_window:]
    score = sum(loop.recent) / len(loop.recent) if value is not None else None
    improved = _agreed(run, value is not None and (loop.best is None or score > loop.best))
    if improved:
        loop.best = broadcast_object_list([score])[0] if run.accelerator.num_processes > 1 else score
        loop.evals_since_best = 0
        weights = gathered_weights(run.accelerator, run.model)  # (every process: a collective where sharded)
        if run.accelerator.is_main_process:
            chosen_on = {f"{cfg.best_metric}_mean_of_{len(loop.recent)}": score} if cfg.select_window > 1 else {}
            save_model_atomically(run.text_model, run.accelerator.unwrap_model(run.model), run.out / "best",
                                  {"step": loop.step, cfg.best_metric: value, **chosen_on}, state_dict=weights)
        run.accelerator.wait_for_everyone()
    else:
        loop.evals_since_best += 1
    if cfg.patience and loop.evals_since_best >= cfg.patience:
        loop.stop = f"no better eval/{cfg.best_metric} than {loop.best:.2f} in {cfg.patience} evaluations"


def _agreed(run: Run, decision: bool) -> bool:
    """Rank 0's decision, on every process (they must stop at the same step)."""
    if run.accelerator.num_processes == 1:
        return decision
    return bool(broadcast_object_list([decision])[0])


def evaluate(run: Run, step: int, split: str, max_examples: int | None, predictions: Path | None = None) -> dict:
    model = run.accelerator.unwrap_model(run.model)
    start = time.perf_counter()
    scores = evaluate_split(run.text_model, model, run.datasets[split], run.accelerator, run.cfg.data,
                            run.cfg.eval, max_examples=max_examples, predictions_path=predictions,
                            progress=run.cfg.log.progress_bar, mbr=run.mbr,
                            stop=lambda: agree_max(run.accelerator, preemption.requested())[0])
    prefix = "eval" if split == run.cfg.data.eval_split else split
    metrics = {f"{prefix}/{k}": v for k, v in scores.items()}
    if scores:
        metrics[f"{prefix}/seconds"] = time.perf_counter() - start
        run.runlog.write(step, metrics)
        run.accelerator.print(f"step {step} {split}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
        alarms.check(run, step, prefix, predictions)  # degenerate outputs, eval.watch (rank 0)
    return metrics


def finish(run: Run, loop: _Loop, command: str | None = None) -> Path | None:
    """Final evaluation(s) with predictions files (the validation one may give `best/`; skipped
    when the run stopped right after one), then `final/` (plain transformers directory, with a
    model card saying how it was trained and the `command` that did it). None when a stop signal
    cut an evaluation short (`loop.preempted`: the checkpoint is written)."""
    cfg, step = run.cfg, loop.step
    try:
        if loop.validated_at != step:
            validate(run, loop)
        if cfg.data.test_split:
            evaluate(run, step, cfg.data.test_split, cfg.eval.test_max_examples,
                     run.out / f"predictions-{cfg.data.test_split}.jsonl")
    except EvaluationStopped as stopped:  # the resumed run, at the last step, evaluates again
        preempt(run, loop, stopped.signum, [])
        run.runlog.write(loop.step, {"preempted": 1})
        return None
    final = run.out / "final"
    weights = gathered_weights(run.accelerator, run.model)  # (every process: a collective where sharded)
    if run.accelerator.is_main_process:
        def card(directory: Path) -> None:
            write_model_card(directory, cfg, run.text_model.is_seq2seq, step, last_scores(run.out), command)

        save_model_atomically(run.text_model, run.accelerator.unwrap_model(run.model), final, card=card,
                              state_dict=weights)
        run.runlog.close()
        with disk_writes(run.out / "plots"):
            plots = plot_run(run.out)
        for path in plots:
            run.accelerator.print(f"plot: {path}")
    run.accelerator.wait_for_everyone()
    return final if run.accelerator.is_main_process else None
