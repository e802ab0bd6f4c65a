"""SAM ViT-B's image encoder in PyTorch eager, random weights: the strongest peer's default path.

BENCHMARK ONLY. Written for this benchmark from the Segment Anything paper's description
(Kirillov et al., 2023, section 3 and appendix A: an MAE-pretrained ViT-B/16 adapted to
1024 x 1024 inputs), not from its code:

- patch embedding: a 16 x 16 convolution with stride 16, 3 -> 768 channels, giving a
  64 x 64 grid of tokens (kept channels-last, ``(B, 64, 64, 768)``), plus a learned absolute
  position embedding of the same shape;
- 12 pre-norm transformer blocks (LayerNorm, eps 1e-6), width 768, 12 heads of 64, MLP
  ratio 4 with GELU; attention inside non-overlapping 14 x 14 windows (the grid zero-padded
  to 70 x 70), except blocks 2, 5, 8 and 11 (0-based), which attend globally over the 64 x 64
  grid; every attention adds decomposed relative position terms: learned tables of
  ``2 * size - 1`` vectors of the head width for the rows and for the columns (size 14 in a
  window, 64 globally), so that a query at (i, j) and a key at (k, l) get
  ``q . R_rows[i - k] + q . R_cols[j - l]`` added to their logit;
- neck: a 1 x 1 convolution to 256 channels, a channel LayerNorm, a 3 x 3 convolution
  (256 -> 256, padding 1), a channel LayerNorm (both convolutions without bias): the
  ``(1, 256, 64, 64)`` embedding SAM's decoder reads.

Weights are random (seed 0; only the cost matters). Run it with a Python that has torch
(not the plugin's environment)::

    /tmp/bench-venv/bin/python benchmarks/peer_vit_b.py --threads 2 --runs 3

It prints the parameter count, the multiply-accumulates it counts (listed below) and the
median time of the image encoder on a 1024 x 1024 float32 input (torch eager,
``torch.no_grad``, ``torch.set_num_threads(threads)``; the MAC count's forward pass is the
untimed warm-up), and with ``--json`` one JSON line last. ``benchmarks/bench_peers.py``
runs it in a subprocess and compares it with the plugin.

MACs counted: every ``nn.Linear`` (tokens x in x out, windowed blocks over the padded
70 x 70 grid, as they run), every ``nn.Conv2d``, and inside attention ``q @ k^T``,
``attn @ v`` and the two relative-position products. Not counted: softmax, normalisations,
GELU, additions and the padding itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

#: ViT-B as SAM uses it.
IMG, PATCH, DIM, DEPTH, HEADS, MLP_RATIO, WINDOW, OUT = 1024, 16, 768, 12, 12, 4, 14, 256
GLOBAL_BLOCKS = (2, 5, 8, 11)

#: MACs of the attention products, added by :class:`Attention` while counting.
_ATTENTION_MACS = [0]


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of an ``(B, C, H, W)`` map."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def relative_table(table: torch.Tensor, size: int) -> torch.Tensor:
    """``(size, size, head_dim)`` vectors ``table[i - k + size - 1]`` for query row ``i``
    and key row ``k`` (the table holds ``2 * size - 1`` offsets)."""
    idx = torch.arange(size)[:, None] - torch.arange(size)[None, :] + (size - 1)
    return table[idx]


class Attention(nn.Module):
    """Multi-head self-attention over an ``(n, h, w, dim)`` grid of tokens, with decomposed
    relative position terms for a grid of ``size`` x ``size``."""

    def __init__(self, dim: int, heads: int, size: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rows = nn.Parameter(torch.randn(2 * size - 1, self.head_dim) * 0.02)
        self.cols = nn.Parameter(torch.randn(2 * size - 1, self.head_dim) * 0.02)
        self.count = False

    def forward(self, x):
        n, h, w, dim = x.shape
        t = h * w
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = (a.reshape(n * self.heads, t, self.head_dim) for a in qkv)
        logits = (q * self.head_dim ** -0.5) @ k.transpose(1, 2)
        # Relative positions: q . R_rows[i - k] for every (query row, key row), likewise
        # for the columns, broadcast over the other axis of the key.
        qg = q.reshape(n * self.heads, h, w, self.head_dim)
        r_rows = torch.einsum("bijc,ikc->bijk", qg, relative_table(self.rows, h))
        r_cols = torch.einsum("bijc,jlc->bijl", qg, relative_table(self.cols, w))
        grid = logits.view(n * self.heads, h, w, h, w)  # in place: a global block's
        grid.add_(r_rows[:, :, :, :, None]).add_(r_cols[:, :, :, None, :])  # are 0.8 GB
        out = logits.softmax(-1) @ v
        if self.count:
            b = n * self.heads
            _ATTENTION_MACS[0] += 2 * b * t * t * self.head_dim  # q @ k^T and attn @ v
            _ATTENTION_MACS[0] += b * t * (h + w) * self.head_dim  # the two position terms
        out = out.reshape(n, self.heads, h, w, self.head_dim).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(n, h, w, dim))


class Block(nn.Module):
    """Pre-norm transformer block; ``window`` 0 attends over the whole grid."""

    def __init__(self, window: int, grid: int):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(DIM, eps=1e-6)
        self.attn = Attention(DIM, HEADS, window or grid)
        self.norm2 = nn.LayerNorm(DIM, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(DIM, MLP_RATIO * DIM), nn.GELU(),
                                 nn.Linear(MLP_RATIO * DIM, DIM))

    def forward(self, x):
        y = self.norm1(x)
        if self.window:
            b, h, w, c = y.shape
            s = self.window
            ph, pw = math.ceil(h / s) * s, math.ceil(w / s) * s
            y = F.pad(y, (0, 0, 0, pw - w, 0, ph - h))
            y = y.reshape(b, ph // s, s, pw // s, s, c).permute(0, 1, 3, 2, 4, 5)
            y = self.attn(y.reshape(-1, s, s, c))
            y = y.reshape(b, ph // s, pw // s, s, s, c).permute(0, 1, 3, 2, 4, 5)
            y = y.reshape(b, ph, pw, c)[:, :h, :w]
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class ImageEncoderViTB(nn.Module):
    """``(B, 3, 1024, 1024)`` float32 image -> ``(B, 256, 64, 64)`` embedding."""

    def __init__(self):
        super().__init__()
        grid = IMG // PATCH
        self.patch = nn.Conv2d(3, DIM, PATCH, stride=PATCH)
        self.pos = nn.Parameter(torch.randn(1, grid, grid, DIM) * 0.02)
        self.blocks = nn.ModuleList(
            Block(0 if i in GLOBAL_BLOCKS else WINDOW, grid) for i in range(DEPTH))
        self.neck = nn.Sequential(nn.Conv2d(DIM, OUT, 1, bias=False), ChannelNorm(OUT),
                                  nn.Conv2d(OUT, OUT, 3, padding=1, bias=False),
                                  ChannelNorm(OUT))

    def forward(self, x):
        x = self.patch(x).permute(0, 2, 3, 1) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))


def count_macs(model: ImageEncoderViTB) -> dict:
    """Multiply-accumulates of one 1024 x 1024 image, by kind (see the module docstring)."""
    macs = {"linear": 0, "conv": 0}

    def linear(mod, inp, out):
        macs["linear"] += out.numel() * mod.in_features

    def conv(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        macs["conv"] += out.numel() * (mod.in_channels // mod.groups) * k

    hooks = [m.register_forward_hook(linear if isinstance(m, nn.Linear) else conv)
             for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    _ATTENTION_MACS[0] = 0
    for a in attns:
        a.count = True
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, IMG, IMG))
    finally:
        for h in hooks:
            h.remove()
        for a in attns:
            a.count = False
    macs["attention"] = _ATTENTION_MACS[0]
    macs["total"] = sum(macs.values())
    return macs


def time_encoder(model, runs: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``runs`` forward passes on a 1024 x 1024 input (after
    ``warmup`` untimed ones), under ``torch.no_grad``."""
    x = torch.randn(1, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    times = []
    with torch.no_grad():
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=0,
                    help="untimed runs after the MAC count's own (untimed) forward pass")
    ap.add_argument("--json", action="store_true", help="print one JSON line last")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ImageEncoderViTB().eval()
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model)
    times = time_encoder(model, args.runs, args.warmup)
    med = statistics.median(times)
    print(f"SAM ViT-B image encoder (random weights): {params / 1e6:.3f} M parameters; "
          f"{macs['total'] / 1e9:.1f} GMAC at {IMG}x{IMG} (linear {macs['linear'] / 1e9:.1f}, "
          f"attention {macs['attention'] / 1e9:.1f}, conv {macs['conv'] / 1e9:.1f})",
          file=sys.stderr)
    print(f"torch {torch.__version__} eager, {args.threads} threads, float32: median "
          f"{med:.2f} s over {args.runs} runs ({', '.join(f'{t:.2f}' for t in times)}); "
          f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    if args.json:
        print(json.dumps({"parameters": params, "macs": macs, "seconds": times,
                          "median_seconds": med, "threads": args.threads,
                          "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
