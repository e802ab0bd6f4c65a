"""The first click on a slice costs what later clicks cost (issue 17, point 2).

A split decoder (an optimised variant) has a prompt-independent *image part*. The predictor
runs it right after the encoder, in the same call (``Predictor.embed``), and keeps it with
the embedding (``Embedding.decoder_part``), so a click runs only the *prompt part*. These
tests count ``session.run`` calls per session of a split variant built here from the test
double (tests/models, not EdgeSAM) with the optimize API, and check that the stored part is
this embedding's and this variant's, that another variant (or the plain decoder) never uses
it, that prefetch, propagation and tiles carry it, and that the masks are bit-identical to
those of the same decoder run without the stored part. Speed is never asserted here.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import TEST_DECODER, TEST_ENCODER, disc_image

from napari_edgesam.engine import EdgeSamModel, Predictor
from napari_edgesam.engine import optimize as opt
from napari_edgesam.engine.cache import EmbeddingCache
from napari_edgesam.engine.file_hash import file_sha256
from napari_edgesam.engine.intensity import default_mapping
from napari_edgesam.engine.prefetch import Prefetcher
from napari_edgesam.engine.tiling import TiledPredictor
from napari_edgesam.workflows.propagation.embeddings import SliceEmbeddings
from napari_edgesam.workflows.propagation.slice_source import SliceSource

PROMPTS = ({"points": [(250, 120)]}, {"box": (180, 60, 320, 190)},
           {"points": [(250, 120), (100, 50)], "labels": [1, 0]}, {"points": [(30, 270)]})


class CountingSession:
    """An onnxruntime session that counts its ``run`` calls."""

    def __init__(self, session):
        self._session = session
        self.runs = 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self._session.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)


def counted(model):
    """Create ``model``'s sessions now, wrapped to count runs; returns ``{role: session}``."""
    model.load()
    for role, s in list(model._sessions.items()):
        model._sessions[role] = CountingSession(s)
    return model._sessions


