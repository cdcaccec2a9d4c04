"""Minimum Bayes risk (MBR) decoding: among N candidates per source, the one with the highest mean
utility against the others (Kumar & Byrne 2004; Freitag et al. 2022 with neural utilities).

- `mbr_choice` is the choice, pure: from the (B, N, N) utility matrix u[b, i, j] = utility of
  candidate i scored against candidate j as its reference, the mean over j != i (a candidate is
  never its own evidence), argmax, ties broken by the candidates' model score (sequence log p),
  then by position. MBR distillation (`seqrl.objectives.MbrDistill`) uses it too.
- `utility_matrix` scores the N x (N - 1) pairs of every source with any reward of the registry
  (`seqrl.rewards`: the fast token-ID BLEU, chrF, ROUGE, a model-based one), `mbr.pair_batch`
  pairs per call.
- `MbrDecoder` makes the candidates with the training rollouts' own decoders (samples from
  `seqrl.rollout` at `mbr.temperature`, beams from `seqrl.beam`, or both), no gold prefix, and
  their log p from one teacher-forced pass. Samples use counter-based draws keyed by the source's
  global index (`first_index`), so a source gets the same candidates, hence the same choice, on
  any number of processes and in any batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seqrl.beam import beam_rollout
from seqrl.config import RewardConfig
from seqrl.decoders import DEFAULT_DECODING, Decoding
from seqrl.errors import ConfigError
from seqrl.generation import masked_token_logprobs
from seqrl.modeling import TextModel
from seqrl.rewards import Reward, RewardError, build, check_arguments
from seqrl.rl_config import MbrConfig
from seqrl.rollout import Rollout, rollout, rollout_logits
from seqrl.sampling import Sampling

UTILITY_ARGS = {"completions", "completion_ids", "references", "reference_ids"}  # (what a utility is given)


def mbr_choice(utility: torch.Tensor, model_scores: torch.Tensor) -> torch.Tensor:
    """(B,) the index of each source's MBR candidate. utility (B, N, N): u[b, i, j] of candidate i
    against candidate j; model_scores (B, N): their log p, which breaks ties of the mean utility
    (then the first candidate wins)."""
    n = utility.shape[-1]
    if n < 2:
        raise ValueError(f"MBR needs at least 2 candidates per source, got {n}")
    others = ~torch.eye(n, dtype=torch.bool, device=utility.device)
    expected = (utility.double() * others).sum(-1) / (n - 1)  # (B, N)
    best = expected.max(dim=-1, keepdim=True).values
    # (equal up to float32 rounding: utilities such as the fast BLEU are computed in float32)
    tied = torch.isclose(expected, best, rtol=1e-6, atol=1e-9)
    return model_scores.double().masked_fill(~tied, float("-inf")).argmax(dim=-1)


def utility_matrix(utility: Reward, candidate_ids: list[list[list[int]]], texts: list[list[str]] | None,
                   pair_batch: int) -> torch.Tensor:
    """(B, N, N) float64: u[b, i, j] = utility(candidate i, reference candidate j) of each source's N
    candidates (ids without EOS; `texts` their decodes, for utilities that read text). The diagonal
    is 0 and never scored."""
    sources, n = len(candidate_ids), len(candidate_ids[0])
    pairs = [(b, i, j) for b in range(sources) for i in range(n) for j in range(n) if i != j]
    out = torch.zeros(sources, n, n, dtype=torch.float64)
    for start in range(0, len(pairs), pair_batch):
        batch = pairs[start:start + pair_batch]
        inputs = {"completion_ids": [candidate_ids[b][i] for b, i, _ in batch],
                  "reference_ids": [candidate_ids[b][j] for b, _, j in batch]}
        if texts is not None:
            inputs["completions"] = [texts[b][i] for b, i, _ in batch]
            inputs["references"] = [texts[b][j] for b, _, j in batch]
        values = utility(**inputs)
        missing = next((k for k, v in enumerate(values) if v is None), None)
        if missing is not None:
            raise RewardError(f"mbr.utility '{utility.name}' returned None for a pair of candidates; a utility "
                              f"must score every pair")
        index = torch.tensor(batch)
        out[index[:, 0], index[:, 1], index[:, 2]] = torch.tensor(values, dtype=torch.float64)
    return out


def build_utility(cfg: MbrConfig, functions: dict | None = None) -> Reward:
    """The recipe's utility, built like a reward; one line naming `mbr.utility` when it cannot be."""
    try:
        utility = build([RewardConfig(name=cfg.utility, kwargs=dict(cfg.utility_kwargs))], functions)[0]
        check_arguments([utility], UTILITY_ARGS)
    except RewardError as err:
        raise ConfigError(f"mbr.utility: {err}") from None
    return utility


