"""OSIS markup -> plain text, and the Spanish module's typographic quirks."""

from __future__ import annotations

import html
import re

NOTE_RE = re.compile(r"<note\b[^>]*>.*?</note>", re.DOTALL)
# The KJV module marks the Pauline subscriptions ("Written to the Romans from
# Corinthus...") as a title after the chapter's end tag; the Spanish module has
# them as plain text in the last verse, so they are kept on both sides.
SUBSCRIPTION_RE = re.compile(r"(<chapter eID=[^>]*>\s*)<title>(.*?)</title>", re.DOTALL)
# Headings are dropped; canonical psalm titles ("A Psalm of David.") are part
# of verse 1 in the Spanish text, so their words are kept in English too.
TITLE_RE = re.compile(r"<title\b(?![^>]*canonical=\"true\")[^>]*>.*?</title>", re.DOTALL)
# "...</w><transChange>..." separates two words; elsewhere tags may sit inside
# a word ("give</w>n", "preguntándo<transChange>le"), so tags are deleted.
WORD_BOUNDARY_RE = re.compile(r"(</(?:w|transChange)>)(?=<(?:w|transChange)\b)")
TAG_RE = re.compile(r"<[^>]*>")
USFM_RE = re.compile(r"\\\+?[a-z]+\d*\*?")  # leftover USFM markers, e.g. "\nd", "\+nd*"
SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([,.;:!?)\]])")
SPACE_AFTER_OPEN_RE = re.compile(r"([(\[¡¿])\s+")


def clean_markup(raw: str) -> str:
    """Turn an OSIS verse into plain text.

    Notes and headings are dropped with their contents; other tags
    (``<w lemma=...>``, ``<transChange>``, ``<divineName>``, ``<q>``...) are
    removed but keep their text.  HTML entities are unescaped, pilcrows and
    stray USFM markers removed, and whitespace collapsed.
    """
    text = NOTE_RE.sub(" ", raw)
    text = SUBSCRIPTION_RE.sub(r"\1 \2", text)
    text = TITLE_RE.sub(" ", text)
    text = WORD_BOUNDARY_RE.sub(r"\1 ", text)
    text = TAG_RE.sub("", text)
    text = USFM_RE.sub(" ", text)
    text = html.unescape(text).replace("\u00b6", " ")
    text = " ".join(text.split())
    text = SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)
    return SPACE_AFTER_OPEN_RE.sub(r"\1", text)


# Ps 119 is an acrostic: the Spanish text prefixes the first verse of each
# stanza with the Hebrew letter's name ("ALEPH.", "BETH", ...), which the
# English module marks as a (dropped) heading instead.
HEBREW_LETTERS = (
    "ALEPH|BETH|GIMEL|DALETH|HE|VAU|ZAIN|CHETH|TETH|JOD|CAPH|LAMED|MEM|NUN|"
    "SAMECH|AIN|PE|TZADDI|KOPH|COPH|RESH|SCHIN|SIN|TAU"
)
ACROSTIC_RE = re.compile(rf"^(?:{HEBREW_LETTERS})\b\.?\s*")
# The Spanish text prints the first word(s) of every chapter in capitals
# ("EN el principio", "Y FUERON acabados", "Salmo de David. JEHOVÁ es mi
# pastor"); the first such run in a chapter's first verse is lower-cased.
CAPS_WORD = r"[A-ZÁÉÍÓÚÜÑÂÊÎÔÛ]{2,}"
CHAPTER_CAPS_RE = re.compile(rf"\b(?:[AEOYÁ] )?{CAPS_WORD}(?: {CAPS_WORD})*\b")


def lower_chapter_capitals(text: str) -> str:
    """Undo the typographic capitals at the start of a Spanish chapter."""
    match = CHAPTER_CAPS_RE.search(text)
    if match is None:
        return text
    words = match.group(0).lower().split(" ")
    words[0] = words[0].capitalize()
    return text[: match.start()] + " ".join(words) + text[match.end() :]


def clean_spanish(osis_id: str, raw: str) -> str:
    """Clean a Spanish verse: markup, Ps 119 acrostic letters, chapter capitals."""
    text = clean_markup(raw)
    if osis_id.startswith("Ps.119."):
        text = ACROSTIC_RE.sub("", text)
    if osis_id.endswith(".1"):
        text = lower_chapter_capitals(text)
    return text
