"""Decode a split (greedy, beam or MBR: `seqrl.mbr`), score it with corpus metrics, write a predictions file.

Each process decodes every world_size-th example; the texts are gathered once, so rank 0
scores the whole split exactly once, whatever the number of processes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from datasets import Dataset
from tqdm.auto import tqdm

from seqrl.config import DataConfig, EvalConfig
from seqrl.errors import SeqrlError, disk_writes, first_sentence
from seqrl.mbr import MbrDecoder
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
                   predictions_path: Path | None = None, progress: bool = True, stop=None,
                   mbr: MbrDecoder | None = None) -> dict[str, float]:
    """Corpus metrics of `dataset` (first `max_examples`), on rank 0; {} on other ranks. `stop`:
    as for `decode` (every process asks it as often as the largest shard has batches). With `mbr`
    (`eval.decode: mbr`) each source's MBR choice, its cost logged as `mbr_seconds_per_source`."""
    n = len(dataset) if max_examples is None else min(max_examples, len(dataset))
    rank, world = accelerator.process_index, accelerator.num_processes
    largest = -(-n // world)
    rounds = -(-largest // eval_cfg.batch_size)
    records, seconds = None, 0.0
    if mbr is None:
        mine = list(range(rank, n, world))
        shard = dataset.select(mine, keep_in_memory=True)  # (its indices: no file beside a read-only cache)
        texts = decode(text_model, model, list(shard["source_ids"]), batch_size=eval_cfg.batch_size,
                       num_beams=eval_cfg.num_beams, max_new_tokens=eval_cfg.max_new_tokens,
                       progress=progress and accelerator.is_main_process, stop=stop, rounds=rounds)
    else:  # consecutive sources per process: the samples are keyed by each source's global index
        mine = list(range(rank * largest, min(n, (rank + 1) * largest)))
        shard = dataset.select(mine, keep_in_memory=True)
        texts, records, seconds = decode_mbr(mbr, model, list(shard["source_ids"]), mine[0] if mine else 0,
                                             eval_cfg.batch_size, stop=stop, rounds=rounds)
    pairs = gather_object([(i, text, None if records is None else records[j]) for j, (i, text)
                           in enumerate(zip(mine, texts, strict=True))])
    total_seconds = sum(gather_object([seconds]))
    if not accelerator.is_main_process:
        return {}
    ordered = sorted(pairs, key=lambda pair: pair[0])
    hyps = [text for _, text, _ in ordered]
    head = dataset.select(range(n))
    refs, sources = list(head[data_cfg.target_field]), list(head[data_cfg.source_field])
    scores = corpus_scores(hyps, refs, list(eval_cfg.metrics))
    if mbr is not None:
        scores["mbr_seconds_per_source"] = total_seconds / max(n, 1)
    if predictions_path is not None:
        write_predictions(predictions_path, sources, refs, hyps)
        if mbr is not None and mbr.settings.write_candidates:
            write_jsonl(mbr_candidates_path(predictions_path), [record for _, _, record in ordered])
    return scores


def decode_mbr(mbr: MbrDecoder, model: torch.nn.Module, source_ids: list[list[int]], first_index: int,
               batch_size: int, stop=None, rounds: int = 0) -> tuple[list[str], list[dict], float]:
    """MBR choices of consecutive sources (global indices from `first_index`), `batch_size` sources
    at a time; their candidate records, and the seconds it took. `stop`: as for `decode`."""
    texts, records, start, asked = [], [], time.perf_counter(), 0
    for first in range(0, len(source_ids), batch_size):
        result = mbr.decode(model, source_ids[first:first + batch_size], first_index + first)
        texts += result.chosen_texts()
        records += result.records()
        asked += 1
        _ask(stop)
    for _ in range(asked, rounds if stop is not None else 0):
        _ask(stop)
    return texts, records, time.perf_counter() - start


def mbr_candidates_path(predictions: Path) -> Path:
    """Where `mbr.write_candidates` puts each source's candidates and utility matrix."""
    return predictions.with_name(predictions.stem + ".mbr.jsonl")


def write_predictions(path: Path, sources: list[str], references: list[str], hypotheses: list[str]) -> None:
    write_jsonl(path, [{"source": src, "reference": ref, "hypothesis": hyp}
                       for src, ref, hyp in zip(sources, references, hypotheses, strict=True)])


def write_jsonl(path: Path, records: list[dict]) -> None:
    """One JSON object a line, written atomically (a temporary file renamed into place)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with disk_writes(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w", encoding="utf-8") as f:
                for record in records:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # (a write refused halfway)
