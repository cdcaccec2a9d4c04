"""The candidates of one MIXER step: each source's gold prefix, then sampled (or beam) suffixes,
optionally its reference, and the rewards of them all. The only module that uses both
`seqrl.rollout` (samples) and `seqrl.beam` (beams); `seqrl.steps` turns candidates into a loss.

Sources are decoded `chunk_sources` at a time (the decode's KV cache and (N, V) logits divided
accordingly): the same rows, since each sampled row's draws depend on its global index only, and
chunk i's rows keep theirs through the sampling's row offset. The teacher-forced pass later runs
over the same chunks, each with its own padding and constraints (`Candidates.chunks`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch.profiler import record_function

from seqrl.beam import beam_rollout
from seqrl.decoders import Decoding
from seqrl.modeling import TextModel, pad_rows
from seqrl.rewards import Reward, TrainerState, score
from seqrl.rewards.inputs import RewardLog, reward_inputs
from seqrl.rl_config import CandidatesConfig
from seqrl.rollout import Rollout, rollout
from seqrl.sampling import Sampling
from seqrl.schedule import StagePlan


@dataclass
class Candidates:
    """A step's rows, grouped by source (k consecutive rows each), and their rewards."""

    chunks: list[Rollout]
    """The decode's chunks of sources, in order, each with its own padding and constraints."""
    k: int
    """Rows per source: samples and/or beams, then the reference row where asked for."""
    k_decoded: int
    """Decoded rows per source (k without the reference row)."""
    decoded: torch.Tensor
    """(N,) True on decoded rows, False on reference rows (which enter the risk only)."""
    rewards: torch.Tensor
    """(N,) the weighted sum of the rewards of every row."""
    reward_parts: dict[str, list[float | None]]
    """Each reward's own values, by name."""
    greedy_rewards: torch.Tensor | None
    """(B,) the reward of each source's greedy decode (a self-critical baseline only)."""
    reward_log: RewardLog
    """What rewards logged through `log_metric` / `log_extra`."""
    seconds: dict[str, float]
    """time/rollout_s, time/reward_s and time/compile_s of making them."""

    def rows(self) -> list[list[int]]:
        return [row for c in self.chunks for row in c.rows()]

    def by_chunk(self) -> Iterator[tuple[Rollout, slice]]:
        """Each chunk with the slice of the step's rows it holds."""
        first = 0
        for chunk in self.chunks:
            yield chunk, slice(first, first + chunk.sequences.shape[0])
            first += chunk.sequences.shape[0]

    def target_masks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, T) masks of the gold-prefix positions of decoded rows, of every row's suffix, and of
        the decoded rows' suffix (the positions REINFORCE, the KL and the baseline see)."""
        prefix, suffix = (torch.cat(masks) for masks in zip(*(c.target_masks() for c in self.chunks), strict=True))
        return prefix & self.decoded[:, None], suffix, suffix & self.decoded[:, None]


