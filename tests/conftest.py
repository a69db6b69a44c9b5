"""Shared fixtures: tiny image datasets written on the fly (no network, no assets)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0, **save: object) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90, **save)
    return buffer.getvalue()


def write_folder(root: Path, rows: list[dict], images: dict[str, bytes] | None = None) -> Path:
    """A dataset folder; every file_name gets a random JPEG unless ``images`` says otherwise."""
    root.mkdir(parents=True, exist_ok=True)
    images = images or {}
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    for i, row in enumerate(rows):
        name = row.get("file_name")
        if name and ".." not in name and not name.startswith("/"):
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if name not in images and not path.exists():
                path.write_bytes(jpeg_bytes(seed=i))
            elif name in images and images[name] is not None:
                path.write_bytes(images[name])
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    rows = [{"file_name": f"img/{i}.jpg", "label": i % 2, "weather": "rain" if i % 3 else "", "latitude": 52.5,
             "longitude": 13.4} for i in range(8)]
    return write_folder(tmp_path / "ds", rows)


def orange_block_folder(root: Path, n: int, seed: int) -> Path:
    """Gray noise; positives carry an orange block: learnable in a few epochs from frozen features."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        array = rng.integers(70, 130, size=(112, 112, 3), dtype=np.uint8)
        label = i % 2
        if label:
            x, y = rng.integers(0, 60, size=2)
            array[y : y + 50, x : x + 50] = (255, 120, 0)
        Image.fromarray(array).save(root / f"img/{i}.jpg", quality=90)
        rows.append({"file_name": f"img/{i}.jpg", "label": label, "weather": ["rain", "", "fog"][i % 3],
                     "latitude": 40 + i % 5, "longitude": 2.0, "description": "cones ahead" if i % 4 == 1 else ""})
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def tiny_vit_folder(tmp_path_factory) -> Path:
    """A tiny random DINOv3 ViT saved with ``save_pretrained``: the real loading code, no download."""
    from transformers import AutoModel, DINOv3ViTConfig

    folder = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    config = DINOv3ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                             patch_size=16, num_register_tokens=4, image_size=32)
    AutoModel.from_config(config).save_pretrained(folder)
    return folder



@pytest.fixture(scope="session")
def probe_bundle(tmp_path_factory) -> dict[str, Path]:
    """A small trained bundle (frozen embedded backbone, probe head, 2 folds) for the serving tests."""
    from roadwork.config import load_config
    from roadwork.train.run import train

    base = tmp_path_factory.mktemp("probe-bundle")
    data = orange_block_folder(base / "data", 24, seed=5)
    config = load_config(None, ["validation.groups=rows", "validation.folds=2", "validation.serve=folds",
                                "model.type=probe", "backbone_training.mode=frozen"])
    train(str(data), base / "run", config, cache_dir=base / "cache", progress=False)
    return {"bundle": base / "run" / "bundle", "data": data, "cache": base / "cache"}


