"""The languages a recipe's data is in, for the model card (`language`, the task) and the
`language_id` reward: `tokenizer.languages` where given, else the language part of a
multilingual tokenizer's `tokenizer.src_lang` / `tgt_lang` codes (`en_XX` -> `en`, `spa_Latn` -> `spa`)."""

from __future__ import annotations

from seqrl.config import TokenizerConfig


def language_part(code: str | None) -> str | None:
    """`en_XX` (mBART), `eng_Latn` (NLLB), `__en__` (M2M100), `en` -> the ISO 639 code."""
    if not code:
        return None
    return code.strip("_").split("_")[0].split("-")[0].lower() or None


def recipe_languages(tokenizer: TokenizerConfig) -> tuple[str | None, str | None]:
    """(source language, target language), either None when the recipe does not say."""
    if tokenizer.languages:
        codes = tokenizer.languages
        return codes[0], codes[-1]  # one code: the same language on both sides
    return language_part(tokenizer.src_lang), language_part(tokenizer.tgt_lang)
