"""The reward contract's arguments for one batch of rows: built by training steps, and by the
set-up probe that calls every reward once before training (`probe`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from seqrl.rewards import Reward, RewardError, TrainerState, check_arguments, score


@dataclass
class RewardLog:
    """What rewards logged through `log_metric` / `log_extra` during one step."""

    metrics: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, list] = field(default_factory=dict)

    def log_metric(self, name: str, value: float) -> None:
        self.metrics.setdefault(name, []).append(float(value))

    def log_extra(self, column: str, values: list) -> None:
        self.extra[column] = list(values)

    def means(self) -> dict[str, float]:
        return {f"reward_metric/{k}": sum(v) / len(v) for k, v in self.metrics.items() if v}


def reward_inputs(text_model, rewards: list[Reward], batch: dict, rows: list[list[int]], k: int,
                  state: TrainerState, log: RewardLog) -> dict:
    """Keyword arguments for `score`: each source's fields repeated for its k rows, ids without EOS."""
    eos = text_model.tokenizer.eos_token_id

    def strip_eos(seqs: list[list[int]]) -> list[list[int]]:
        return [r[:-1] if r and r[-1] == eos else r for r in seqs]

    ids = strip_eos(rows)
    inputs = {"completion_ids": ids,
              "reference_ids": [r for r in strip_eos(batch["target_ids_list"]) for _ in range(k)],
              "trainer_state": state, "log_metric": log.log_metric, "log_extra": log.log_extra}
    if any(reward.reads_text for reward in rewards):
        inputs["completions"] = text_model.decode(ids)
    for name, values in batch["columns"].items():
        inputs[name] = [v for v in values for _ in range(k)]
    return inputs


def probe(text_model, rewards: list[Reward], batch: dict) -> None:
    """Call every reward once on these rows, their references standing in for completions, with the
    arguments training passes: a reward that cannot run stops the run before its first step."""
    check_arguments(rewards, {"completions", "completion_ids", "reference_ids", "trainer_state", "log_metric",
                              "log_extra", *batch["columns"]})
    state = TrainerState(global_step=0, max_steps=0, stage=1, delta=0)
    try:
        score(rewards, **reward_inputs(text_model, rewards, batch, batch["target_ids_list"], 1, state, RewardLog()))
    except RewardError as err:
        raise RewardError(f"{err} (at set-up, on training rows)") from None


def reads_references(reward: Reward) -> bool:
    """Whether a reward scores against the reference: it takes `references` or `reference_ids`,
    unless its options compare with something else (`length_ratio` against the source, a
    `classifier` not paired with the reference). One taking **kwargs may do without (it gets None)."""
    if reward.name == "length_ratio":
        return reward.kwargs.get("against", "reference") == "reference"
    if reward.name == "classifier":
        return getattr(reward.fn, "pair", None) == "reference"
    return reward.accepts is not None and bool(reward.accepts & {"references", "reference_ids"})


def check_reference_free(rewards: list[Reward]) -> None:
    """`data.reference_free`: no reward may need the references its training rows lack."""
    for reward in rewards:
        if reads_references(reward):
            raise RewardError(f"rewards '{reward.name}' scores against references, which the training rows of "
                              f"data.reference_free lack; use rewards that read none (language_id, length_ratio "
                              f"with against: source, your own) or set data.reference_free: false")
