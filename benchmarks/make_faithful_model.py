"""Build an architecture-faithful EdgeSAM timing model with RANDOM weights.

This is NOT EdgeSAM. The weights are random (fixed seed), so the masks are
meaningless. The point is to have ONNX files that cost what the published
EdgeSAM files cost (same layer shapes, same operator mix, same ONNX signature),
so the plugin's speed can be measured and regressions caught on machines that
cannot download the real weights.

Run it with a separate benchmark venv that has torch (CPU), onnx, onnxruntime
and numpy -- the plugin itself never needs PyTorch:

    python -m venv .bench-venv
    .bench-venv/bin/pip install torch==2.13.0 onnx onnxruntime numpy
    .bench-venv/bin/python benchmarks/make_faithful_model.py

Outputs (git-ignored, ~38 MB together; never commit them):
    benchmarks/models/edgesam_faithful_encoder.onnx
    benchmarks/models/edgesam_faithful_decoder.onnx
    benchmarks/models/edgesam_faithful_encoder_folded.onnx   (only with --folded)

The encoder has the published export's structure: BatchNorm folded into the convs, but
RepViT's 23 parallel 1x1 depthwise branches (and identities) still summed beside the 3x3
depthwise convs (130 Conv and 104 Add nodes, as in the published file), so that "raw"
timings are those of what users download. ``--folded`` also writes the fully
re-parameterised encoder (each token mixer one 3x3 depthwise conv: 107 Conv, 58 Add),
checks that both forms compute the same up to float rounding and times them interleaved.

The script prints parameter and MAC counts, checks them against the published
figures (exit status 1 when outside the tolerances), checks the ONNX
signatures against the model contract, and times both files with onnxruntime
(CPU, 2 threads).

Architecture sources: the EdgeSAM paper (arXiv 2312.06660), the RepViT paper
(arXiv 2307.09283) and the public design of SAM's prompt encoder / mask decoder
(arXiv 2304.02643), as summarised in docs/model-contract.md.  The
code below is written from those descriptions; where the description leaves
freedom, the choice made is stated in a comment marked "CHOICE".

What the MAC counter counts (forward hooks, batch 1):
  * nn.Conv2d:           out_elements * (in_channels / groups) * kh * kw
  * nn.ConvTranspose2d:  in_elements * (out_channels / groups) * kh * kw
  * nn.Linear:           out_elements * in_features
  * MatMul modules:      the two matrix products inside every attention
                         (q @ k^T and attn @ v) and the hypernetwork product
                         of the mask decoder (mask token vectors @ upscaled
                         image features), i.e. prod(batch dims) * M * K * N.
  Not counted: element-wise ops (BN is folded into the convs anyway, GELU,
  sigmoid, softmax, LayerNorm, adds, the bilinear upsample, SE pooling), and
  the Fourier positional encodings (the 64x64 dense one is computed in the
  graph on every call, ~1 M MACs plus 1 M sin/cos; the points' are tiny).
The encoder's MACs are counted in its fully re-parameterised form (RepViT's
3x3 + 1x1 + identity depthwise branches as one 3x3 depthwise conv, every
BatchNorm folded), as the papers count them; the exported form's extra 1x1
depthwise MACs (+0.13 %) are printed too. Parameters are counted in the
training form (with BatchNorm and the unfused branches), which is how the
papers report them; the inference-form counts are printed too.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SEED = 0
IMG_SIZE = 1024
EMBED_DIM = 256
EMBED_HW = 64  # 1024 / 16
MASK_HW = 256  # 1024 / 4
LOGIT_GAIN = 60.0

# Published figures (EdgeSAM paper / model contract) and our tolerances.
TARGET_TOTAL_PARAMS = 9.6e6
TOTAL_PARAMS_TOL = 0.02
TARGET_ENCODER_MACS = 20e9
ENCODER_MACS_TOL = 0.05

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "models"
ENCODER_FILE = "edgesam_faithful_encoder.onnx"
DECODER_FILE = "edgesam_faithful_decoder.onnx"
ENCODER_FOLDED_FILE = "edgesam_faithful_encoder_folded.onnx"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
class MatMul(nn.Module):
    """torch.matmul as a module so that a forward hook can count its MACs."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (as in SAM)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def _randomise_bn(bn: nn.BatchNorm2d, gamma: float = 1.0) -> None:
    """Give a BatchNorm non-trivial random statistics so that folding it is a
    real re-parameterisation (and activations stay O(1), avoiding denormals
    that would distort CPU timings)."""
    with torch.no_grad():
        bn.weight.uniform_(0.5 * gamma, 1.0 * gamma)
        bn.bias.uniform_(-0.1, 0.1)
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)


