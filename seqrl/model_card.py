"""`final/README.md`: a model card in the Hub's format (YAML metadata, then text) saying how the
model was trained, with `final/training_recipe.yaml` beside it; and `seqrl push`'s upload."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from seqrl.config import RecipeConfig, dump_recipe
from seqrl.errors import SeqrlError

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
CARD, RECIPE = "README.md", "training_recipe.yaml"


def _hub_name(name: str | None) -> str | None:
    """`org/name` when `name` reads as a hub repository (not a local path)."""
    return name if name and HUB_ID.match(name) and not Path(name).exists() else None


def write_model_card(directory: Path, cfg: RecipeConfig, is_seq2seq: bool, steps: int,
                     scores: dict[str, float], command: str | None) -> None:
    base = _hub_name(cfg.model.name_or_path)
    dataset = _hub_name(cfg.data.path)
    metadata = {"library_name": "transformers",
                "pipeline_tag": "text2text-generation" if is_seq2seq else "text-generation",
                "tags": ["seqrl", "reinforce", cfg.schedule.kind]
                + (["lora"] if cfg.model.lora else [])}
    if base:
        metadata["base_model"] = base
    if dataset:
        metadata["datasets"] = [dataset]
    start = cfg.model.name_or_path or f"a {cfg.model.architecture} built from a config (random weights)"
    rewards = ", ".join(f"{r.name} (weight {r.weight:g})" for r in cfg.rewards) if cfg.schedule.samples() else "none"
    lines = ["---", yaml.safe_dump(metadata, sort_keys=False).strip(), "---", "",
             f"# {Path(cfg.run.output_dir).name}", "",
             f"Fine-tuned with seqrl from {start}: cross-entropy (teacher forcing), then "
             f"a sequence-level `{cfg.schedule.kind}` schedule trained with REINFORCE on its rewards.", "",
             "## Training", "",
             f"- data: `{cfg.data.path or cfg.data.files}` ({cfg.data.source_field} -> {cfg.data.target_field})",
             f"- {steps} optimizer steps; schedule `{cfg.schedule.kind}`"
             + (f", {cfg.schedule.xent_steps} cross-entropy steps first" if cfg.schedule.xent_steps is not None else ""),
             f"- rewards: {rewards}; baseline `{cfg.reinforce.baseline.kind}`, {cfg.reinforce.candidates.num_samples} samples per source",
             "- weights: " + (f"LoRA rank {cfg.model.lora.rank} adapters, merged here (the adapter is in `adapter/`)"
                               if cfg.model.lora else "all trained"),
             f"- the whole recipe: `{RECIPE}`", ""]
    if scores:
        lines += ["## Results", "", "| split / metric | score |", "|---|---|"]
        lines += [f"| {name} | {value:.2f} |" for name, value in sorted(scores.items()) if not name.endswith("seconds")]
        lines.append("")
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
        raise SeqrlError(f"upload to {repo_id} failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}") from None
    return str(url)
