"""Rewards scored by a model: BERTScore, sentence-embedding similarity, a classifier's label.

Each is a class built once per process from the recipe's `kwargs` (its model loaded then, in
eval mode, on the training device), called like any reward with its process's own rows, under
`torch.no_grad`, `batch_size` texts at a time. Model names are local directories or hub names.

- `bertscore`: BERTScore F1 (Zhang et al. 2020): contextual embeddings of candidate and
  reference tokens from one layer of an encoder, greedy matching by cosine similarity, precision
  and recall averaged over tokens (optionally idf-weighted, idf from the training references),
  F1 from the two. Special tokens take part in the matching but carry no weight, as in the
  `bert-score` package, which it matches to 1e-4 (`tests/test_model_rewards.py`).
- `embedding_similarity`: cosine similarity of sentence embeddings (sentence-transformers: the
  model's own pooling and normalization), scaled from [-1, 1] to [0, 1].
- `classifier`: the probability (or logit) of one label from an
  `AutoModelForSequenceClassification`, on the completion alone or paired with its source or
  reference (TRL's reward-model style).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import torch

from seqrl.errors import SeqrlError, first_sentence


def _load(what: str, loader, name: str):
    try:
        return loader(name)
    except (OSError, ValueError) as err:
        raise SeqrlError(f"reward '{what}': model '{name}' could not be loaded (not a model directory, or a hub "
                         f"name while offline): {first_sentence(err, 160)}") from None


def _load_model(what: str, auto_class, name: str, reads=lambda key: True, kind: str = ""):
    """`auto_class.from_pretrained(name)`, refused when a weight the reward reads (`reads(key)`)
    is not in the checkpoint: transformers would initialise it at random and only warn (a
    classifier's head on a model without one scores noise, about 0.5 for every text)."""
    model, info = _load(what, lambda n: auto_class.from_pretrained(n, output_loading_info=True), name)
    missing = sorted(k for k in info.get("missing_keys", ()) if reads(k))
    if missing:
        raise SeqrlError(f"reward '{what}': model '{name}' lacks {len(missing)} weight(s) this reward uses, which "
                         f"would be initialised at random (e.g. {', '.join(missing[:2])}); "
                         f"give {kind or 'a model that has them'}")
    return model


def _not_pooler(key: str) -> bool:
    """BERTScore and sentence embeddings read the hidden states, never BERT's pooler."""
    return not (key.startswith("pooler.") or ".pooler." in key)


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class BERTScore:
    """BERTScore F1 of each completion against its reference."""

    reads_train_references = True  # (for idf)

    def __init__(self, model: str, layer: int | None = None, idf: bool = False, batch_size: int = 64,
                 max_length: int = 512):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = _load("bertscore", AutoTokenizer.from_pretrained, model)
        encoder = _load_model("bertscore", AutoModel, model, lambda k: _not_pooler(k) and not k.startswith("decoder."),
                              "an encoder with all its layers")
        self.encoder = (encoder.get_encoder() if encoder.config.is_encoder_decoder else encoder).eval()
        layers = self.encoder.config.num_hidden_layers
        if layer is not None and not 0 <= layer <= layers:
            raise SeqrlError(f"reward 'bertscore': layer {layer} is not between 0 and the model's {layers} layers")
        self.layer, self.idf, self.batch_size, self.max_length = layer, idf, batch_size, max_length
        self.weights: dict[int, float] | None = None  # token id -> idf (with idf, from the training references)
        self.unseen = 1.0  # the weight of a token the training references never hold
        self.specials = {self.tokenizer.cls_token_id, self.tokenizer.sep_token_id} - {None}

    def setup(self, device: torch.device, train_references) -> None:
        self.encoder.to(device)
        if self.idf:
            self.weights, self.unseen = idf_weights([self._ids(r) for r in train_references if isinstance(r, str)])

    def _ids(self, text: str) -> list[int]:
        """As bert-score encodes a sentence: stripped, special tokens added, cut to max_length."""
        return self.tokenizer.encode(text.strip(), add_special_tokens=True, max_length=self.max_length,
                                     truncation=True)

    @torch.no_grad()
    def _embed(self, ids: list[list[int]]) -> list[torch.Tensor]:
        """Per text, its tokens' unit-length embeddings (L, D) from the chosen layer."""
        out = []
        device = next(self.encoder.parameters()).device
        pad = self.tokenizer.pad_token_id or 0
        for batch in _batches(ids, self.batch_size):
            width = max(len(x) for x in batch)
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch], device=device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch], device=device)
            result = self.encoder(input_ids=input_ids, attention_mask=mask, output_hidden_states=self.layer is not None)
            states = result.hidden_states[self.layer] if self.layer is not None else result.last_hidden_state
            states = states / states.norm(dim=-1, keepdim=True)
            out += [states[i, :len(x)] for i, x in enumerate(batch)]
        return out

    def _weights(self, ids: list[int], device) -> torch.Tensor:
        """Special tokens (CLS, SEP) weigh 0, others 1 or their idf: as in the bert-score package."""
        w = [0.0 if t in self.specials else (self.weights.get(t, self.unseen) if self.weights else 1.0) for t in ids]
        return torch.tensor(w, device=device)

    def __call__(self, completions: list[str], references: list[str]) -> list[float]:
        # each distinct text encoded once (a source's reference repeats for its k samples)
        texts = list(dict.fromkeys(completions + references))
        ids = {t: self._ids(t) for t in texts}
        embedded = dict(zip(texts, self._embed([ids[t] for t in texts]), strict=True))
        pairs = []
        for c, r in zip(completions, references, strict=True):
            sim = embedded[c] @ embedded[r].T                               # (Lc, Lr) cosine similarities
            wc, wr = self._weights(ids[c], sim.device), self._weights(ids[r], sim.device)
            precision = (sim.max(dim=1).values * wc).sum() / wc.sum()       # NaN for an empty text
            recall = (sim.max(dim=0).values * wr).sum() / wr.sum()
            pairs.append(torch.stack([precision, recall]))
        precision, recall = torch.stack(pairs).unbind(dim=1)
        f1 = 2 * precision * recall / (precision + recall)
        return torch.nan_to_num(f1, nan=0.0).tolist()  # an empty candidate or reference scores 0 (as bert-score)