@dataclass
class CandidateMaker:
    """Built once at set-up; `make` is called once per MIXER step."""

    text_model: TextModel
    accelerator: Accelerator
    rewards: list[Reward]
    settings: CandidatesConfig
    decoding: Decoding
    chunk_sources: int | None
    max_len: int
    seed: int
    total_steps: int
    greedy: bool = False
    """Also decode each source greedily and score it (the self-critical baseline needs it)."""

    def make(self, policy, batch: dict, plan: StagePlan, step: int) -> Candidates:
        """The candidates of one step, from the unwrapped `policy` (no gradients)."""
        tm, acc, k = self.text_model, self.accelerator, self.settings.num_samples
        sources, targets = batch["source_ids_list"], batch["target_ids_list"]
        sampling = Sampling(self.settings.temperature, seed=self.seed * 1_000_003 + step,
                            row_offset=acc.process_index * len(sources) * k)  # (batches are even over processes)
        start, compiling = time.perf_counter(), self.decoding.compile_log.seconds
        with record_function("seqrl/rollout"):  # (regions for scripts/profile_step.py; ~free when not profiling)
            chunks = self.decode(policy, sources, targets, plan.n_rl_tokens, sampling)
            greedy = (rollout(tm, policy, sources, targets, plan.n_rl_tokens, num_samples=1, max_len=self.max_len,
                              sampling=Sampling(greedy=True), decoding=self.decoding) if self.greedy else None)
        sampled_at = time.perf_counter()
        rows_per_source = chunks[0].sequences.shape[0] // chunks[0].num_sources
        with record_function("seqrl/reward"):
            state, log = TrainerState(step, self.total_steps, plan.stage, plan.n_rl_tokens), RewardLog()
            rows = [row for c in chunks for row in c.rows()]
            R, parts = score(self.rewards, **reward_inputs(tm, self.rewards, batch, rows, rows_per_source, state, log))
            greedy_R = None if greedy is None else torch.tensor(score(self.rewards, **reward_inputs(
                tm, self.rewards, batch, greedy.rows(), 1, state, RewardLog()))[0], device=acc.device)
        compile_s = self.decoding.compile_log.seconds - compiling  # (first calls of a compiled step: not step time)
        seconds = {"time/rollout_s": sampled_at - start - compile_s, "time/reward_s": time.perf_counter() - sampled_at,
                   "time/compile_s": compile_s}
        position = torch.arange(len(R), device=acc.device) % rows_per_source
        decoded = position < rows_per_source - self.settings.reference
        return Candidates(chunks, rows_per_source, rows_per_source - self.settings.reference, decoded,
                          torch.tensor(R, device=acc.device), parts, greedy_R, log, seconds)

    def decode(self, policy, sources: list[list[int]], targets: list[list[int]], n_rl_tokens: int,
               sampling: Sampling) -> list[Rollout]:
        """Every source's rows, `chunk_sources` sources at a time (a chunk's samples keep their
        global draws through the sampling's row offset)."""
        size, k = self.chunk_sources or len(sources), self.settings.num_samples
        return [self._decode(policy, sources[i:i + size], targets[i:i + size], n_rl_tokens,
                             dataclasses.replace(sampling, row_offset=sampling.row_offset + i * k))
                for i in range(0, len(sources), size)]

    def _decode(self, policy, sources, targets, n: int, sampling: Sampling) -> Rollout:
        """One chunk's rows: samples and/or beams per source, then its reference where asked for."""
        tm, kind = self.text_model, self.settings.kind
        common = {"max_len": self.max_len, "decoding": self.decoding}
        beams = (beam_rollout(tm, policy, sources, targets, n, num_beams=self.settings.num_samples, **common)
                 if kind in ("beam", "both") else None)
        decoded = beams
        if kind != "beam":
            decoded = rollout(tm, policy, sources, targets, n, num_samples=self.settings.num_samples,
                              sampling=sampling, **common)
            decoded = decoded.join(beams) if beams is not None else decoded
        if self.settings.reference:
            decoded = decoded.join(reference_rows(decoded, targets, tm.tokenizer.pad_token_id))
        return decoded


def reference_rows(decoded: Rollout, target_ids: list[list[int]], pad: int) -> Rollout:
    """One row per source of `decoded` (same sources, padding, lead and constraints, for `join`):
    its gold target whole, cut to the rows' width, with the prefix length the decoded rows have."""
    k = decoded.sequences.shape[0] // decoded.num_sources
    width, device = decoded.sequences.shape[1], decoded.sequences.device
    gold = torch.full((len(target_ids), width), pad, dtype=torch.long, device=device)
    cut = pad_rows(target_ids, pad)[:, :width].to(device)
    gold[:, :cut.shape[1]] = cut
    lengths = torch.tensor([min(len(t), width) for t in target_ids], device=device)
    return Rollout(gold, decoded.prefix_len[::k], lengths, decoded.source, decoded.source_mask, decoded.lead[::k],
                   decoded.constraints)
