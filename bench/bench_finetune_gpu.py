"""DoRA fine-tuning throughput of a ViT-B-sized DINOv3 at 512 px (random weights), on a GPU (issue 7).

    python bench/bench_finetune_gpu.py                       # ViT-B/16, 512 px, batches of 16 and 32
    python bench/bench_finetune_gpu.py --tiny --steps 2      # a 2-layer model: checks the script on a CPU

The model is built from a DINOv3 configuration the size of ViT-B/16 (768 wide, 12 layers, 4 registers),
saved with save_pretrained and loaded through `hf:<folder>`, the same code as real weights. Each step
is what `roadwork train` runs in fine-tuning: DoRA (rank 8) on the attention and MLP projections, a
linear classifier, bf16 autocast, AdamW, with and without gradient checkpointing. Reported: training
images per second after warm-up steps, and peak GPU memory. Output: Markdown rows on stdout.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, today  # noqa: E402
from roadwork.backbones.adapt import adapt_backbone  # noqa: E402
from roadwork.backbones.base import create_backbone  # noqa: E402


def build(folder: Path, tiny: bool) -> None:
    from transformers import AutoModel, DINOv3ViTConfig

    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if tiny else \
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    AutoModel.from_config(DINOv3ViTConfig(patch_size=16, num_register_tokens=4, image_size=512, **size)) \
        .save_pretrained(folder)


def measure(folder: Path, size: int, batch: int, checkpointing: bool, steps: int, device: str) -> tuple[float, float]:
    backbone = create_backbone(f"hf:{folder}", input_size=size, device=device)
    trainable = adapt_backbone(backbone, "dora", rank=8, alpha=16)
    if checkpointing:
        backbone.gradient_checkpointing(True)
    backbone.to(device).train()
    classifier = torch.nn.Linear(backbone.feature_dim, 1).to(device)
    parameters = [p for p in backbone.parameters() if p.requires_grad] + list(classifier.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    views = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 2, (batch,), device=device).float()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warmup = 2
    for step in range(warmup + steps):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = classifier(backbone(views)).squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    del backbone, classifier, optimizer, trainable
    return batch * steps / seconds, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{machine()}, {today()}, `python bench/bench_finetune_gpu.py{' --tiny' if args.tiny else ''}`\n")
    print("| model | px | batch | gradient checkpointing | images/s | peak GPU memory GiB |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        build(Path(folder), args.tiny)
        for batch in args.batches:
            for checkpointing in (False, True):
                try:
                    rate, memory = measure(Path(folder), args.size, batch, checkpointing, args.steps, device)
                    cells = f"{rate:.1f} | {memory:.1f}"
                except torch.OutOfMemoryError:
                    cells = "out of memory | -"
                    torch.cuda.empty_cache()
                name = "tiny DINOv3" if args.tiny else "DINOv3 ViT-B/16 (random), DoRA r=8"
                print(f"| {name} | {args.size} | {batch} | {'yes' if checkpointing else 'no'} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
