"""Decode a split (greedy or beam), score it with corpus metrics, write a predictions file.

Each process decodes every world_size-th example; the texts are gathered once, so rank 0
scores the whole split exactly once, whatever the number of processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from datasets import Dataset
from tqdm.auto import tqdm

from seqrl.config import DataConfig, EvalConfig
from seqrl.errors import SeqrlError, disk_writes, first_sentence
from seqrl.metrics import corpus_scores
from seqrl.modeling import TextModel


class EvaluationStopped(Exception):
    """A stop signal (`signum`) ended an evaluation at a batch boundary; nothing of it was written."""

    def __init__(self, signum: int):
        super().__init__(f"evaluation stopped by signal {signum}")
        self.signum = signum


def decode(text_model: TextModel, model: torch.nn.Module, source_ids: list[list[int]], *,
           batch_size: int, num_beams: int, max_new_tokens: int, progress: bool = False,
           stop=None, rounds: int = 0) -> list[str]:
    """Decode sources in length-sorted batches (less padding); return texts in input order.
    `stop()`, asked after each batch and then until `rounds` questions were asked (the same count
    on every process, for a collective answer), returns a stop signal's number (0 = go on), which
    raises `EvaluationStopped`: a preempted run does not wait for the evaluation to end."""
    order = sorted(range(len(source_ids)), key=lambda i: len(source_ids[i]))
    texts: list[str] = [""] * len(source_ids)
    was_training = model.training
    model.eval()
    batches = range(0, len(order), batch_size)
    asked = 0
    try:
        # (tqdm's disable=None: bars on a terminal only)
        for start in tqdm(batches, desc="decode", disable=None if progress else True, leave=False):
            idx = order[start:start + batch_size]
            out = text_model.generate(model, [source_ids[i] for i in idx], num_beams=num_beams,
                                      max_new_tokens=max_new_tokens)
            for i, text in zip(idx, text_model.decode(out), strict=True):
                texts[i] = text
            asked += 1
            _ask(stop)
        for _ in range(asked, rounds if stop is not None else 0):
            _ask(stop)
    finally:
        model.train(was_training)
    return texts


def _ask(stop) -> None:
    signum = stop() if stop is not None else 0
    if signum:
        raise EvaluationStopped(int(signum))


def trial_decode(text_model: TextModel, model: torch.nn.Module, dataset: Dataset, eval_cfg: EvalConfig,
                 split: str) -> None:
    """Decode two rows of `dataset` as evaluation does (its beams and length), before training: a
    generation setting that only fails inside `generate` stops the run at set-up, not after hours
    of training at its first evaluation. Every process decodes the same rows (a collective under
    ZeRO-3 and FSDP, as evaluation is)."""
    rows = list(dataset.select(range(min(2, len(dataset))))["source_ids"])
    try:
        decode(text_model, model, rows, batch_size=2, num_beams=eval_cfg.num_beams,
               max_new_tokens=eval_cfg.max_new_tokens)
    except Exception as err:  # generate's errors have many types; all mean this recipe cannot evaluate
        raise SeqrlError(f"model.generation: a trial decode of two {split} rows, as evaluation decodes, fails "
                         f"({type(err).__name__}: {first_sentence(err, 120)}); check model.generation and "
                         f"eval.num_beams") from None


def evaluate_split(text_model: TextModel, model: torch.nn.Module, dataset: Dataset, accelerator: Accelerator,
                   data_cfg: DataConfig, eval_cfg: EvalConfig, *, max_examples: int | None,
                   predictions_path: Path | None = None, progress: bool = True, stop=None) -> dict[str, float]:
    """Corpus metrics of `dataset` (first `max_examples`), on rank 0; {} on other ranks. `stop`:
    as for `decode` (every process asks it as often as the largest shard has batches)."""
    n = len(dataset) if max_examples is None else min(max_examples, len(dataset))
    mine = list(range(accelerator.process_index, n, accelerator.num_processes))
    shard = dataset.select(mine, keep_in_memory=True)  # (its indices: no file beside a read-only cache)
    largest = -(-n // accelerator.num_processes)
    texts = decode(text_model, model, list(shard["source_ids"]), batch_size=eval_cfg.batch_size,
                   num_beams=eval_cfg.num_beams, max_new_tokens=eval_cfg.max_new_tokens,
                   progress=progress and accelerator.is_main_process, stop=stop,
                   rounds=-(-largest // eval_cfg.batch_size))
    pairs = gather_object(list(zip(mine, texts, strict=True)))
    if not accelerator.is_main_process:
        return {}
    hyps = [text for _, text in sorted(dict(pairs).items())]
    head = dataset.select(range(n))
    refs, sources = list(head[data_cfg.target_field]), list(head[data_cfg.source_field])
    scores = corpus_scores(hyps, refs, list(eval_cfg.metrics))
    if predictions_path is not None:
        write_predictions(predictions_path, sources, refs, hyps)
    return scores


def write_predictions(path: Path, sources: list[str], references: list[str], hypotheses: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with disk_writes(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w", encoding="utf-8") as f:
                for src, ref, hyp in zip(sources, references, hypotheses, strict=True):
                    f.write(json.dumps({"source": src, "reference": ref, "hypothesis": hyp}, ensure_ascii=False) + "\n")
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # (a write refused halfway)
