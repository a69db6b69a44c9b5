"""Text prompts of open-vocabulary experts (SAM 3 pseudo-masks, zero-shot detectors): what to look for,
and the annotation category (``roadwork.data.annotations``) what is found is filed under."""

from __future__ import annotations

from dataclasses import dataclass

from roadwork.data.annotations import CATEGORIES
from roadwork.errors import RoadworkError

# The work-zone concepts, as an open-vocabulary model is asked for them.
DEFAULT_PROMPTS = ("traffic cone=cone", "road barrier=barrier", "construction sign=work_sign",
                   "construction worker=worker", "excavator=machinery")


@dataclass(frozen=True)
class Prompt:
    """A text prompt, and the annotation category its instances are filed under."""

    text: str
    category: str

    @classmethod
    def parse(cls, spec: str) -> Prompt:
        """``TEXT=CATEGORY``, or ``TEXT`` alone for ``other_roadwork``."""
        text, _, category = spec.partition("=")
        text, category = text.strip(), category.strip() or "other_roadwork"
        if not text or category not in CATEGORIES:
            raise RoadworkError(f"prompt {spec!r}: give TEXT or TEXT=CATEGORY with a category among "
                                f"{', '.join(CATEGORIES)}")
        return cls(text, category)