# --------------------------------------------------------------------------
# encoder: RepViT-M0.9 ("RepViT-M1" in the EdgeSAM paper) + EdgeSAM neck
# --------------------------------------------------------------------------
class ConvBN(nn.Module):
    """Bias-free conv followed by BatchNorm (training form)."""

    def __init__(self, cin, cout, k=1, stride=1, groups=1, gamma=1.0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        _randomise_bn(self.bn, gamma)

    def forward(self, x):
        return self.bn(self.conv(x))

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        c, bn = self.conv, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        out = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride,
                        c.padding, groups=c.groups, bias=True)
        out.weight.copy_(c.weight * scale[:, None, None, None])
        out.bias.copy_(bn.bias - bn.running_mean * scale)
        return out


class RepDWConv(nn.Module):
    """RepViT's structural re-parameterisation token mixer: 3x3 depthwise
    conv+BN, 1x1 depthwise conv+BN and an identity branch, summed. At
    inference it folds into a single 3x3 depthwise conv with bias."""

    def __init__(self, ch):
        super().__init__()
        self.dw3 = ConvBN(ch, ch, 3, groups=ch)
        self.dw1 = ConvBN(ch, ch, 1, groups=ch)

    def forward(self, x):
        return self.dw3(x) + self.dw1(x) + x

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        a, b = self.dw3.fused(), self.dw1.fused()
        w = a.weight.clone()
        w[:, :, 1:2, 1:2] += b.weight + 1.0  # 1x1 branch and identity at the centre tap
        a.weight.copy_(w)
        a.bias.add_(b.bias)
        return a


