"""The recipe's cross-field and range checks: each error names the dotted field and what to do.

Kept apart from `seqrl.config`, whose dataclasses hold the schema and every default, and which
calls `check_recipe` right after loading (this module imports nothing of it: `cfg` is its
`RecipeConfig`)."""

from __future__ import annotations

import re
from typing import Any

from seqrl.errors import ConfigError

RecipeConfig = Any  # (seqrl.config.RecipeConfig; not imported: seqrl.config imports this module)


def check_recipe(cfg: RecipeConfig) -> None:
    """Cross-field and range checks; each error names the dotted field."""
    _positive(cfg, "tokenizer.vocab_size", "tokenizer.min_frequency", "data.max_source_tokens",
              "data.max_target_tokens", "xent.batch_size", "optim.lr", "optim.grad_accum_steps",
              "eval.batch_size", "eval.num_beams", "eval.max_new_tokens", "eval.select_window", "log.every",
              "run.keep_checkpoints", "schedule.delta", "reinforce.candidates.num_samples",
              "reinforce.candidates.temperature", "reinforce.baseline.lr", "reinforce.estimator.risk_alpha",
              "mbr.num_candidates", "mbr.temperature", "mbr.pair_batch")
    _non_negative(cfg, "optim.weight_decay", "optim.warmup_steps", "optim.eps", "eval.every", "eval.patience",
                  "run.save_every", "run.save_every_minutes", "data.split_seed", "log.samples_every", "log.samples",
                  "schedule.xent_steps", "schedule.xent_epochs",
                  "reinforce.kl_coef")
    _positive_or_none(cfg, "reinforce.lr", "reinforce.batch_size", "reinforce.chunk_sources",
                      "reinforce.decoding.check_every", "data.max_train_examples", "eval.max_examples",
                      "eval.test_max_examples", "run.max_steps",
                      "run.max_minutes", "data.validation_from_train", "data.num_proc", "tokenizer.max_train_examples",
                      "optim.max_grad_norm", "schedule.stage_steps", "schedule.stage_epochs",
                      "schedule.final_stage_steps",
                      "schedule.rl_steps", "schedule.rl_epochs", "schedule.anneal_steps")
    _in_unit_interval(cfg, "xent.label_smoothing", "schedule.xent_weight", "reinforce.baseline.ema_decay")
    if not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas must both be in [0, 1), got {list(cfg.optim.betas)}")
    if not 0 <= cfg.run.seed < 2**32:  # numpy's seeds are 32-bit
        raise ConfigError(f"run.seed must be in [0, 2**32 - 1], got {cfg.run.seed}")
    _exactly_one(cfg, "model.name_or_path", "model.architecture")
    _exactly_one(cfg, "data.path", "data.files")
    _exactly_one(cfg, "schedule.xent_steps", "schedule.xent_epochs")
    if cfg.model.config and cfg.model.name_or_path is not None:
        raise ConfigError("model.config only applies with model.architecture; "
                          "remove it or drop model.name_or_path")
    if cfg.data.source_field == cfg.data.target_field:
        raise ConfigError(f"data.source_field and data.target_field are both "
                          f"'{cfg.data.source_field}'; they must name different columns")
    share = cfg.data.validation_from_train
    if share is not None and share >= 1 and not float(share).is_integer():
        raise ConfigError(f"data.validation_from_train must be a fraction below 1 or a whole number of "
                          f"examples, got {share}")
    _check_lora(cfg)
    _check_schedule(cfg)
    _check_reinforce(cfg)
    _check_eval(cfg)
    _check_languages(cfg)
    _check_reference_free(cfg)

def _check_eval(cfg: RecipeConfig) -> None:
    ev = cfg.eval
    if ev.best_metric is not None and ev.best_metric not in ev.metrics:
        raise ConfigError(f"eval.best_metric '{ev.best_metric}' is not computed; add it to eval.metrics "
                          f"({list(ev.metrics)})")
    if ev.patience and (ev.best_metric is None or not ev.every):
        raise ConfigError("eval.patience needs eval.best_metric and eval.every > 0 (the evaluations it counts)")
    if ev.select_window > 1 and ev.best_metric is None:
        raise ConfigError("eval.select_window needs eval.best_metric (the score whose mean it takes)")
    _check_alarms(cfg)
    per_kind = 2 if cfg.mbr.candidates == "both" else 1
    if ev.decode == "mbr" and cfg.mbr.num_candidates * per_kind < 2:
        raise ConfigError(f"mbr.num_candidates: MBR decoding needs at least 2 candidates per source (got "
                          f"{cfg.mbr.num_candidates}): it chooses the one with the highest mean utility against "
                          f"the others; set mbr.num_candidates: 8 (or more)")