def idf_weights(references: list[list[int]]) -> tuple[dict[int, float], float]:
    """BERTScore's idf over M references, log((M + 1) / (df + 1)), and an unseen token's, log(M + 1)."""
    df = Counter(t for ids in references for t in set(ids))
    m = len(references)
    return {t: math.log((m + 1) / (c + 1)) for t, c in df.items()}, math.log(m + 1)


class EmbeddingSimilarity:
    """(1 + cos(embed(completion), embed(reference))) / 2 with a sentence-transformers model."""

    def __init__(self, model: str, batch_size: int = 64):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise SeqrlError("reward 'embedding_similarity' needs sentence-transformers: "
                             "`pip install sentence-transformers`") from None
        self.model = _load("embedding_similarity", lambda n: SentenceTransformer(n, device="cpu"), model)
        transformer = _transformer_dir(Path(model))
        if transformer is not None:  # (sentence-transformers loads it with AutoModel, warning only when weights miss)
            from transformers import AutoModel

            _load_model("embedding_similarity", AutoModel, str(transformer), _not_pooler,
                        "a sentence-transformers model with all its layers")
        self.batch_size = batch_size

    def setup(self, device: torch.device, train_references: list[str]) -> None:
        self.model.to(device)

    @torch.no_grad()
    def __call__(self, completions: list[str], references: list[str]) -> list[float]:
        texts = list(dict.fromkeys(completions + references))  # each distinct text encoded once
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        row = {t: i for i, t in enumerate(texts)}
        cosine = (vectors[[row[c] for c in completions]] * vectors[[row[r] for r in references]]).sum(dim=-1)
        return ((1 + cosine.clamp(-1, 1)) / 2).tolist()


def _transformer_dir(root: Path) -> Path | None:
    """Where a local sentence-transformers model keeps its transformer (modules.json's Transformer
    module; a plain transformers directory is one itself); None for a hub name."""
    if not root.is_dir():
        return None
    modules = root / "modules.json"
    if not modules.is_file():
        return root
    for module in json.loads(modules.read_text()):
        if module.get("type", "").endswith("Transformer"):
            return root / module.get("path", "")
    return None


class Classifier:
    """The probability (or logit) of `label` from a sequence classifier, on the completion alone
    or as a pair with its source (`pair: source`) or reference (`pair: reference`)."""

    def __init__(self, model: str, label: str | int = 1, output: str = "probability", pair: str | None = None,
                 batch_size: int = 64, max_length: int = 512):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = _load("classifier", AutoTokenizer.from_pretrained, model)
        self.model = _load_model("classifier", AutoModelForSequenceClassification, model,
                                 kind="a sequence classifier trained with its head "
                                      "(AutoModelForSequenceClassification)").eval()
        labels = self.model.config.id2label
        if isinstance(label, str) and label not in labels.values():
            raise SeqrlError(f"reward 'classifier': label '{label}' is not one of the model's labels "
                             f"{sorted(labels.values())}")
        if isinstance(label, int) and label not in labels:
            raise SeqrlError(f"reward 'classifier': label {label} is not one of the model's label indices "
                             f"{sorted(labels)}")
        self.index = label if isinstance(label, int) else next(i for i, name in labels.items() if name == label)
        if output not in ("probability", "logit"):
            raise SeqrlError(f"reward 'classifier': output must be 'probability' or 'logit', got '{output}'")
        if pair not in (None, "source", "reference"):
            raise SeqrlError(f"reward 'classifier': pair must be empty, 'source' or 'reference', got '{pair}'")
        self.output, self.pair, self.batch_size, self.max_length = output, pair, batch_size, max_length

    def setup(self, device: torch.device, train_references: list[str]) -> None:
        self.model.to(device)

    @torch.no_grad()
    def __call__(self, completions: list[str], references: list[str], prompts: list[str]) -> list[float]:
        firsts = {"source": prompts, "reference": references}.get(self.pair)
        device = next(self.model.parameters()).device
        scores = []
        for start in range(0, len(completions), self.batch_size):
            texts = completions[start:start + self.batch_size]
            args = (firsts[start:start + self.batch_size], texts) if firsts is not None else (texts,)
            inputs = self.tokenizer(*args, padding=True, truncation=True, max_length=self.max_length,
                                    return_tensors="pt").to(device)
            logits = self.model(**inputs).logits.float()
            values = logits.softmax(dim=-1) if self.output == "probability" else logits
            scores += values[:, self.index].tolist()
        return scores


MODEL_REWARDS = {"bertscore": BERTScore, "embedding_similarity": EmbeddingSimilarity, "classifier": Classifier}