class SqueezeExcite(nn.Module):
    """Squeeze-excitation: global average pool, 1x1 reduce + ReLU, 1x1 expand,
    sigmoid gate.
    CHOICE: reduction ratio 0.25 with the reduced width rounded to a multiple
    of 8 (RepViT's public setting: 48->16, 96->24, 192->48, 384->96)."""

    def __init__(self, ch, ratio=0.25):
        super().__init__()
        rd = _make_divisible(ch * ratio, 8)
        self.reduce = nn.Conv2d(ch, rd, 1)
        self.expand = nn.Conv2d(rd, ch, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        s = self.expand(F.relu(self.reduce(s)))
        return x * torch.sigmoid(s)


def _make_divisible(v, divisor=8):
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ChannelMixer(nn.Module):
    """Residual FFN: 1x1 conv (expand 2) + BN, GELU, 1x1 conv + BN."""

    def __init__(self, ch, expand=2):
        super().__init__()
        self.pw1 = ConvBN(ch, ch * expand, 1)
        # RepViT initialises this last BN's gamma to 0 for training; random
        # but small keeps the random network's activations tame.
        self.pw2 = ConvBN(ch * expand, ch, 1, gamma=0.2)

    def forward(self, x):
        return x + self.pw2(F.gelu(self.pw1(x)))


class RepViTBlock(nn.Module):
    """Stride-1 block: re-parameterisable depthwise token mixer (its identity
    branch is the token mixer's residual), optional SE, residual FFN."""

    def __init__(self, ch, use_se):
        super().__init__()
        self.token_mixer = RepDWConv(ch)
        self.se = SqueezeExcite(ch) if use_se else nn.Identity()
        self.channel_mixer = ChannelMixer(ch)

    def forward(self, x):
        return self.channel_mixer(self.se(self.token_mixer(x)))


class RepViTDownsample(nn.Module):
    """RepViT's downsampling layer between stages:
    a pre-block (an ordinary stride-1 RepViT block at the input width, no SE),
    3x3 depthwise conv stride 2 + BN, 1x1 conv + BN changing the width,
    then a residual FFN (expansion 2) at the output width.
    CHOICE: the pre-block and the FFN are RepViT's public design (they are the
    stride-1 block and the channel mixer of the stride-2 block in EdgeSAM's
    block list); the contract's "2/2/14/2 blocks" count the stage blocks
    without the downsampling layers, as RepViT-M0.9's depth list does.
    EdgeSAM takes stage features after the pre-block, which therefore belongs
    to the preceding stage's output; here that is the same tensor."""

    def __init__(self, cin, cout):
        super().__init__()
        self.pre_block = RepViTBlock(cin, use_se=False)
        self.dw = ConvBN(cin, cin, 3, stride=2, groups=cin)
        self.pw = ConvBN(cin, cout, 1)
        self.ffn = ChannelMixer(cout)

    def forward(self, x):
        return self.ffn(self.pw(self.dw(self.pre_block(x))))


class Upsample2x(nn.Module):
    def forward(self, x):
        # The published export uses bilinear upsampling in the neck.
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class FaithfulEncoder(nn.Module):
    """RepViT-M0.9 backbone + EdgeSAM's FPN-like neck: [1,3,1024,1024] ->
    [1,256,64,64]."""

    WIDTHS = (48, 96, 192, 384)
    DEPTHS = (2, 2, 14, 2)

    def __init__(self):
        super().__init__()
        w = self.WIDTHS
        # stem: 1/4 resolution
        self.stem = nn.Sequential(ConvBN(3, w[0] // 2, 3, 2), nn.GELU(),
                                  ConvBN(w[0] // 2, w[0], 3, 2))
        stages = []
        for i, (width, depth) in enumerate(zip(w, self.DEPTHS)):
            layers = []
            if i > 0:
                layers.append(RepViTDownsample(w[i - 1], width))
            # CHOICE: SE on every other block starting with the first block of
            # each stage (blocks 0, 2, 4, ...), RepViT's public pattern.  The
            # downsampling layer's pre-block has none.
            layers += [RepViTBlock(width, use_se=(j % 2 == 0)) for j in range(depth)]
            stages.append(nn.Sequential(*layers))
        # EdgeSAM reads the stride-16 feature after stage 4's downsampling
        # pre-block (still 192 ch, 64x64); forward() splits that layer so the
        # neck sees exactly that tensor. The cost is the same either way.
        self.stages = nn.ModuleList(stages)
        self.lateral16 = nn.Conv2d(w[2], EMBED_DIM, 1, bias=False)
        self.lateral32 = nn.Conv2d(w[3], EMBED_DIM, 1, bias=False)
        self.up = Upsample2x()
        self.neck = nn.Sequential(
            nn.Conv2d(EMBED_DIM, EMBED_DIM, 1, bias=False),
            LayerNorm2d(EMBED_DIM),
            nn.Conv2d(EMBED_DIM, EMBED_DIM, 3, padding=1, bias=False),
            LayerNorm2d(EMBED_DIM),
        )

    def forward(self, image):
        x = self.stem(image)
        x = self.stages[0](x)
        x = self.stages[1](x)
        x = self.stages[2](x)
        ds = self.stages[3][0]
        x16 = ds.pre_block(x)  # stride-16 feature, 192 ch, 64x64
        x = ds.ffn(ds.pw(ds.dw(x16)))
        for blk in list(self.stages[3])[1:]:
            x = blk(x)  # stride-32 feature, 384 ch, 32x32
        fused = self.lateral16(x16) + self.up(self.lateral32(x))
        return self.neck(fused)


class UnfoldedRepDW(nn.Module):
    """RepViT's token mixer as the published EdgeSAM export has it: BatchNorm folded into
    each conv, but the 3x3 and 1x1 depthwise branches and the identity still summed in the
    graph (two Conv and two Add nodes instead of one Conv)."""

    def __init__(self, mixer: RepDWConv):
        super().__init__()
        self.dw3 = mixer.dw3.fused()
        self.dw1 = mixer.dw1.fused()

    def forward(self, x):
        return self.dw3(x) + self.dw1(x) + x


def reparameterize(module: nn.Module, fold_branches: bool = True) -> nn.Module:
    """Fold every BatchNorm into its conv (in place). With ``fold_branches`` each RepDWConv
    also becomes one 3x3 depthwise conv (the fully re-parameterised form); without, its
    branches stay parallel, as in the published export (UnfoldedRepDW)."""
    for name, child in list(module.named_children()):
        if isinstance(child, RepDWConv):
            setattr(module, name, child.fused() if fold_branches else UnfoldedRepDW(child))
        elif isinstance(child, ConvBN):
            setattr(module, name, child.fused())
        else:
            reparameterize(child, fold_branches)
    return module


# --------------------------------------------------------------------------
# decoder: SAM's prompt encoder (points only) + mask decoder
# --------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head attention with an optional internal width reduction."""

    def __init__(self, dim, heads, downsample_rate=1):
        super().__init__()
        self.heads = heads
        self.inner = dim // downsample_rate
        self.q_proj = nn.Linear(dim, self.inner)
        self.k_proj = nn.Linear(dim, self.inner)
        self.v_proj = nn.Linear(dim, self.inner)
        self.out_proj = nn.Linear(self.inner, dim)
        self.scale = 1.0 / math.sqrt(self.inner // heads)
        self.qk = MatMul()
        self.av = MatMul()

    def _split(self, x):
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, q, k, v):
        q = self._split(self.q_proj(q))
        k = self._split(self.k_proj(k))
        v = self._split(self.v_proj(v))
        attn = self.qk(q, k.transpose(2, 3)) * self.scale
        out = self.av(torch.softmax(attn, dim=-1), v)
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


class MLPBlock(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.lin2(F.relu(self.lin1(x)))


class TwoWayBlock(nn.Module):
    """Token self-attention, token->image cross-attention, MLP,
    image->token cross-attention; post-norm, with positional encodings added
    to queries/keys at every attention (SAM's two-way block)."""

    def __init__(self, dim, heads, mlp_dim, skip_first_pe):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_t2i = Attention(dim, heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.cross_i2t = Attention(dim, heads, downsample_rate=2)
        self.norm4 = nn.LayerNorm(dim)
        self.skip_first_pe = skip_first_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_t2i(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_i2t(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth=2, dim=256, heads=8, mlp_dim=2048):
        super().__init__()
        self.layers = nn.ModuleList(
            [TwoWayBlock(dim, heads, mlp_dim, skip_first_pe=(i == 0)) for i in range(depth)]
        )
        self.final_attn = Attention(dim, heads, downsample_rate=2)
        self.norm_final = nn.LayerNorm(dim)

    def forward(self, image, image_pe, tokens):
        keys = image.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        queries = self.norm_final(queries + self.final_attn(q, k, keys))
        return queries, keys


class MLP(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class FaithfulDecoder(nn.Module):
    """Prompt encoder (points/box corners only, no mask input) + mask decoder,
    wrapped with the published export's input/output convention:
    (image_embeddings [1,256,64,64], point_coords [1,N,2], point_labels [1,N])
    -> (scores [1,4] = stability scores, masks [1,4,256,256] logits)."""

    NUM_MASK_TOKENS = 4  # 1 single-output + 3 multimask outputs
    NUM_POINT_EMBEDDINGS = 4  # labels 0 neg, 1 pos, 2 box corner 1, 3 box corner 2

    def __init__(self):
        super().__init__()
        d = EMBED_DIM
        # --- prompt encoder ---
        # Random Fourier features: a fixed (not learned) 2 x 128 Gaussian matrix.
        self.register_buffer("pe_gaussian", torch.randn(2, d // 2))
        self.point_embeddings = nn.ParameterList(
            [nn.Parameter(torch.randn(d)) for _ in range(self.NUM_POINT_EMBEDDINGS)]
        )
        self.not_a_point = nn.Parameter(torch.randn(d))
        self.no_mask = nn.Parameter(torch.randn(d))
        # CHOICE: SAM's mask-prompt downscaling convs (~5 k params) are left
        # out: EdgeSAM's export has no mask input, so they are never run.
        # The dense positional encoding of the 64x64 grid is computed inside
        # the graph on every call (grid -> matmul -> sin/cos over 64x64x128),
        # as in the published export: its file (15.9 MB) has room for the
        # decoder's weights but not for a 4 MB constant 256x64x64 encoding.
        # --- mask decoder ---
        self.iou_token = nn.Parameter(torch.randn(1, d))
        self.mask_tokens = nn.Parameter(torch.randn(self.NUM_MASK_TOKENS, d))
        self.transformer = TwoWayTransformer()
        self.up1 = nn.ConvTranspose2d(d, d // 4, 2, stride=2)
        self.up_norm = LayerNorm2d(d // 4)
        self.up2 = nn.ConvTranspose2d(d // 4, d // 8, 2, stride=2)
        self.hypernets = nn.ModuleList(MLP([d, d, d, d // 8]) for _ in range(self.NUM_MASK_TOKENS))
        # Random default init gives mask logits of std ~0.1, i.e. no pixel
        # above 0 and stability scores of 0; scale the last hypernetwork layer
        # so that the random logits spread over roughly +-10 and the masks
        # have a foreground (keeps post-processing work realistic).
        with torch.no_grad():
            for net in self.hypernets:
                net.layers[-1].weight.mul_(LOGIT_GAIN)
        # The IoU head exists in the model (and in the parameter count), but
        # like the published stability-score export its output is not used,
        # so the exporter drops it from the ONNX graph.
        self.iou_head = MLP([d, 256, 256, self.NUM_MASK_TOKENS])
        self.mask_product = MatMul()

    def _fourier(self, coords01: torch.Tensor) -> torch.Tensor:
        """coords in [0,1] (..., 2) -> (..., 256) sin/cos features."""
        c = 2.0 * coords01 - 1.0
        c = 2.0 * math.pi * (c @ self.pe_gaussian)
        return torch.cat([torch.sin(c), torch.cos(c)], dim=-1)

    def dense_pe(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """Fourier encoding of the 64x64 grid's cell centres -> [1,256,64,64].
        The grid is derived from the input's shape, so the exporter keeps the
        computation in the graph instead of folding it into a constant."""
        grid = torch.ones_like(image_embeddings[0, 0])  # 64,64
        y = (grid.cumsum(0) - 0.5) / EMBED_HW
        x = (grid.cumsum(1) - 0.5) / EMBED_HW
        pe = self._fourier(torch.stack([x, y], dim=-1))  # 64,64,256
        return pe.permute(2, 0, 1).unsqueeze(0)

    def embed_points(self, coords, labels):
        # As the published export: pixel centres, normalised by the 1024 frame.
        coords = (coords + 0.5) / IMG_SIZE
        emb = self._fourier(coords)  # 1,N,256
        lab = labels.unsqueeze(-1)  # 1,N,1 (broadcast over channels)
        # Label handling by masks from label comparisons (no control flow):
        # -1 -> no positional encoding, only the not-a-point embedding;
        # 0..3 -> positional encoding + that label's learned embedding.
        pad = (lab == -1).to(emb.dtype)
        emb = emb * (1.0 - pad) + self.not_a_point * pad
        for i, e in enumerate(self.point_embeddings):
            emb = emb + e * (lab == i).to(emb.dtype)
        return emb

    def forward(self, image_embeddings, point_coords, point_labels):
        sparse = self.embed_points(point_coords, point_labels)
        tokens = torch.cat([self.iou_token, self.mask_tokens], dim=0).unsqueeze(0)
        tokens = torch.cat([tokens, sparse], dim=1)
        src = image_embeddings + self.no_mask.reshape(1, -1, 1, 1)
        hs, src = self.transformer(src, self.dense_pe(image_embeddings), tokens)
        mask_tokens_out = hs[:, 1 : 1 + self.NUM_MASK_TOKENS, :]
        src = src.transpose(1, 2).reshape(1, EMBED_DIM, EMBED_HW, EMBED_HW)
        up = F.gelu(self.up_norm(self.up1(src)))
        up = F.gelu(self.up2(up))  # 1,32,256,256
        hyper = torch.stack(
            [net(mask_tokens_out[:, i, :]) for i, net in enumerate(self.hypernets)], dim=1
        )  # 1,4,32
        masks = self.mask_product(hyper, up.flatten(2)).reshape(
            1, self.NUM_MASK_TOKENS, MASK_HW, MASK_HW
        )
        self._iou_pred = self.iou_head(hs[:, 0, :])  # unused in the export
        # Stability score with offset 1.0: |logit > 1| / |logit > -1|.
        inter = (masks > 1.0).flatten(2).sum(-1).to(torch.float32)
        union = (masks > -1.0).flatten(2).sum(-1).to(torch.float32)
        scores = inter / union
        return scores, masks


# --------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------
def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def count_macs(model: nn.Module, *inputs) -> tuple[int, dict[str, int]]:
    per_kind: dict[str, int] = {"conv": 0, "convtranspose": 0, "linear": 0, "matmul": 0}

    def conv_hook(mod, inp, out):
        kh, kw = mod.kernel_size
        per_kind["conv"] += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def convt_hook(mod, inp, out):
        kh, kw = mod.kernel_size
        per_kind["convtranspose"] += inp[0].numel() * (mod.out_channels // mod.groups) * kh * kw

    def linear_hook(mod, inp, out):
        per_kind["linear"] += out.numel() * mod.in_features

    def matmul_hook(mod, inp, out):
        a, b = inp
        per_kind["matmul"] += out.numel() * a.shape[-1]

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.ConvTranspose2d):
            handles.append(mod.register_forward_hook(convt_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
        elif isinstance(mod, MatMul):
            handles.append(mod.register_forward_hook(matmul_hook))
    with torch.no_grad():
        model(*inputs)
    for h in handles:
        h.remove()
    return sum(per_kind.values()), per_kind


# --------------------------------------------------------------------------
# ONNX export and checks
# --------------------------------------------------------------------------
def export_encoder(encoder, path: Path) -> Path:
    # torch warns that the TorchScript-based exporter (dynamo=False) is
    # deprecated; it is used on purpose, like the published export.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = torch.randn(1, 3, IMG_SIZE, IMG_SIZE)
    torch.onnx.export(
        encoder, (image,), str(path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["image_embeddings"],
    )
    return path


def export(encoder, decoder, out_dir: Path) -> tuple[Path, Path]:
    enc_path, dec_path = out_dir / ENCODER_FILE, out_dir / DECODER_FILE
    export_encoder(encoder, enc_path)
    emb = torch.randn(1, EMBED_DIM, EMBED_HW, EMBED_HW)
    coords = torch.randint(0, IMG_SIZE, (1, 5, 2)).float()
    labels = torch.tensor([[1.0, 0.0, 2.0, 3.0, -1.0]])
    torch.onnx.export(
        decoder, (emb, coords, labels), str(dec_path), dynamo=False, opset_version=17,
        input_names=["image_embeddings", "point_coords", "point_labels"],
        output_names=["scores", "masks"],
        dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
    )
    return enc_path, dec_path


def _io(values):
    return [(v.name, v.type, list(v.shape)) for v in values]


def _stats(seconds, digits) -> str:
    ms = np.asarray(seconds) * 1e3
    p25, med, p75 = np.percentile(ms, [25, 50, 75])
    return (f"median {med:.{digits}f} ms (min {ms.min():.{digits}f}, quartiles "
            f"{p25:.{digits}f}-{p75:.{digits}f}, max {ms.max():.{digits}f})")


def check_and_time(enc_path, dec_path, encoder, decoder, runs_enc, runs_dec) -> list[str]:
    import onnx
    import onnxruntime as ort

    problems: list[str] = []
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    enc = ort.InferenceSession(str(enc_path), so, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(dec_path), so, providers=["CPUExecutionProvider"])

    want_enc_in = [("image", "tensor(float)", [1, 3, 1024, 1024])]
    want_enc_out = [("image_embeddings", "tensor(float)", [1, 256, 64, 64])]
    got_in, got_out = _io(enc.get_inputs()), _io(enc.get_outputs())
    print(f"encoder inputs  {got_in}\nencoder outputs {got_out}")
    if got_in != want_enc_in or got_out != want_enc_out:
        problems.append(f"encoder signature {got_in} -> {got_out}")

    got_in, got_out = _io(dec.get_inputs()), _io(dec.get_outputs())
    print(f"decoder inputs  {got_in}\ndecoder outputs {got_out}")
    names_ok = [n for n, _, _ in got_in] == ["image_embeddings", "point_coords", "point_labels"]
    names_ok &= [n for n, _, _ in got_out] == ["scores", "masks"]
    types_ok = all(t == "tensor(float)" for _, t, _ in got_in + got_out)
    shp = {n: s for n, _, s in got_in + got_out}
    shapes_ok = (
        shp.get("image_embeddings") == [1, 256, 64, 64]
        and len(shp.get("point_coords", [])) == 3
        and shp["point_coords"][0] == 1 and isinstance(shp["point_coords"][1], str)
        and shp["point_coords"][2] == 2
        and len(shp.get("point_labels", [])) == 2
        and shp["point_labels"][0] == 1 and isinstance(shp["point_labels"][1], str)
        and shp.get("scores") == [1, 4]
        and shp.get("masks") == [1, 4, 256, 256]
    )
    if not (names_ok and types_ok and shapes_ok):
        problems.append(f"decoder signature {got_in} -> {got_out}")

    graph = onnx.load(str(dec_path), load_external_data=False).graph
    producer = [n.op_type for n in graph.node if "scores" in n.output]
    print(f"node producing 'scores': {producer}")
    if producer != ["Div"]:
        problems.append(f"'scores' is produced by {producer}, expected a Div (stability score)")

    rng = np.random.default_rng(SEED)
    image = rng.standard_normal((1, 3, 1024, 1024), dtype=np.float32)
    (emb,) = enc.run(None, {"image": image})
    with torch.no_grad():
        ref = encoder(torch.from_numpy(image)).numpy()
    print(f"encoder: finite={np.isfinite(emb).all()}, std={emb.std():.3f}, "
          f"max |ort - torch|={np.abs(emb - ref).max():.2e}")
    if not np.isfinite(emb).all():
        problems.append("encoder output not finite")
    if not np.allclose(emb, ref, atol=1e-3, rtol=1e-3):
        problems.append("encoder ONNX output differs from PyTorch")

    prompts = {
        "1 click + padding point": (np.array([[[400.0, 300.0], [0.0, 0.0]]]),
                                    np.array([[1.0, -1.0]])),
        "box (2 corners)": (np.array([[[100.0, 120.0], [700.0, 650.0]]]), np.array([[2.0, 3.0]])),
        "box + 2 clicks": (
            np.array([[[100.0, 120.0], [700.0, 650.0], [300.0, 300.0], [500.0, 200.0]]]),
            np.array([[2.0, 3.0, 1.0, 0.0]]),
        ),
        "3 clicks + padding": (
            np.array([[[10.0, 20.0], [500.0, 600.0], [900.0, 100.0], [0.0, 0.0]]]),
            np.array([[1.0, 1.0, 0.0, -1.0]]),
        ),
    }
    for name, (c, lab) in prompts.items():
        feed = {"image_embeddings": emb, "point_coords": c.astype(np.float32),
                "point_labels": lab.astype(np.float32)}
        scores, masks = dec.run(None, feed)
        with torch.no_grad():
            rs, rm = decoder(*(torch.from_numpy(feed[k]) for k in
                               ("image_embeddings", "point_coords", "point_labels")))
        ok = np.isfinite(scores).all() and np.isfinite(masks).all()
        close = np.allclose(masks, rm.numpy(), atol=1e-2, rtol=1e-3)
        print(f"decoder [{name}]: scores={[round(float(v), 3) for v in scores[0]]} finite={ok} "
              f"masks std={masks.std():.2f} matches torch={close}")
        if not ok:
            problems.append(f"decoder output not finite for {name}")
        if not close:
            problems.append(f"decoder ONNX output differs from PyTorch for {name}")

    # timing (other processes on this 2-core machine inflate the medians: the
    # load average is printed so a noisy measurement can be recognised)
    if hasattr(os, "getloadavg"):
        print("load average before timing: %.2f %.2f %.2f" % os.getloadavg())
    enc.run(None, {"image": image})
    t_enc = []
    for _ in range(runs_enc):
        t0 = time.perf_counter()
        enc.run(None, {"image": image})
        t_enc.append(time.perf_counter() - t0)
    print(f"encoder over {runs_enc} runs: {_stats(t_enc, 0)}")
    for name in ("1 click + padding point", "box + 2 clicks"):
        c, lab = prompts[name]
        feed = {"image_embeddings": emb, "point_coords": c.astype(np.float32),
                "point_labels": lab.astype(np.float32)}
        for _ in range(3):
            dec.run(None, feed)
        t_dec = []
        for _ in range(runs_dec):
            t0 = time.perf_counter()
            dec.run(None, feed)
            t_dec.append(time.perf_counter() - t0)
        print(f"decoder [{name}, N={c.shape[1]}] over {runs_dec} runs: {_stats(t_dec, 1)}")
    print(f"onnxruntime {ort.__version__}, intra_op_num_threads=2, CPUExecutionProvider")
    return problems


def count_nodes(path: Path) -> dict[str, int]:
    """Number of nodes per operator type in an ONNX file."""
    import onnx

    counts: dict[str, int] = {}
    for n in onnx.load(str(path), load_external_data=False).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def compare_encoder_forms(unfolded_path: Path, folded_path: Path, runs: int) -> list[str]:
    """Node counts, output agreement and interleaved raw timing of the two encoder forms."""
    import onnxruntime as ort

    problems = []
    for label, path in (("unfolded (published structure)", unfolded_path),
                        ("folded", folded_path)):
        c = count_nodes(path)
        print(f"encoder {label}: {c.get('Conv', 0)} Conv, {c.get('Add', 0)} Add, "
              f"{sum(c.values())} nodes, {path.stat().st_size / 1e6:.2f} MB")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    sessions = {name: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
                for name, p in (("unfolded", unfolded_path), ("folded", folded_path))}
    image = np.random.default_rng(SEED + 1).standard_normal((1, 3, IMG_SIZE, IMG_SIZE),
                                                            dtype=np.float32)
    out = {k: s.run(None, {"image": image})[0] for k, s in sessions.items()}
    diff = float(np.abs(out["unfolded"] - out["folded"]).max())
    scale = float(np.abs(out["folded"]).max())
    print(f"encoder forms agree: max |unfolded - folded| = {diff:.2e} "
          f"(outputs up to {scale:.1f}; float32 rounding)")
    if not diff <= 1e-4 * max(scale, 1.0):
        problems.append(f"the two encoder forms differ by {diff:.2e}")
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for i in range(runs):  # interleaved, the order alternating, so load drifts hit both
        for k in (list(sessions) if i % 2 == 0 else list(sessions)[::-1]):
            t0 = time.perf_counter()
            sessions[k].run(None, {"image": image})
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    if hasattr(os, "getloadavg"):
        print("load average after timing: %.2f %.2f %.2f" % os.getloadavg())
    for k, v in times.items():
        print(f"encoder {k}, {runs} interleaved runs: {_stats(v, 0)}")
    paired = float(np.median(np.divide(times["unfolded"], times["folded"])))
    print(f"encoder unfolded / folded: {med['unfolded'] / med['folded']:.3f} (ratio of the "
          f"medians), {paired:.3f} (median of the {runs} paired ratios)")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--runs-encoder", type=int, default=10)
    ap.add_argument("--runs-decoder", type=int, default=50)
    ap.add_argument("--no-export", action="store_true", help="only count params and MACs")
    ap.add_argument("--folded", action="store_true",
                    help=f"also write {ENCODER_FOLDED_FILE}, the encoder with RepViT's branches "
                         "folded, and compare the two forms (node counts, outputs, timing)")
    ap.add_argument("--runs-forms", type=int, default=15,
                    help="interleaved runs of each encoder form with --folded")
    args = ap.parse_args(argv)

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    encoder = FaithfulEncoder().eval()
    decoder = FaithfulDecoder().eval()

    enc_params_train = count_params(encoder)
    probe = torch.randn(1, 3, 256, 256)
    folded = copy.deepcopy(encoder)
    with torch.no_grad():
        before = encoder(probe)
        # The published export folds BatchNorm but keeps the parallel depthwise branches.
        reparameterize(encoder, fold_branches=False)
        reparameterize(folded, fold_branches=True)
        fuse_err = max((before - m(probe)).abs().max().item() for m in (encoder, folded))
    enc_params_infer = count_params(encoder)
    print(f"re-parameterisation check: max |training form - inference forms| = {fuse_err:.1e}")
    dec_params = count_params(decoder)
    dec_params_exported = dec_params - count_params(decoder.iou_head)
    total = enc_params_train + dec_params

    enc_macs, enc_kinds = count_macs(folded, torch.zeros(1, 3, IMG_SIZE, IMG_SIZE))
    unfolded_macs, _ = count_macs(encoder, torch.zeros(1, 3, IMG_SIZE, IMG_SIZE))
    dec_macs, dec_kinds = count_macs(
        decoder,
        torch.zeros(1, EMBED_DIM, EMBED_HW, EMBED_HW),
        torch.tensor([[[400.0, 300.0], [0.0, 0.0]]]),
        torch.tensor([[1.0, -1.0]]),
    )
    print(f"torch {torch.__version__}, seed {SEED}")
    print(f"encoder params: {enc_params_train / 1e6:.3f} M (training form, with BN); "
          f"{enc_params_infer / 1e6:.3f} M as exported (BN folded, branches unfolded), "
          f"{count_params(folded) / 1e6:.3f} M with the branches folded")
    print(f"decoder params: {dec_params / 1e6:.3f} M "
          f"({dec_params_exported / 1e6:.3f} M without the unused IoU head)")
    print(f"total params:   {total / 1e6:.3f} M (target {TARGET_TOTAL_PARAMS / 1e6:.1f} M "
          f"+-{TOTAL_PARAMS_TOL:.0%})")
    print(f"encoder MACs @1024x1024: {enc_macs / 1e9:.2f} G {enc_kinds} "
          f"(target {TARGET_ENCODER_MACS / 1e9:.0f} G +-{ENCODER_MACS_TOL:.0%}; folded form; "
          f"{unfolded_macs / 1e9:.3f} G as exported, with the 1x1 branches)")
    print(f"decoder MACs, 2 points:  {dec_macs / 1e9:.2f} G {dec_kinds}")
    print(f"total MACs:              {(enc_macs + dec_macs) / 1e9:.2f} G")

    problems = []
    if not fuse_err < 1e-3:
        problems.append(f"re-parameterised encoder differs from the training form by {fuse_err}")
    if abs(total / TARGET_TOTAL_PARAMS - 1) > TOTAL_PARAMS_TOL:
        problems.append(f"total params {total} outside {TOTAL_PARAMS_TOL:.0%} of "
                        f"{TARGET_TOTAL_PARAMS:.0f}")
    if abs(enc_macs / TARGET_ENCODER_MACS - 1) > ENCODER_MACS_TOL:
        problems.append(f"encoder MACs {enc_macs} outside {ENCODER_MACS_TOL:.0%} of "
                        f"{TARGET_ENCODER_MACS:.0f}")

    if not args.no_export:
        enc_path, dec_path = export(encoder, decoder, args.out_dir)
        for p in (enc_path, dec_path):
            print(f"wrote {p} ({p.stat().st_size / 1e6:.1f} MB)")
        problems += check_and_time(enc_path, dec_path, encoder, decoder,
                                   args.runs_encoder, args.runs_decoder)
        if args.folded:
            folded_path = export_encoder(folded, args.out_dir / ENCODER_FOLDED_FILE)
            print(f"wrote {folded_path} ({folded_path.stat().st_size / 1e6:.1f} MB)")
            problems += compare_encoder_forms(enc_path, folded_path, args.runs_forms)
        else:
            c = count_nodes(enc_path)
            print(f"encoder: {c.get('Conv', 0)} Conv, {c.get('Add', 0)} Add nodes "
                  "(RepViT's branches unfolded, as published; --folded compares)")

    if problems:
        print("FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
