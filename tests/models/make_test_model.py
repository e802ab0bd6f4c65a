"""Generate the small *test double* ONNX models used by the test-suite.

These models are NOT EdgeSAM. They honour the exact input/output contract of the
published EdgeSAM ONNX files (names, dtypes, shapes, dynamic point count) but
compute a simple, hand-written, fully deterministic segmentation so that tests of
the plugin's pre-processing, prompt handling, mask choice and post-processing can
assert real pixel positions. See ``tests/models/README.md``.

Regenerate with::

    python tests/models/make_test_model.py

Only ``onnx`` and ``numpy`` are needed (no PyTorch). The output is byte-for-byte
deterministic.

Encoder (``test_encoder.onnx``)
    ``image`` float32 [1,3,1024,1024] -> ReduceMean over channels (keepdims)
    -> SpaceToDepth(16) -> ``image_embeddings`` float32 [1,256,64,64].
    The embedding is an exact rearrangement of the channel-mean image.

Decoder (``test_decoder.onnx`` / ``test_decoder_iou.onnx``), all in the 256x256
mask grid (grid pixel j covers 1024-frame pixels 4j..4j+3):

1. ``g = DepthToSpace(image_embeddings, 16, DCR)`` (exact inverse of the
   encoder) -> [1,1,1024,1024]; ``G = AveragePool 4x4 stride 4`` -> [256,256].
2. Like the real graph, ``(point_coords + 0.5) / 1024``; grid position
   ``p = that * 256 - 0.5`` (x = column, y = row); squared distances ``d2`` from
   every point to every grid pixel -> [N,256,256].
3. Point term (positive clicks, label 1): reference brightness ``v`` = mean over
   positive points of a Gaussian-weighted (sigma = SIGMA_REF grid px) local mean of
   G at the point. ``dmin`` = distance to the nearest positive point
   (NO_POINT_DIST if there is none).
   ``point_k = A * (TOL[k] - |G - v|) - B * relu(dmin - RADII[k])``.
4. Box term (present iff any label == 2): corners = mean position of the label-2
   points (top-left) and of the label-3 points (bottom-right); hard inside-box
   indicator (a reversed box is empty); ``m`` = mean of G inside the box;
   ``box_k = A * (G - m - BOX_OFFSETS[k])`` inside, ``OUTSIDE_BOX`` outside.
   With a box, the box term replaces the point term and positive clicks add
   ``POS_BUMP * exp(-d2 / (2 BUMP_R^2))``.
5. Negative clicks (label 0) always subtract ``NEG_BUMP * exp(-d2 / (2 BUMP_R^2))``.
6. Soft saturation ``logits = SAT * tanh(raw / SAT)``.
7. Padding stand-in: with no box and no label -1 point, ``PAD_PENALTY`` is
   subtracted from all logits (after the saturation, so the difference is exact).
   Label -1 points otherwise have no effect.
8. ``scores``: ``test_decoder.onnx``: stability score per mask,
   count(logit > 1) / count(logit > -1) over the 256x256 logits, final node a Div
   (0/0 -> NaN). ``test_decoder_iou.onnx``: a fixed random Gemm of pooled logit
   features (meaningless, like an undistilled IoU head).

Intermediate tensors ``grey_1024`` ([1,1,1024,1024]) and ``grey_256`` ([256,256])
are named so that tests can expose them as extra outputs.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

# ---- decoder constants (units: G in normalised grey units, distances in grid px)
A = 8.0  # logit per normalised grey unit
B = 1.0  # logit per grid px beyond the radius
TOL = (0.25, 0.4, 0.6, 0.9)  # brightness tolerances of the 4 point masks
RADII = (12.0, 24.0, 48.0, 96.0)  # reach of the 4 point masks from the nearest click
SIGMA_REF = 1.5  # Gaussian sigma of the local mean at a click
NO_POINT_DIST = 1.0e4  # dmin when there is no positive click
BOX_OFFSETS = (0.0, -0.25, 0.25, 0.5)  # box mask thresholds relative to box mean
OUTSIDE_BOX = -40.0  # raw; about -19.3 after the saturation
BUMP_R = 8.0  # radius of the click bumps
POS_BUMP = 10.0  # positive-click raise (box mode only)
NEG_BUMP = 30.0  # negative-click suppression
SAT = 20.0  # logits = SAT * tanh(raw / SAT)
PAD_PENALTY = 3.0  # subtracted with no box and no label -1 point
IOU_SEED = 0

GRID = 256
FRAME = 1024
BLOCK = 16

DOC = (
    "TEST DOUBLE for napari-edgesam tests - NOT EdgeSAM. Same I/O contract as the "
    "published EdgeSAM ONNX files; hand-written deterministic computation. "
    "Regenerate with: python tests/models/make_test_model.py"
)


class _Builder:
    """Tiny helper that names tensors and collects nodes/initialisers."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, value, name: str | None = None, dtype=np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        if name is None:
            self._n += 1
            name = f"c{self._n}"
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        if out is None:
            self._n += 1
            out = f"t{self._n}_{op_type.lower()}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


