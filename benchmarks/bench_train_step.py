"""P6: throughput and model FLOP utilisation (MFU) of one InfoNCE training step — ResNet-50 image tower +
BERT-family text tower (both from scratch, nothing downloaded), bf16 autocast, AdamW — against the
theoretical bf16 peak of the device, which the script names.

    python benchmarks/bench_train_step.py              # the GPU configuration on CUDA, a small one on CPU
    python benchmarks/bench_train_step.py --size gpu   # force a configuration
    python benchmarks/bench_train_step.py --peak-tflops 989   # a device the table below does not know

Model FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one whole step (forward and
backward of both towers and the loss; the optimizer's element-wise update is not model FLOPs), so MFU =
FLOPs per step × steps per second / peak. Configurations:

- ``gpu``: batch 256, 224-px images, BERT-base (12 layers, 768 wide, 12 heads), 32 tokens, 512-d embeddings.
- ``cpu``: batch 16, 64-px images, a 4-layer, 256-wide BERT, 16 tokens, 128-d embeddings — the same
  architectures at a size a CPU finishes in seconds per step.
- ``tiny``: what the test suite runs, to keep the script working.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

#: dense bf16 tensor-core peaks (TFLOPS, no sparsity) from the vendors' data sheets
GPU_PEAK_TFLOPS = {
    "H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.5,
    "H100": 756.5, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10G": 70.0, "A10": 125.0,
}


@dataclass
class Config:
    batch: int
    image_size: int
    layers: int
    hidden: int
    heads: int
    tokens: int
    embed_dim: int
    vocab: int = 30522


SIZES = {"gpu": Config(batch=256, image_size=224, layers=12, hidden=768, heads=12, tokens=32, embed_dim=512),
         "cpu": Config(batch=16, image_size=64, layers=4, hidden=256, heads=4, tokens=16, embed_dim=128),
         "tiny": Config(batch=4, image_size=32, layers=1, hidden=64, heads=2, tokens=8, embed_dim=32)}


class TwoTowers(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        from torchvision.models import resnet50
        from transformers import BertConfig, BertModel

        self.image = resnet50(weights=None, num_classes=cfg.embed_dim)  # fc: 2048 -> embed_dim
        self.text = BertModel(BertConfig(vocab_size=cfg.vocab, hidden_size=cfg.hidden,
                                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                                         intermediate_size=4 * cfg.hidden, max_position_embeddings=512),
                              add_pooling_layer=False)
        self.project = nn.Linear(cfg.hidden, cfg.embed_dim)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.text(input_ids=tokens).last_hidden_state[:, 0]  # [CLS]
        return self.image(images), self.project(text)


def gpu_peak(name: str) -> tuple[float | None, str]:
    for key in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):  # the most specific name first
        if key.lower() in name.lower():
            return GPU_PEAK_TFLOPS[key] * 1e12, f"{key} dense bf16 tensor cores, {GPU_PEAK_TFLOPS[key]} TFLOPS"
    return None, f"{name}: not in the table (pass --peak-tflops)"


def cpu_peak() -> tuple[float, str]:
    """cores × clock × bf16 FLOP per cycle per core: 1024 with AMX (one TMUL tile op), 128 with
    AVX-512 BF16 dot products (two FMA ports × 32 bf16 lanes × 2), else 64 fp32 (AVX-512) or 32 (AVX2)."""
    info = open("/proc/cpuinfo").read()
    flags = set(re.search(r"^flags\s*:(.*)$", info, re.M).group(1).split())
    mhz = float(re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M).group(1))
    cores = len(os.sched_getaffinity(0))
    per_cycle, unit = ((1024, "AMX bf16") if "amx_bf16" in flags else (128, "AVX-512 BF16") if "avx512_bf16" in flags
                       else (64, "AVX-512 fp32 FMA") if "avx512f" in flags else (32, "AVX2 fp32 FMA"))
    peak = cores * mhz * 1e6 * per_cycle
    return peak, f"{cores} cores × {mhz / 1000:.2f} GHz × {per_cycle} FLOP/cycle ({unit}) = {peak / 1e12:.2f} TFLOPS"


def _sig(x: float) -> float:
    return float(f"{x:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), help="default: gpu on CUDA, cpu otherwise")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on GPU, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 on GPU, 1 on CPU)")
    parser.add_argument("--peak-tflops", type=float, help="the device's bf16 peak, when the table lacks it")
    args = parser.parse_args()

    from harness_plugins.contrastive.losses import InfoNCE

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = SIZES[args.size or ("gpu" if device.type == "cuda" else "cpu")]
    cuda = device.type == "cuda"
    steps = args.steps or (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    torch.manual_seed(0)
    model = TwoTowers(cfg).to(device)
    loss_fn = InfoNCE(0.07).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(cfg.batch, 3, cfg.image_size, cfg.image_size, device=device)
    tokens = torch.randint(0, cfg.vocab, (cfg.batch, cfg.tokens), device=device)

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            image_emb, text_emb = model(images, tokens)
            loss = loss_fn(image_emb, text_emb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / steps

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak, source = gpu_peak(name)
    else:
        name = "CPU"
        peak, source = cpu_peak()
    if args.peak_tflops:
        peak, source = args.peak_tflops * 1e12, f"--peak-tflops {args.peak_tflops}"
    achieved = flops / seconds
    report = {"device": name, "peak": source, "config": asdict(cfg), "torch_threads": torch.get_num_threads(),
              "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
              "step_s": _sig(seconds), "samples_per_s": _sig(cfg.batch / seconds),
              "model_tflops_per_step": _sig(flops / 1e12), "achieved_tflops": _sig(achieved / 1e12),
              "mfu": None if peak is None else _sig(achieved / peak)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