@pytest.fixture(scope="session")
def tiny_sam3_folder(tmp_path_factory) -> Path:
    """A tiny random SAM 3 (Sam3Model and Sam3Processor with a byte-level CLIP tokenizer built in memory),
    saved with ``save_pretrained``: the real loading code, no download."""
    from transformers import (
        Sam3Config,
        Sam3DETRDecoderConfig,
        Sam3DETREncoderConfig,
        Sam3GeometryEncoderConfig,
        Sam3ImageProcessor,
        Sam3MaskDecoderConfig,
        Sam3Model,
        Sam3Processor,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )

    tokenizer = _character_tokenizer()   # prompts are truncated to 32 characters
    size, width = 64, 32   # every decoder's width must equal the FPN's; the mask decoder's divides by 8
    vit = Sam3ViTConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2,
                        image_size=size, patch_size=8, pretrain_image_size=size, window_size=4, global_attn_indexes=[1])
    small = {"hidden_size": width, "num_attention_heads": 2, "intermediate_size": 2 * width}
    config = Sam3Config(
        vision_config=Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=width, scale_factors=[2.0, 1.0, 0.5],
                                       backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]]),
        text_config={"vocab_size": len(tokenizer), "hidden_size": width, "intermediate_size": 2 * width,
                     "projection_dim": width, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "max_position_embeddings": 32, "hidden_act": "gelu", "bos_token_id": 1, "eos_token_id": 2,
                     "pad_token_id": 0},
        geometry_encoder_config=Sam3GeometryEncoderConfig(num_layers=1, roi_size=2, **small),
        detr_encoder_config=Sam3DETREncoderConfig(num_layers=1, **small),
        detr_decoder_config=Sam3DETRDecoderConfig(num_layers=1, num_queries=8, **small),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=width, num_upsampling_stages=2, num_attention_heads=2),
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sam3")
    Sam3Model(config).save_pretrained(folder)
    Sam3Processor(image_processor=Sam3ImageProcessor(size={"height": size, "width": size}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def _character_tokenizer():
    """A byte-level CLIP tokenizer with one token per character, built in memory (no download); id 0 is
    padding, as OWL models read a query whose first id is 0 as absent."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    for symbol in [*symbols, *(s + "</w>" for s in symbols)]:
        vocab.setdefault(symbol, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token="<pad>")


@pytest.fixture(scope="session")
def tiny_owlv2_folder(tmp_path_factory) -> Path:
    """A tiny random OWLv2 (open-vocabulary detector) and its processor, saved with ``save_pretrained``."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    tokenizer = _character_tokenizer()
    config = Owlv2Config(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 24, "bos_token_id": 1, "eos_token_id": 2,
                     "pad_token_id": 0},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 64, "patch_size": 16},
        projection_dim=32)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("owlv2")
    Owlv2ForObjectDetection(config).save_pretrained(folder)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                   tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_yolos_folder(tmp_path_factory) -> Path:
    """A tiny random closed-set detector (YOLOS) whose labels are two roadwork categories and a car."""
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    labels = {0: "cone", 1: "worker", 2: "car"}
    config = YolosConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         image_size=[64, 64], patch_size=16, num_detection_tokens=6, id2label=labels,
                         label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("yolos")
    YolosForObjectDetection(config).save_pretrained(folder)
    YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(folder)
    return folder


def tiny_depth_anything(folder: Path, kind: str) -> Path:
    """A tiny random Depth Anything (``kind``: metric or relative) and its processor, saved with
    ``save_pretrained``."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=56, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, fusion_hidden_size=16, neck_hidden_sizes=[8, 16, 32, 32],
                                 reassemble_hidden_size=32, head_hidden_size=8, depth_estimation_type=kind,
                                 max_depth=80)
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=False, ensure_multiple_of=14,
                      do_pad=False).save_pretrained(folder)
    return folder


def _chat_tokenizer(special: list[str], roles: list[str], **tokens: str):
    """A word-level tokenizer over the VLM question's words, yes/no and ``roles``; ``special[:2]`` are unknown
    and padding, the rest special tokens. Returns it and its vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from roadwork.experts.vlm import QUESTION

    words = sorted({*roles, "yes", "no", "Yes", "No", *QUESTION.split()})
    vocab = {token: i for i, token in enumerate(special + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=special[0]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=special[0], pad_token=special[1],
                                        additional_special_tokens=special[2:], **tokens)
    return tokenizer, vocab


@pytest.fixture(scope="session")
def tiny_llava_folder(tmp_path_factory) -> Path:
    """A tiny random LLaVA (CLIP vision tower, Llama language model), the second VLM family, with its
    processor, saved with ``save_pretrained``."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer, vocab = _chat_tokenizer(["<unk>", "<pad>", "<s>", "</s>", "<image>"], ["USER:", "ASSISTANT:"],
                                       bos_token="<s>", eos_token="</s>")
    template = ("{% for m in messages %}{{ m['role'] | upper }}: {% for c in m['content'] %}{% if c['type'] == "
                "'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT: {% endif %}")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=16, vision_feature_select_strategy="default", chat_template=template,
        image_token="<image>", num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=32, patch_size=16, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                pad_token_id=vocab["<pad>"]),
        image_token_id=vocab["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("llava")
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_qwen3vl_folder(tmp_path_factory) -> Path:
    """A tiny random Qwen3-VL with its processor (a word-level tokenizer and a chat template built in
    memory), saved with ``save_pretrained``: the real loading code, no download."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    special = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>"]
    tokenizer, vocab = _chat_tokenizer(special, ["user", "assistant"], eos_token="<|im_end|>")
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|> {% else %}{{ c['text'] }}"
                "{% endif %}{% endfor %}<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant "
                "{% endif %}")
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32,
                                              max_pixels=64 * 64),
        tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor(), chat_template=template)
    config = Qwen3VLConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                     "rope_scaling": {"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True},
                     "max_position_embeddings": 512},
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 16,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 32,
                       "deepstack_visual_indexes": [0], "num_position_embeddings": 16},
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"])
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("qwen3vl")
    Qwen3VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