@dataclass
class MbrResult:
    """One batch of sources: the chosen candidate of each, and what it was chosen from."""

    choice: list[int]
    candidates: list[list[list[int]]]
    """Each source's candidates, ids without EOS."""
    texts: list[list[str]]
    logprobs: list[list[float]]
    utility: torch.Tensor
    """(B, N, N)."""

    def chosen_texts(self) -> list[str]:
        return [texts[c] for texts, c in zip(self.texts, self.choice, strict=True)]

    def records(self) -> list[dict]:
        """One JSON-able record per source (`mbr.write_candidates`)."""
        return [{"candidates": texts, "logprobs": [round(x, 4) for x in logp], "choice": choice,
                 "utility": [[round(x, 4) for x in row] for row in matrix]}
                for texts, logp, choice, matrix in zip(self.texts, self.logprobs, self.choice,
                                                       self.utility.tolist(), strict=True)]


@dataclass
class MbrDecoder:
    """Built once (`build_decoder`); `decode` is called per batch of sources."""

    text_model: TextModel
    settings: MbrConfig
    utility: Reward
    max_new_tokens: int
    seed: int
    decoding: Decoding = DEFAULT_DECODING
    score_rows: int = 256
    """Rows per teacher-forced scoring pass (its (rows, T, V) logits bound the memory)."""

    @property
    def per_source(self) -> int:
        return self.settings.num_candidates * (2 if self.settings.candidates == "both" else 1)

    @torch.no_grad()
    def decode(self, model, source_ids: list[list[int]], first_index: int) -> MbrResult:
        """The MBR choice of each source; `first_index` is the global index of `source_ids[0]`
        (sources are consecutive), which keys the samples."""
        was_training = model.training
        model.eval()
        try:
            rows = self.candidates(model, source_ids, first_index)
            logprobs = self.sequence_logprobs(model, rows)
        finally:
            model.train(was_training)
        n, eos = self.per_source, self.text_model.tokenizer.eos_token_id
        ids = [r[:-1] if r and r[-1] == eos else r for r in rows.rows()]
        grouped = [ids[b * n:(b + 1) * n] for b in range(len(source_ids))]
        texts = [self.text_model.decode(group) for group in grouped]
        matrix = utility_matrix(self.utility, grouped, texts if self.utility.reads_text else None,
                                self.settings.pair_batch)
        scores = logprobs.view(len(source_ids), n)
        choice = mbr_choice(matrix, scores).tolist()
        return MbrResult(choice, grouped, texts, scores.tolist(), matrix)

    def candidates(self, model, source_ids: list[list[int]], first_index: int) -> Rollout:
        """Samples and/or beams, N (or 2N) rows per source, grouped by source; nothing gold."""
        s, length = self.settings, self.max_new_tokens
        # A target as long as the output may be, all of it decoded (prefix 0): nothing of it is read.
        free = [[self.text_model.tokenizer.pad_token_id] * length for _ in source_ids]
        common = {"max_len": length, "decoding": self.decoding}
        beams = (beam_rollout(self.text_model, model, source_ids, free, length, num_beams=s.num_candidates, **common)
                 if s.candidates != "sample" else None)
        if s.candidates == "beam":
            return beams
        sampling = Sampling(s.temperature, seed=self.seed, row_offset=first_index * s.num_candidates)
        samples = rollout(self.text_model, model, source_ids, free, length, num_samples=s.num_candidates,
                          sampling=sampling, **common)
        return samples.join(beams) if beams is not None else samples

    def sequence_logprobs(self, model, rows: Rollout) -> torch.Tensor:
        """(N,) float64 log p of each row under the model (with the generation constraints it was
        decoded under), scored `score_rows` rows at a time."""
        per_source, out = rows.sequences.shape[0] // rows.num_sources, []
        step = max(1, self.score_rows // per_source)
        for first in range(0, rows.num_sources, step):
            part = select_sources(rows, first, min(first + step, rows.num_sources))
            logits, labels, _ = rollout_logits(model, part, is_seq2seq=self.text_model.is_seq2seq)
            decoded = part.target_masks()[1]
            logp = masked_token_logprobs(logits, labels, part.sample_masks(decoded, logits.shape[-1]))
            out.append((logp.double() * decoded).sum(dim=1))
        return torch.cat(out).cpu()


def select_sources(rows: Rollout, first: int, last: int) -> Rollout:
    """The rows of sources first..last-1 (the constraints are shared)."""
    k = rows.sequences.shape[0] // rows.num_sources
    part = slice(first * k, last * k)
    return Rollout(rows.sequences[part], rows.prefix_len[part], rows.lengths[part], rows.source[first:last],
                   rows.source_mask[first:last], rows.lead[part], rows.constraints)


def build_decoder(text_model: TextModel, settings: MbrConfig, max_new_tokens: int, seed: int,
                  functions: dict | None = None, decoding: Decoding = DEFAULT_DECODING) -> MbrDecoder:
    """The recipe's MBR decoder, its utility built and checked now (before any decoding)."""
    return MbrDecoder(text_model, settings, build_utility(settings, functions), max_new_tokens, seed, decoding)