def _finish(graph: onnx.GraphProto, name: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="napari-edgesam-test-double",
        producer_version="1",
        doc_string=DOC,
    )
    model.ir_version = IR_VERSION
    model.model_version = 1
    helper.set_model_props(
        model, {"test_double": "true", "not_edgesam": "true", "model": name}
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def build_encoder() -> onnx.ModelProto:
    b = _Builder()
    grey = b.op("ReduceMean", ["image"], "grey_1024_enc", axes=[1], keepdims=1)
    b.op("SpaceToDepth", [grey], "image_embeddings", blocksize=BLOCK)
    graph = helper.make_graph(
        b.nodes,
        "edgesam_test_double_encoder",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, FRAME, FRAME])],
        [
            helper.make_tensor_value_info(
                "image_embeddings", TensorProto.FLOAT, [1, 256, 64, 64]
            )
        ],
        initializer=b.inits,
        doc_string=DOC,
    )
    return _finish(graph, "encoder")


def build_decoder(scores: str = "stability") -> onnx.ModelProto:
    if scores not in ("stability", "iou"):
        raise ValueError(scores)
    b = _Builder()
    f = b.const  # shorthand

    def i64(v) -> str:
        return f(v, dtype=np.int64)

    def take(x: str, start: int, axis: int) -> str:  # x[..., start:start+1, ...]
        return b.op("Slice", [x, i64([start]), i64([start + 1]), i64([axis])])

    # 1. grey image in the 256 grid
    g = b.op("DepthToSpace", ["image_embeddings"], "grey_1024", blocksize=BLOCK, mode="DCR")
    gp = b.op("AveragePool", [g], kernel_shape=[4, 4], strides=[4, 4])
    G = b.op("Reshape", [gp, i64([GRID, GRID])], "grey_256")  # [256,256]

    # 2. point positions and distances
    cn = b.op("Div", [b.op("Add", ["point_coords", f(0.5)]), f(float(FRAME))])
    p = b.op("Sub", [b.op("Mul", [cn, f(float(GRID))]), f(0.5)])  # [1,N,2]
    p = b.op("Reshape", [p, i64([-1, 1, 2])])  # [N,1,2]
    px = take(p, 0, axis=2)  # [N,1,1] x = column
    py = take(p, 1, axis=2)  # [N,1,1] y = row
    idx = f(np.arange(GRID, dtype=np.float32).reshape(1, 1, GRID), "grid_index")
    dx = b.op("Sub", [idx, px])  # [N,1,256] column offsets
    dy = b.op("Sub", [idx, py])  # [N,1,256] row offsets
    dx2 = b.op("Mul", [dx, dx])
    dy2 = b.op("Mul", [dy, dy])
    dy2t = b.op("Transpose", [dy2], perm=[0, 2, 1])  # [N,256,1]
    d2 = b.op("Add", [dy2t, dx2], "dist2")  # [N,256,256]

    labels = b.op("Reshape", ["point_labels", i64([-1, 1, 1])])  # [N,1,1]

    def is_label(v: float) -> str:
        return b.op("Cast", [b.op("Equal", [labels, f(v)])], to=TensorProto.FLOAT)

    w_pos, w_neg, w_tl, w_br, w_pad = (is_label(v) for v in (1.0, 0.0, 2.0, 3.0, -1.0))

    def count(w: str) -> str:  # -> [1,1,1]
        return b.op("ReduceSum", [w, i64([0])], keepdims=1)

    def safe_mean(w: str, x: str) -> str:  # mean of x over points with weight w -> [1,1,1]
        num = b.op("ReduceSum", [b.op("Mul", [w, x]), i64([0])], keepdims=1)
        return b.op("Div", [num, b.op("Max", [count(w), f(1.0)])])

    def present(w: str) -> str:  # 1.0 if any point has weight w -> [1,1,1]
        return b.op("Cast", [b.op("Greater", [count(w), f(0.0)])], to=TensorProto.FLOAT)

    has_box = present(w_tl)
    has_pad = present(w_pad)
    not_box = b.op("Sub", [f(1.0), has_box])

    # 3. point term
    k = -1.0 / (2.0 * SIGMA_REF**2)
    wx = b.op("Exp", [b.op("Mul", [dx2, f(k)])])  # [N,1,256]
    wy = b.op("Exp", [b.op("Mul", [dy2, f(k)])])  # [N,1,256]
    wy_g = b.op("MatMul", [wy, G])  # [N,1,256] = sum_r wy[r] G[r, c]
    num = b.op("ReduceSum", [b.op("Mul", [wy_g, wx]), i64([1, 2])], keepdims=1)
    den = b.op(
        "Mul",
        [
            b.op("ReduceSum", [wx, i64([1, 2])], keepdims=1),
            b.op("ReduceSum", [wy, i64([1, 2])], keepdims=1),
        ],
    )
    local = b.op("Div", [num, den], "local_grey")  # [N,1,1]
    v = safe_mean(w_pos, local)  # [1,1,1]
    absdiff = b.op("Abs", [b.op("Sub", [G, v])])  # [1,256,256] via broadcast
    tol = f(np.array(TOL, np.float32).reshape(4, 1, 1), "tolerances")
    radii = f(np.array(RADII, np.float32).reshape(4, 1, 1), "radii")
    inten = b.op("Mul", [b.op("Sub", [tol, absdiff]), f(A)])  # [4,256,256]
    far = b.op("Mul", [b.op("Sub", [f(1.0), w_pos]), f(NO_POINT_DIST**2)])
    d2pos = b.op("Add", [d2, far])
    dmin2 = b.op("ReduceMin", [d2pos], axes=[0], keepdims=1)  # [1,256,256]
    dmin = b.op("Sqrt", [dmin2], "dist_nearest_positive")
    pen = b.op("Mul", [b.op("Relu", [b.op("Sub", [dmin, radii])]), f(B)])  # [4,256,256]
    point_term = b.op("Sub", [inten, pen], "point_term")

    # 4. box term
    x0 = safe_mean(w_tl, px)
    y0 = safe_mean(w_tl, py)
    x1 = safe_mean(w_br, px)
    y1 = safe_mean(w_br, py)

    def between(lo: str, hi: str) -> str:  # [1,1,256]
        ge = b.op("GreaterOrEqual", [idx, lo])
        le = b.op("LessOrEqual", [idx, hi])
        return b.op("Cast", [b.op("And", [ge, le])], to=TensorProto.FLOAT)

    in_x = between(x0, x1)
    in_y = b.op("Transpose", [between(y0, y1)], perm=[0, 2, 1])  # [1,256,1]
    inside = b.op("Mul", [in_y, in_x], "inside_box")  # [1,256,256]
    all_axes = i64([0, 1, 2])
    g_in = b.op("ReduceSum", [b.op("Mul", [inside, G]), all_axes], keepdims=1)
    n_in = b.op("ReduceSum", [inside, all_axes], keepdims=1)
    m = b.op("Div", [g_in, b.op("Max", [n_in, f(1.0)])], "box_mean")
    offsets = f(np.array(BOX_OFFSETS, np.float32).reshape(4, 1, 1), "box_offsets")
    rel = b.op("Mul", [b.op("Sub", [b.op("Sub", [G, m]), offsets]), f(A)])  # [4,256,256]
    box_term = b.op(
        "Add",
        [
            b.op("Mul", [inside, rel]),
            b.op("Mul", [b.op("Sub", [f(1.0), inside]), f(OUTSIDE_BOX)]),
        ],
        "box_term",
    )

    # 5. click bumps: weighted sums over points via one MatMul
    bump = b.op("Exp", [b.op("Mul", [d2, f(-1.0 / (2.0 * BUMP_R**2))])])  # [N,256,256]
    bump_flat = b.op("Reshape", [bump, i64([-1, GRID * GRID])])  # [N,65536]
    wts = b.op("Concat", [w_pos, w_neg], axis=2)  # [N,1,2]
    wts = b.op("Reshape", [wts, i64([-1, 2])])  # [N,2]
    wts = b.op("Transpose", [wts], perm=[1, 0])  # [2,N]
    sums = b.op("MatMul", [wts, bump_flat])  # [2,65536]
    sums = b.op("Reshape", [sums, i64([2, GRID, GRID])])
    s_pos = take(sums, 0, axis=0)  # [1,256,256]
    s_neg = take(sums, 1, axis=0)

    raw = b.op(
        "Add",
        [
            b.op("Mul", [has_box, b.op("Add", [box_term, b.op("Mul", [s_pos, f(POS_BUMP)])])]),
            b.op("Mul", [not_box, point_term]),
        ],
    )
    raw = b.op("Sub", [raw, b.op("Mul", [s_neg, f(NEG_BUMP)])], "raw_logits")

    # 6. soft saturation, 7. padding stand-in
    sat = b.op("Mul", [b.op("Tanh", [b.op("Div", [raw, f(SAT)])]), f(SAT)])
    pad_pen = b.op(
        "Mul", [b.op("Mul", [not_box, b.op("Sub", [f(1.0), has_pad])]), f(PAD_PENALTY)]
    )
    logits = b.op("Sub", [sat, pad_pen])  # [4,256,256]
    masks = b.op("Reshape", [logits, i64([1, 4, GRID, GRID])], "masks")

    # 8. scores
    if scores == "stability":
        hw = i64([2, 3])

        def count_above(t: float) -> str:  # -> [1,4]
            above = b.op("Cast", [b.op("Greater", [masks, f(t)])], to=TensorProto.FLOAT)
            return b.op("ReduceSum", [above, hw], keepdims=0)

        hi = count_above(1.0)
        lo = count_above(-1.0)
        b.op("Div", [hi, lo], "scores")  # [1,4]; 0/0 -> NaN
    else:
        mean_logit = b.op("ReduceMean", [masks], axes=[2, 3], keepdims=0)  # [1,4]
        frac_fg = b.op(
            "ReduceMean",
            [b.op("Cast", [b.op("Greater", [masks, f(0.0)])], to=TensorProto.FLOAT)],
            axes=[2, 3],
            keepdims=0,
        )
        feats = b.op("Concat", [mean_logit, frac_fg], axis=1)  # [1,8]
        rng = np.random.default_rng(IOU_SEED)
        w = f(rng.normal(0.0, 0.1, size=(8, 4)).astype(np.float32), "iou_head_weight")
        bias = f(rng.normal(0.5, 0.05, size=(4,)).astype(np.float32), "iou_head_bias")
        b.op("Gemm", [feats, w, bias], "scores")

    graph = helper.make_graph(
        b.nodes,
        "edgesam_test_double_decoder" + ("_iou" if scores == "iou" else ""),
        [
            helper.make_tensor_value_info("image_embeddings", TensorProto.FLOAT, [1, 256, 64, 64]),
            helper.make_tensor_value_info("point_coords", TensorProto.FLOAT, [1, "num_points", 2]),
            helper.make_tensor_value_info("point_labels", TensorProto.FLOAT, [1, "num_points"]),
        ],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("masks", TensorProto.FLOAT, [1, 4, GRID, GRID]),
        ],
        initializer=b.inits,
        doc_string=DOC,
    )
    return _finish(graph, "decoder_iou" if scores == "iou" else "decoder")


def build_all() -> dict[str, onnx.ModelProto]:
    return {
        "test_encoder.onnx": build_encoder(),
        "test_decoder.onnx": build_decoder("stability"),
        "test_decoder_iou.onnx": build_decoder("iou"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, model in build_all().items():
        data = model.SerializeToString(deterministic=True)
        (args.out / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes sha256={hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
