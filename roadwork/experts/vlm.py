"""A vision-language model asked one fixed question about each photo, its answer read as a margin.

Any chat VLM transformers loads as ``AutoModelForImageTextToText`` with a processor that has a chat
template (Qwen3-VL tested) sees the photo, scaled down to a pixel budget, and the question below. The
score is never parsed from generated text: it is the next token's log-probability of "yes" against
"no" (each summed over its spellings the tokenizer has as one token), a margin that calibrates like a
head's. Photos are batched with left padding, so the last position is every prompt's next token.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from roadwork.backbones.base import weights_unavailable
from roadwork.errors import RoadworkError
from roadwork.features.store import local_identity

QUESTION = ("Does this street photo show an active roadwork or construction zone (traffic cones, barriers, road "
            "work signs, workers or machinery on or beside the road)? Answer yes or no.")
YES, NO = ("yes", "Yes", " yes", " Yes", "YES"), ("no", "No", " no", " No", "NO")
DEFAULT_MAX_PIXELS = 448 * 448


def single_tokens(tokenizer: object, spellings: Sequence[str]) -> list[int]:
    """The ids of the spellings the tokenizer encodes as exactly one known token."""
    found = []
    for spelling in spellings:
        ids = tokenizer.encode(spelling, add_special_tokens=False)   # type: ignore[attr-defined]
        if len(ids) == 1 and ids[0] != tokenizer.unk_token_id and ids[0] not in found:   # type: ignore[attr-defined]
            found.append(ids[0])
    return found


def within_budget(image: Image.Image, max_pixels: int) -> Image.Image:
    """The photo scaled down (aspect kept) to at most ``max_pixels``."""
    pixels = image.width * image.height
    if pixels <= max_pixels:
        return image
    scale = (max_pixels / pixels) ** 0.5
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


class YesNoVlm:
    """A chat VLM by hub id or local folder, asked ``question`` about each photo."""

    def __init__(self, model: str, question: str = QUESTION, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 device: str | torch.device = "cpu", quantised: bool = False) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(model)
            if quantised:   # QLoRA: 4-bit weights (bitsandbytes, CUDA only), placed by accelerate
                from transformers import BitsAndBytesConfig

                four_bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
                self.model = AutoModelForImageTextToText.from_pretrained(model, quantization_config=four_bit)
            else:
                self.model = AutoModelForImageTextToText.from_pretrained(model).to(device)
            self.model.eval()
        except (OSError, ValueError) as error:
            if Path(model).expanduser().exists():
                raise RoadworkError(f"{model}: not a vision-language model folder saved with `save_pretrained`: "
                                    f"{error}") from None
            raise weights_unavailable("the VLM", model, "a folder saved with `save_pretrained`", error) from None
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"   # the last position is then every prompt's next token
        self.yes, self.no = single_tokens(tokenizer, YES), single_tokens(tokenizer, NO)
        if not self.yes or not self.no:
            raise RoadworkError(f"{model}: its tokenizer has no single token for 'yes' or 'no'; the answer cannot "
                                "be read from the next token")
        self.question, self.max_pixels, self.device = question, max_pixels, torch.device(device)
        self.identity = f"{model}|{local_identity(model)}|{question}|{max_pixels}"

    def inputs(self, images: Sequence[Image.Image]) -> Any:
        """The processor's batch for the question about each photo, on the model's device."""
        message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.question}]}]
        prompt = self.processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[prompt] * len(images), images=[within_budget(i, self.max_pixels) for i in images],
                                return_tensors="pt", padding=True)
        return inputs.to(self.device)

    def answer_margins(self, inputs: Any) -> Tensor:
        """log P(yes) - log P(no) of the next token (with gradients: training calls it too)."""
        logits = self.model(**inputs).logits[:, -1].float()
        return torch.logsumexp(logits[:, self.yes], dim=1) - torch.logsumexp(logits[:, self.no], dim=1)

    def margins(self, images: Sequence[Image.Image]) -> Tensor:
        """The yes/no margin of each photo (float32, CPU)."""
        with torch.inference_mode():
            return self.answer_margins(self.inputs(images)).cpu()