def runs(sessions) -> dict:
    return {role: s.runs for role, s in sessions.items()}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The test double with two split decoder variants built beside it (module-wide)."""
    d = tmp_path_factory.mktemp("models")
    shutil.copy(TEST_ENCODER, d / "enc.onnx")
    shutil.copy(TEST_DECODER, d / "dec.onnx")
    model = EdgeSamModel(d / "enc.onnx", d / "dec.onnx", name="double")
    a, _ = disc_image((300, 400), (120, 250), 50)
    b, _ = disc_image((256, 256), (100, 90), 30, value=180, background=40)
    report = opt.optimize_model(model, [a, b], variants=["decoder-fast", "decoder-int8"],
                                n_clicks=2, n_boxes=1)
    for r in report.results:
        assert r.status in ("enabled", "refused"), r.reason
        assert r.path("image") and r.path("prompt"), f"{r.kind} was not split"
    return d


def fresh(source) -> EdgeSamModel:
    return EdgeSamModel(source / "enc.onnx", source / "dec.onnx", name="double")


def variant(source, kind, **kw):
    return opt.load_variant(fresh(source), kind, require_passed=False, **kw)


@pytest.fixture
def image():
    return disc_image((300, 400), (120, 250), 50)[0]


def test_the_first_click_runs_only_the_prompt_part(source, image):
    fast = variant(source, "decoder-fast")
    sessions = counted(fast)
    pred = Predictor(fast, cache=EmbeddingCache(disk_dir=False))
    emb = pred.embed(image)
    # the image part ran in the same call as the encoder, once
    assert runs(sessions) == {"encoder": 1, "decoder": 0, "decoder_image": 1,
                              "decoder_prompt": 0}
    part = emb.decoder_part
    assert part is not None and not part.cached
    # named by the variant and its image part file
    sha = file_sha256(fast.decoder_parts[0])
    assert part.variant == fast.decoder_part_key == f"decoder-fast:{sha}"
    assert part.nbytes > 0 and all(not a.flags.writeable for a in part.tensors.values())
    for i, kw in enumerate(PROMPTS, start=1):  # the first click and later ones alike
        pred.predict(embedding=emb, **kw)
        assert runs(sessions) == {"encoder": 1, "decoder": 0, "decoder_image": 1,
                                  "decoder_prompt": i}
    assert fast._memo == []  # the identity memo was not used
    # set_image + predict (the plain API) likewise
    pred.set_image(image)
    pred.predict(points=[(250, 120)])
    assert runs(sessions)["decoder_image"] == 1  # the part came from the cache with it
    assert runs(sessions)["decoder_prompt"] == len(PROMPTS) + 1


def test_the_stored_part_is_this_embeddings(source, image):
    fast = variant(source, "decoder-fast")
    pred = Predictor(fast, cache=None)
    other_image = disc_image((300, 400), (200, 100), 40, value=90)[0]
    emb, other = pred.embed(image), pred.embed(other_image)
    expected = fast.decoder_image_part(emb.features)
    assert set(emb.decoder_part.tensors) == set(expected)
    for name, arr in expected.items():
        np.testing.assert_array_equal(emb.decoder_part.tensors[name], arr)
    assert any(not np.array_equal(other.decoder_part.tensors[n], expected[n]) for n in expected)


@pytest.mark.parametrize("kind", ["decoder-fast", "decoder-int8"])
def test_masks_are_bit_identical_to_the_unsplit_path(source, image, kind):
    split = variant(source, kind)
    pred = Predictor(split, cache=None)
    emb = pred.embed(image)
    assert emb.decoder_part is not None
    bare = Predictor(variant(source, kind), cache=None)  # no stored part: the memo path
    one_file = Predictor(variant(source, kind, use_split=False), cache=None)
    assert one_file.model.decoder_part_key is None
    emb_one = one_file.embed(image)
    assert emb_one.decoder_part is None  # nothing changes without a split decoder
    np.testing.assert_array_equal(emb_one.features, emb.features)
    for kw in PROMPTS:
        a = pred.predict(embedding=emb, **kw)
        b = bare.predict(embedding=emb_one, **kw)
        c = one_file.predict(embedding=emb_one, **kw)
        for r in (b, c):
            np.testing.assert_array_equal(a.mask, r.mask)
            np.testing.assert_array_equal(a.low_res_logits, r.low_res_logits)
            np.testing.assert_array_equal(a.scores, r.scores)
            assert a.mask_index == r.mask_index


def test_another_variant_never_uses_the_part(source, image):
    fast, int8 = variant(source, "decoder-fast"), variant(source, "decoder-int8")
    assert fast.decoder_part_key != int8.decoder_part_key
    s_fast, s_int8 = counted(fast), counted(int8)
    cache = EmbeddingCache(disk_dir=False)
    p_fast, p_int8 = Predictor(fast, cache=cache), Predictor(int8, cache=cache)
    emb = p_fast.embed(image)
    # int8 given the fast variant's embedding: runs its own image part (fallback memo)
    got = p_int8.predict(embedding=emb, points=[(250, 120)])
    assert s_int8["decoder_image"].runs == 1 and s_int8["decoder_prompt"].runs == 1
    own = Predictor(variant(source, "decoder-int8", use_split=False), cache=None)
    want = own.predict(embedding=own.embed(image), points=[(250, 120)])
    np.testing.assert_array_equal(got.low_res_logits, want.low_res_logits)
    # the same cache: int8's embed finds the features (same encoder) but not a part of its own
    emb8 = p_int8.embed(image)
    assert emb8.cached and emb8.key == emb.key
    assert emb8.decoder_part.variant == int8.decoder_part_key and not emb8.decoder_part.cached
    assert s_int8["decoder_image"].runs == 2 and s_int8["encoder"].runs == 0
    # handing int8 the fast embedding to attach a part gives int8's own (from the store)
    moved = p_int8.with_decoder_part(emb)
    assert moved.decoder_part.variant == int8.decoder_part_key and moved.decoder_part.cached
    for name, arr in emb8.decoder_part.tensors.items():
        assert moved.decoder_part.tensors[name] is arr
    # and fast's comes back from the store, its own
    again = p_fast.embed(image)
    assert again.decoder_part.cached and again.decoder_part.variant == fast.decoder_part_key
    assert s_fast["decoder_image"].runs == 1
    # the plain decoder ignores a variant's part
    plain = fresh(source)
    s_plain = counted(plain)
    p_plain = Predictor(plain, cache=cache)
    r = p_plain.predict(embedding=emb, points=[(250, 120)])
    assert s_plain["decoder"].runs == 1
    ref = Predictor(fresh(source), cache=None)
    np.testing.assert_array_equal(
        r.low_res_logits, ref.predict(embedding=ref.embed(image), points=[(250, 120)])
        .low_res_logits)
    assert p_plain.embed(image).decoder_part is None


def test_prefetched_embeddings_carry_it(source, image):
    fast = variant(source, "decoder-fast")
    sessions = counted(fast)
    pred = Predictor(fast, cache=EmbeddingCache(disk_dir=False))
    done = []
    with Prefetcher(pred, nice=0, on_done=done.append) as prefetcher:
        prefetcher.prefetch([image])
        assert prefetcher.wait(60)
    assert len(done) == 1 and done[0].decoder_part is not None
    assert runs(sessions)["decoder_image"] == 1
    # the user steps to the slice: the embedding and its part come from the cache
    emb = pred.embed(image)
    assert emb.cached and emb.decoder_part.cached
    for name, arr in done[0].decoder_part.tensors.items():
        assert emb.decoder_part.tensors[name] is arr
    pred.predict(embedding=emb, points=[(250, 120)])
    assert runs(sessions) == {"encoder": 1, "decoder": 0, "decoder_image": 1,
                              "decoder_prompt": 1}


def test_propagation_embeddings_carry_it(source):
    fast = variant(source, "decoder-fast")
    sessions = counted(fast)
    stack = np.stack([disc_image((160, 160), (80, 70 + z), 30)[0] for z in range(4)])
    cache = EmbeddingCache(disk_dir=False)
    emb = SliceEmbeddings(Predictor(fast, cache=cache), SliceSource(stack),
                          default_mapping(stack), memo_slices=4)
    for z in range(4):
        e = emb.get(z).embedding
        assert e.decoder_part.variant == fast.decoder_part_key
        emb.get(z).predict_slice(points=[(80, 80)])
    assert runs(sessions) == {"encoder": 4, "decoder": 0, "decoder_image": 4,
                              "decoder_prompt": 4}
    # the run's memo keeps embeddings without their part (4 MiB each for EdgeSAM) ...
    assert all(m.embedding.decoder_part is None for m in emb.memo.values())
    # ... and a memo hit takes it back from the cache's store, not from the image part
    again = emb.get(1)
    assert again.embedding.decoder_part.cached
    assert runs(sessions)["decoder_image"] == 4
    cache.clear_memory()  # the store forgot it: computed once more, with the embedding
    assert emb.get(2).embedding.decoder_part is not None
    assert runs(sessions)["decoder_image"] == 5 and runs(sessions)["encoder"] == 4


def test_tiles_carry_it(source):
    fast = variant(source, "decoder-fast")
    sessions = counted(fast)
    big = disc_image((700, 900), (350, 450), 60)[0]
    tp = TiledPredictor(Predictor(fast, cache=EmbeddingCache(disk_dir=False)), big,
                        tile_size=512)
    r1 = tp.predict(points=[(450, 350)])
    n_image, n_windows = runs(sessions)["decoder_image"], len(tp.encoded)
    assert n_image == n_windows >= 1  # one image part per window encoded, with it
    assert runs(sessions)["decoder_prompt"] >= 1
    # the memo keeps window embeddings without their part
    assert all(e.decoder_part is None for e in tp._embeddings.values())
    r2 = tp.predict(points=[(450, 350)])  # the window's memo: the part from the store
    assert runs(sessions)["decoder_image"] == n_image
    np.testing.assert_array_equal(r1.mask, r2.mask)
