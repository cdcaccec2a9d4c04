"""User-facing errors: the CLI prints them as one line and exits non-zero (no traceback)."""

import re


class SeqrlError(Exception):
    """A problem with the user's input (recipe, data, model, files): message says what to do."""


class ConfigError(SeqrlError):
    """A recipe that cannot be loaded: unknown key, wrong type, out-of-range value."""


class DataError(SeqrlError):
    """Data that cannot be used: missing file, wrong field name, empty split."""


# A sentence ends at . ! or ? followed by a space and a capital (or the end); not after these
# abbreviations, nor inside numbers (1.5), names (model.safetensors) or paths (./a/b).
_ABBREVIATIONS = ("e.g", "i.e", "etc", "vs", "cf", "approx", "incl", "no", "fig", "resp")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\[])")


def first_sentence(text: str, limit: int = 300) -> str:
    """The first sentence of a (library's) message, on one line, for a one-line error. Never cut
    inside a sentence, except one longer than `limit` characters, which ends at a word with '...'."""
    text = " ".join(str(text).split())
    end = len(text)
    for match in _SENTENCE_END.finditer(text):
        word = text[:match.start()].rsplit(" ", 1)[-1].rstrip(".!?").lower()
        if word in _ABBREVIATIONS or len(word) == 1:  # "e.g. Foo", "J. Smith"
            continue
        end = match.start()
        break
    sentence = text[:end].removesuffix(".")  # (it is set inside a sentence of seqrl's)
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " ..."
    return sentence
