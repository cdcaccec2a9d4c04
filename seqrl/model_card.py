"""`final/README.md`: a model card in the Hub's format (YAML metadata, then text) saying how the
model was trained, with `final/training_recipe.yaml` beside it; and `seqrl push`'s upload."""

from __future__ import annotations

import re
from pathlib import Path

from seqrl import alarms, software
from seqrl.config import RecipeConfig, dump_recipe
from seqrl.errors import SeqrlError
from seqrl.languages import recipe_languages

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
CARD, RECIPE = "README.md", "training_recipe.yaml"


def _hub_name(name: str | None) -> str | None:
    """`org/name` when `name` reads as a hub repository (not a local path)."""
    return name if name and HUB_ID.match(name) and not Path(name).exists() else None


# Hub metric ids and display names of seqrl's corpus metrics (`eval.metrics`).
HUB_METRICS = {"bleu": ("bleu", "BLEU"), "chrf": ("chrf", "chrF"), "rouge1": ("rouge", "ROUGE-1"),
               "rouge2": ("rouge", "ROUGE-2"), "rougeL": ("rouge", "ROUGE-L")}


def task_of(cfg: RecipeConfig, is_seq2seq: bool) -> str:
    """The Hub's pipeline tag: decoder-only models generate text; an encoder-decoder translates
    between two languages, summarizes within one (or under a `summarize` prefix), else is generic."""
    if not is_seq2seq:
        return "text-generation"
    source, target = recipe_languages(cfg.tokenizer)
    prefix = cfg.data.source_prefix.strip().lower()
    if (source and target and source != target) or prefix.startswith("translate"):
        return "translation"
    if (source and source == target) or prefix.startswith("summar"):
        return "summarization"
    return "text2text-generation"


def base_license(name_or_path: str | None) -> str | None:
    """The base model's license from its own card: a local directory's README.md, or the hub's
    (only where the hub is reachable); None when unknown."""
    from huggingface_hub import ModelCard, constants, model_info

    if not name_or_path:
        return None
    try:
        if Path(name_or_path, CARD).is_file():
            return ModelCard.load(Path(name_or_path, CARD)).data.license
        if _hub_name(name_or_path) and not constants.HF_HUB_OFFLINE:
            card = model_info(name_or_path, timeout=10).card_data
            return card.license if card else None
    except Exception:  # no network, a gated or missing repository, an unreadable card: unknown
        return None
    return None


def eval_results(cfg: RecipeConfig, task: str, scores: dict[str, float]) -> list:
    """The test scores as the Hub's `model-index` entries (scores on 0-100, as logged)."""
    from huggingface_hub import EvalResult

    split = cfg.data.test_split
    languages = "-".join(dict.fromkeys(c for c in recipe_languages(cfg.tokenizer) if c))
    dataset = _hub_name(cfg.data.path) or Path(cfg.data.path or "data").name
    part = f" (first {cfg.eval.test_max_examples} examples)" if cfg.eval.test_max_examples else ""
    results = []
    for metric, (metric_type, pretty) in HUB_METRICS.items():
        value = scores.get(f"test/{metric}")
        if split and value is not None:
            results.append(EvalResult(task_type=task, dataset_type=dataset, dataset_config=cfg.data.hub_config,
                                      dataset_name=f"{dataset} ({languages})" if languages else dataset,
                                      dataset_split=split, metric_type=metric_type, metric_value=round(value, 2),
                                      metric_name=f"Test {pretty}{part}",
                                      metric_config=metric if metric_type == "rouge" else None))
    return results


def card_metadata(cfg: RecipeConfig, is_seq2seq: bool, scores: dict[str, float], license_: str | None):
    """The card's YAML metadata as huggingface_hub's `ModelCardData` (the Hub's own schema)."""
    from huggingface_hub import ModelCardData

    task = task_of(cfg, is_seq2seq)
    results = eval_results(cfg, task, scores)
    dataset = _hub_name(cfg.data.path)
    return ModelCardData(
        library_name="transformers", pipeline_tag=task, license=license_,
        language=list(dict.fromkeys(c for c in recipe_languages(cfg.tokenizer) if c)) or None,
        base_model=_hub_name(cfg.model.name_or_path), datasets=[dataset] if dataset else None,
        tags=["seqrl", "reinforce", cfg.schedule.kind]
        + (["lora"] if cfg.model.lora else []),
        model_name=Path(cfg.run.output_dir).name if results else None, eval_results=results or None)