def _check_alarms(cfg: RecipeConfig) -> None:
    ev = cfg.eval
    missing = [m for m in ev.watch if m not in ev.metrics]
    if missing:
        raise ConfigError(f"eval.watch '{missing[0]}' is not computed; add it to eval.metrics ({list(ev.metrics)})")
    if ev.watch and (cfg.schedule.kind == "xent" or not ev.every):
        raise ConfigError("eval.watch needs a sequence-level schedule (a training reward) and eval.every > 0 "
                          "(the evaluations it compares)")
    if ev.watch_evaluations < 2:
        raise ConfigError(f"eval.watch_evaluations must be >= 2 (a rise needs two points), got {ev.watch_evaluations}")
    if not 0.0 < ev.degenerate_share <= 1.0:
        raise ConfigError(f"eval.degenerate_share must be in (0, 1], got {ev.degenerate_share}")


def _check_languages(cfg: RecipeConfig) -> None:
    codes = cfg.tokenizer.languages
    if len(codes) > 2:
        raise ConfigError(f"tokenizer.languages: at most two codes (source, target), got {codes}")
    for code in codes:
        if not re.fullmatch(r"[a-z]{2,3}", code):
            raise ConfigError(f"tokenizer.languages: '{code}' is not an ISO 639 code (two or three lowercase "
                              f"letters, like en or spa)")
    if codes and (cfg.tokenizer.src_lang or cfg.tokenizer.tgt_lang):
        raise ConfigError("tokenizer.languages: give it or tokenizer.src_lang/tgt_lang (whose language part "
                          "it is then), not both")


def _check_lora(cfg: RecipeConfig) -> None:
    lora = cfg.model.lora
    if lora is None:
        return
    if lora.rank <= 0 or lora.alpha <= 0:
        raise ConfigError(f"model.lora.rank and model.lora.alpha must be > 0, got {lora.rank} and {lora.alpha}")
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError(f"model.lora.dropout must be in [0, 1), got {lora.dropout}")
    if lora.target_modules is not None and not lora.target_modules:
        raise ConfigError("model.lora.target_modules is an empty list; name modules, or leave it empty (null) "
                          "for the family's default")


def _check_schedule(cfg: RecipeConfig) -> None:
    sched, kind = cfg.schedule, cfg.schedule.kind
    needs = {"mixer": ("stage_steps", "stage_epochs"), "alternate": ("rl_steps", "rl_epochs"),
             "constant": ("rl_steps", "rl_epochs")}
    for pair in {("stage_steps", "stage_epochs"), ("rl_steps", "rl_epochs")}:
        given = [f"schedule.{n}" for n in pair if getattr(sched, n) is not None]
        if pair == needs.get(kind):
            _exactly_one(cfg, *(f"schedule.{n}" for n in pair), why=f"(schedule.kind: {kind})")
        elif given:
            raise ConfigError(f"{given[0]} does not apply to schedule.kind: {kind}; remove it")
    if sched.final_stage_steps is not None and kind != "mixer":
        raise ConfigError("schedule.final_stage_steps only applies to schedule.kind: mixer; remove it")
    if sched.anneal_steps is not None and kind != "alternate":
        raise ConfigError("schedule.anneal_steps only applies to schedule.kind: alternate; remove it")
    if kind == "alternate" and sched.anneal_steps is None:
        if sched.rl_steps is None:
            raise ConfigError("schedule.anneal_steps is required with schedule.rl_epochs")
        sched.anneal_steps = sched.rl_steps  # derived default: anneal over the whole RL phase

