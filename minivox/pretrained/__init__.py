"""Bundled small demo checkpoints; MODEL_CARD.md says how each was trained and how it scores."""

from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent


def bundled_checkpoints() -> list[Path]:
    """Paths of the demo checkpoints shipped with the package (possibly none)."""
    return sorted(PRETRAINED_DIR.glob("*.pt"))