def license_line(cfg: RecipeConfig, license_: str | None) -> str:
    if license_:
        return f"The base model's license, `{license_}` (from its model card), applies to this derived model."
    if cfg.model.name_or_path is None:
        return "None stated: the model was built from a config (random weights); the data's terms still apply."
    return (f"None stated here: the license of `{cfg.model.name_or_path}` could not be read (no card, or the "
            f"hub was not reachable); check it before sharing this model.")


def write_model_card(directory: Path, cfg: RecipeConfig, is_seq2seq: bool, steps: int,
                     scores: dict[str, float], command: str | None) -> None:
    license_ = base_license(cfg.model.name_or_path)
    metadata = card_metadata(cfg, is_seq2seq, scores, license_)
    start = cfg.model.name_or_path or f"a {cfg.model.architecture} built from a config (random weights)"
    rewards = ", ".join(f"{r.name} (weight {r.weight:g})" for r in cfg.rewards) if cfg.schedule.samples() else "none"
    lines = ["---", metadata.to_yaml().strip(), "---", "",
             f"# {Path(cfg.run.output_dir).name}", "",
             f"Fine-tuned with seqrl from {start}: cross-entropy (teacher forcing), then "
             f"a sequence-level `{cfg.schedule.kind}` schedule trained with REINFORCE on its rewards.", "",
             "## Training", "",
             f"- data: `{cfg.data.path or cfg.data.files}` ({cfg.data.source_field} -> {cfg.data.target_field})",
             f"- {steps} optimizer steps; schedule `{cfg.schedule.kind}`"
             + (f", {cfg.schedule.xent_steps} cross-entropy steps first"
                if cfg.schedule.xent_steps is not None else ""),
             f"- rewards: {rewards}; baseline `{cfg.reinforce.baseline.kind}`, "
             f"{cfg.reinforce.candidates.num_samples} samples per source",
             "- weights: " + (f"LoRA rank {cfg.model.lora.rank} adapters, merged here (the adapter is in `adapter/`)"
                               if cfg.model.lora else "all trained"),
             f"- the whole recipe: `{RECIPE}`",
             f"- {software.describe()}", ""]
    if scores:
        lines += ["## Results", "", "| split / metric | score |", "|---|---|"]
        lines += [f"| {name} | {value:.2f} |" for name, value in sorted(scores.items()) if not name.endswith("seconds")]
        lines.append("")
    warnings = alarms.notes(cfg.run.output_dir)
    if warnings:
        lines += ["## Alarms raised during training", ""] + [f"- {note}" for note in warnings] + [""]
    lines += ["## License", "", license_line(cfg, license_), ""]
    if command:
        lines += ["## Reproduce", "", "```bash", command, "```", ""]
    (directory / CARD).write_text("\n".join(lines), encoding="utf-8")
    (directory / RECIPE).write_text(dump_recipe(cfg), encoding="utf-8")


def push(run_dir: Path, repo_id: str, private: bool) -> str:
    """Upload RUN_DIR/final to the hub repository `repo_id` (created if needed); its URL."""
    import os

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    final = run_dir / "final"
    if not (final / "config.json").is_file():
        raise SeqrlError(f"{final} holds no model; give the directory of a finished seqrl run")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise SeqrlError(f"'{repo_id}' is not a hub repository id; write it as user/name or org/name") from None
    if "/" not in repo_id:
        raise SeqrlError(f"'{repo_id}': name the owner too (user/name or org/name)")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise SeqrlError("the hub is switched off here (HF_HUB_OFFLINE=1); the upload needs it: unset HF_HUB_OFFLINE")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(folder_path=str(final), repo_id=repo_id, commit_message=f"seqrl: {run_dir.name}")
    except Exception as err:  # no token, no network, no permission: the hub's many errors
        first_line = str(err).splitlines()[0][:160]
        raise SeqrlError(f"upload to {repo_id} failed: {type(err).__name__}: {first_line}") from None
    return str(url)