def _check_reinforce(cfg: RecipeConfig) -> None:
    rl = cfg.reinforce
    cand, est, base = rl.candidates, rl.estimator, rl.baseline
    if rl.chunk_sources is not None and base.kind == "learned" and base.normalize_advantages:
        raise ConfigError("reinforce.chunk_sources with reinforce.baseline.kind: learned and normalize_advantages: "
                          "the advantages' statistics need every chunk's decoder states first; drop one of the three")
    if cand.kind != "sample" and est.kind == "reinforce":
        raise ConfigError(f"reinforce.candidates.kind: {cand.kind} needs reinforce.estimator.kind: risk or mbr "
                          f"(REINFORCE's gradient holds for samples of the policy only, not beam-search outputs)")
    if cand.reference and est.kind != "risk":
        raise ConfigError("reinforce.candidates.reference needs reinforce.estimator.kind: risk (the reference is "
                          "not a sample of the policy, which REINFORCE's gradient assumes)")
    if est.risk_length_normalize and est.kind != "risk":
        raise ConfigError("reinforce.estimator.risk_length_normalize needs reinforce.estimator.kind: risk (it "
                          "changes q, which only the risk loss has)")
    if est.kind == "mbr" and cand.num_samples * (2 if cand.kind == "both" else 1) < 2:
        raise ConfigError(f"reinforce.estimator.kind: mbr needs reinforce.candidates.num_samples >= 2 (got "
                          f"{cand.num_samples}): MBR chooses among a source's candidates by their utility "
                          f"against the others")
    if est.kind in ("risk", "mbr"):
        if est.kind == "risk" and cand.num_samples + cand.reference < 2:
            raise ConfigError(f"reinforce.estimator.kind: risk needs reinforce.candidates.num_samples >= 2 "
                              f"candidates per source (got {cand.num_samples}), or candidates.reference: true "
                              f"beside one")
        if base.kind in ("greedy", "learned") or base.normalize_advantages:
            what = "normalize_advantages" if base.normalize_advantages else f"kind: {base.kind}"
            raise ConfigError(f"reinforce.baseline.{what} does nothing under reinforce.estimator.kind: {est.kind} (its "
                              f"loss uses no baseline); set reinforce.baseline.kind: loo (or none) and "
                              f"normalize_advantages: false")
    if base.kind == "loo" and cand.num_samples < 2:
        raise ConfigError("reinforce.baseline.kind: loo needs reinforce.candidates.num_samples >= 2 "
                          f"(got {cand.num_samples}); use another baseline or more samples")
    if cfg.schedule.samples() and not cfg.rewards:
        raise ConfigError(f"rewards is empty; schedule.kind: {cfg.schedule.kind} needs at least one")
    for i, reward in enumerate(cfg.rewards):
        if not reward.name.strip():
            raise ConfigError(f"rewards[{i}].name is empty; name a built-in reward or package.module:function")
    names = [r.name for r in cfg.rewards]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"rewards: '{dupes[0]}' is listed twice; give it one entry with the summed weight")


def _get(cfg: RecipeConfig, dotted: str) -> Any:
    node = cfg
    for name in dotted.split("."):
        node = getattr(node, name)
    return node


def _exactly_one(cfg: RecipeConfig, first: str, second: str, why: str = "") -> None:
    a, b = _get(cfg, first), _get(cfg, second)
    if (a is None or a == {} or a == []) == (b is None or b == {} or b == []):
        raise ConfigError(f"set exactly one of {first} or {second}{' ' + why if why else ''}")


def _in_unit_interval(cfg: RecipeConfig, *names: str) -> None:
    for name in names:
        if not 0.0 <= _get(cfg, name) < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {_get(cfg, name)}")


def _positive(cfg: RecipeConfig, *names: str) -> None:
    for name in names:
        if _get(cfg, name) <= 0:
            raise ConfigError(f"{name} must be > 0, got {_get(cfg, name)}")


def _positive_or_none(cfg: RecipeConfig, *names: str) -> None:
    for name in names:
        if _get(cfg, name) is not None and _get(cfg, name) <= 0:
            raise ConfigError(f"{name} must be > 0 (or empty), got {_get(cfg, name)}")


def _non_negative(cfg: RecipeConfig, *names: str) -> None:
    for name in names:
        if _get(cfg, name) is not None and _get(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {_get(cfg, name)}")


# ---------------------------------------------------------------------------------------------
# Loading


def _check_reference_free(cfg: RecipeConfig) -> None:
    """Training rows without targets: no cross-entropy, and a labelled validation split."""
    if not cfg.data.reference_free:
        return
    sched = cfg.schedule
    if sched.kind != "constant" or sched.xent_steps or sched.xent_epochs or sched.xent_weight:
        raise ConfigError("data.reference_free: rows without targets leave cross-entropy nothing to learn; set "
                          "schedule.kind: constant, schedule.xent_steps: 0 and schedule.xent_weight: 0 "
                          "(with reinforce.estimator.kind: mbr)")
    if cfg.data.validation_from_train is not None:
        raise ConfigError("data.reference_free: data.validation_from_train would carve validation rows without "
                          "targets out of training; give a labelled data.eval_split instead")
