"""Generate ``published_style_decoder.onnx``: a SMALL decoder exported in the published style.

NOT EdgeSAM, and not a segmentation model at all: random weights (fixed seed), masks are
meaningless. It exists because the prompt-batch rewrite
(``napari_edgesam.engine.optimize.prompt_batch``) is graph surgery on what PyTorch's
TorchScript exporter writes for SAM's prompt encoder and mask decoder, and the test double
(``test_decoder.onnx``) is hand-built: it has none of that structure. This file has it,
with small widths so that it is about a hundred kilobytes and runs in milliseconds:

- the decoder classes of ``benchmarks/make_faithful_model.py`` (imported, not copied):
  the Fourier point encoding with its label embeddings, the ``[1, 5, 256]``-style
  output-token constant concatenated with the prompt tokens, the embedding entering by an
  Add of the "no mask" embedding (not repeated per prompt), a two-way transformer of depth
  2, the 2x2 stride-2 transposed-convolution upscaling, the hypernetwork mask product and
  the in-graph stability scores (a ``Div``), exported with ``torch.onnx.export`` as
  ``make_faithful_model.py`` does (opset 17, dynamic ``num_points``); Reshape nodes with
  batch 1 written into their shape constants, as in the full-size export;
- the contract's signature: ``image_embeddings`` ``[1, 256, 64, 64]``, ``point_coords``
  ``[1, N, 2]``, ``point_labels`` ``[1, N]`` -> ``scores`` ``[1, 4]``, ``masks``
  ``[1, 4, 256, 256]``;
- the only departures: a 1x1 convolution takes the 256 embedding channels down to
  ``WIDTH`` (32) first, and the transformer has ``WIDTH`` channels, 4 heads and an MLP of
  64 (the full decoder: 256, 8, 2048).

Run with a Python that has torch, onnx and onnxruntime (CI never runs it; the file is
committed)::

    /tmp/bench-venv/bin/python tests/models/make_published_style_decoder.py

It checks the signature and that onnxruntime's output equals PyTorch's.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "benchmarks"))
import make_faithful_model as mfm  # noqa: E402  (the faithful decoder's classes)

OUT = HERE / "published_style_decoder.onnx"
WIDTH = 32
SEED = 0


@contextlib.contextmanager
def _width(dim: int):
    """make_faithful_model's decoder reads its width from the module constant EMBED_DIM."""
    old = mfm.EMBED_DIM
    mfm.EMBED_DIM = dim
    try:
        yield
    finally:
        mfm.EMBED_DIM = old


class SmallPublishedStyleDecoder(mfm.FaithfulDecoder):
    """``FaithfulDecoder`` at width ``WIDTH``, behind a 1x1 convolution from 256 channels."""

    def __init__(self):
        with _width(WIDTH):
            super().__init__()
        self.transformer = mfm.TwoWayTransformer(depth=2, dim=WIDTH, heads=4, mlp_dim=64)
        self.reduce = nn.Conv2d(mfm.EMBED_DIM, WIDTH, 1)

    def forward(self, image_embeddings, point_coords, point_labels):
        with _width(WIDTH):
            return super().forward(self.reduce(image_embeddings), point_coords, point_labels)


def main() -> None:
    import onnx
    import onnxruntime as ort

    torch.manual_seed(SEED)
    dec = SmallPublishedStyleDecoder().eval()
    emb = torch.randn(1, 256, 64, 64)
    coords = torch.randint(0, 1024, (1, 5, 2)).float()
    labels = torch.tensor([[1.0, 0.0, 2.0, 3.0, -1.0]])
    warnings.filterwarnings("ignore")
    torch.onnx.export(
        dec, (emb, coords, labels), str(OUT), dynamo=False, opset_version=17,
        input_names=["image_embeddings", "point_coords", "point_labels"],
        output_names=["scores", "masks"],
        dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
    )
    m = onnx.load(str(OUT))
    m.doc_string = ("TEST FIXTURE - NOT EdgeSAM: a small decoder with random weights exported "
                    "in the published style (tests/models/make_published_style_decoder.py)")
    onnx.helper.set_model_props(m, {"test_fixture": "true", "not_edgesam": "true"})
    onnx.save(m, str(OUT))
    s = ort.InferenceSession(str(OUT), providers=["CPUExecutionProvider"])
    print([(i.name, i.shape) for i in s.get_inputs()], [(o.name, o.shape) for o in s.get_outputs()])
    rng = np.random.default_rng(SEED)
    e = rng.standard_normal((1, 256, 64, 64), dtype=np.float32)
    c = np.array([[[400.0, 300.0], [0.0, 0.0]]], np.float32)
    lab = np.array([[1.0, -1.0]], np.float32)
    sc, mk = s.run(None, {"image_embeddings": e, "point_coords": c, "point_labels": lab})
    with torch.no_grad():
        rs, rm = dec(torch.from_numpy(e), torch.from_numpy(c), torch.from_numpy(lab))
    err = float(np.abs(mk - rm.numpy()).max())
    print(f"scores {sc}, masks {mk.shape}, max |ort - torch| {err:.2e}, "
          f"positive {np.mean(mk > 0):.2f}, size {OUT.stat().st_size} bytes, "
          f"{len(m.graph.node)} nodes")
    ops = [n.op_type for n in m.graph.node]
    print({k: ops.count(k) for k in ("Reshape", "Concat", "MatMul", "ConvTranspose", "Div")})
    if err > 1e-3 or mk.shape != (1, 4, 256, 256) or sc.shape != (1, 4):
        raise SystemExit("the export does not match PyTorch or the contract")


if __name__ == "__main__":
    main()
