"""Session tuning rows of the benchmark harness: thread-pool policies and session options.

Two onnxruntime sessions with their own spinning thread pools (the encoder and the decoder)
fight for the cores: right after one session's run its idle threads keep spin-waiting while
the other session runs. These rows time each thread-pool policy of
``napari_edgesam.engine.session.THREAD_POLICIES`` in the sequences where that shows:

- each session alone (after an idle gap, so that no thread of any session is spinning);
- a decoder run right after an encoder run, and an encoder run right after a decoder run;
- a click-rate loop (decoder runs back to back; the mean of runs 2-5 after an idle gap).

Every figure is a median over rounds; in each round every policy's sequences run in a
shuffled order, each after the same idle gap, beside raw onnxruntime sessions (plain
``SessionOptions`` with the thread count only) made in the same process, the baseline of
every ratio. The ``"global"`` policy (onnxruntime's process-wide pools, created once per
process) runs in a child process with its own raw sessions.

Run alone: ``python benchmarks/bench_threads.py [--repeats N] [--threads N]``, or through
``python benchmarks/run.py --only threads``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_workflows import MODELS

HERE = Path(__file__).resolve().parent
#: Seconds between sequences: long enough for every pool's threads to stop spinning.
IDLE = 0.25
#: Decoder runs in the click-rate loop (the first, after the idle gap, is not counted).
LOOP = 5
#: The figures timed for each policy, in table order.
FIGURES = ("encoder alone", "decoder alone", "decoder right after an encoder run",
           "encoder right after a decoder run", "decoder, runs in a row (per run)")


def _feeds(encoder):
    """The encoder input and the decoder feeds (one click + padding point) on a real
    embedding of a synthetic slice, computed by ``encoder`` (a :func:`raw_session`)."""
    rng = np.random.default_rng(0)
    tensor = rng.normal(0, 1, (1, 3, 1024, 1024)).astype(np.float32)
    (emb,) = encoder.run(None, {"image": tensor})
    dec_feeds = {"image_embeddings": emb,
                 "point_coords": np.array([[[400.0, 600.0], [0.0, 0.0]]], np.float32),
                 "point_labels": np.array([[1.0, -1.0]], np.float32)}
    return {"image": tensor}, dec_feeds


def raw_session(path, threads: int):
    """A raw onnxruntime session: plain ``SessionOptions`` with the thread count only."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def policy_sessions(policy: str, encoder: Path, decoder: Path, threads: int):
    """``(encoder, decoder)`` sessions made with the engine's options for ``policy``."""
    import onnxruntime as ort

    from napari_edgesam.engine.session import session_options

    return tuple(ort.InferenceSession(str(path), session_options(role, num_threads=threads,
                                                                 policy=policy),
                                      providers=["CPUExecutionProvider"])
                 for role, path in (("encoder", encoder), ("decoder", decoder)))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _sequences(enc, dec, enc_feeds, dec_feeds) -> dict:
    """name -> a callable that runs one sequence after the idle gap and returns the time
    of the run it measures."""
    def run_enc():
        enc.run(None, enc_feeds)

    def run_dec():
        dec.run(None, dec_feeds)

    def loop():
        run_dec()
        return statistics.mean(_timed(run_dec) for _ in range(LOOP - 1))

    return {
        "encoder alone": lambda: _timed(run_enc),
        "decoder alone": lambda: _timed(run_dec),
        "decoder right after an encoder run": lambda: (run_enc(), _timed(run_dec))[1],
        "encoder right after a decoder run": lambda: (run_dec(), _timed(run_enc))[1],
        "decoder, runs in a row (per run)": loop,
    }


def measure(policies, encoder: Path, decoder: Path, threads: int, repeats: int,
            seed: int = 0, figures=FIGURES) -> dict:
    """Medians of every figure for each policy and for the raw sessions, in this process.

    Parameters
    ----------
    policies : list of str
        Names of ``THREAD_POLICIES`` to time (``"global"`` only in a process of its own).
    encoder, decoder : path
        The ONNX files.
    threads : int
        Intra-op threads of every session.
    repeats : int
        Rounds; every sequence runs once per round.
    seed : int
        Seed of the shuffles.
    figures : sequence of str
        The figures of :data:`FIGURES` to time (default all); the raw sessions time the
        "alone" ones among them.

    Returns
    -------
    dict
        ``{"raw" or policy: {figure: median seconds}}`` (raw: the two "alone" figures).
    """
    raw_enc, raw_dec = raw_session(encoder, threads), raw_session(decoder, threads)
    enc_feeds, dec_feeds = _feeds(raw_enc)
    seqs = {"raw": {k: v for k, v in _sequences(raw_enc, raw_dec, enc_feeds, dec_feeds).items()
                    if k.endswith("alone") and k in figures}}
    for policy in policies:
        seqs[policy] = {k: v for k, v in _sequences(
            *policy_sessions(policy, encoder, decoder, threads), enc_feeds, dec_feeds).items()
            if k in figures}
    tasks = [(name, fig) for name, figs in seqs.items() for fig in figs]
    for name, fig in tasks:  # warm-up: first runs allocate
        seqs[name][fig]()
    times: dict = {name: {fig: [] for fig in figs} for name, figs in seqs.items()}
    rng = random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(tasks)
        for name, fig in tasks:
            time.sleep(IDLE)
            times[name][fig].append(seqs[name][fig]())
    return {name: {fig: statistics.median(v) for fig, v in figs.items()}
            for name, figs in times.items()}


def measure_global(encoder: Path, decoder: Path, threads: int, repeats: int) -> dict:
    """:func:`measure` for the ``"global"`` policy in a child process (its pools are made
    once per process), beside that process's own raw sessions."""
    out = subprocess.run(
        [sys.executable, __file__, "--child-global", "--encoder", str(encoder),
         "--decoder", str(decoder), "--threads", str(threads), "--repeats", str(repeats)],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def all_policies(encoder: Path, decoder: Path, threads: int, repeats: int) -> dict:
    """Every policy: ``{"local": measure(...), "global": measure_global(...)}``."""
    from napari_edgesam.engine.session import THREAD_POLICIES

    local = measure([p for p in THREAD_POLICIES if p != "global"], encoder, decoder,
                    threads, repeats)
    return {"local": local, "global": measure_global(encoder, decoder, threads, repeats)}


def policy_rows(result: dict, Row) -> list:
    """Table rows from :func:`all_policies`: each figure against the raw session alone
    (the same role, the same process), and the issue's figure (a decoder run right after an
    encoder run / the same run alone) per policy."""
    from napari_edgesam.engine.session import DEFAULT_THREAD_POLICY

    rows = []
    per_policy = {p: (figs, result["local"]["raw"]) for p, figs in result["local"].items()
                  if p != "raw"}
    per_policy["global"] = (result["global"]["global"], result["global"]["raw"])
    spin, spin_raw = per_policy["spin"]
    for policy, (figs, raw) in per_policy.items():
        tag = f"policy {policy}" + (" (default)" if policy == DEFAULT_THREAD_POLICY else "")
        for fig in FIGURES:
            base = raw["encoder alone"] if fig.startswith("encoder") else raw["decoder alone"]
            note = ""
            if fig.endswith("alone"):
                today = spin[fig] / spin_raw[fig]
                note = f"{(figs[fig] / base) / today:.2f} of today's (policy spin) ratio"
            rows.append(Row(f"{tag}: {fig}", figs[fig], base, note
                            or "ratio to the raw session alone",
                            {"policy": policy, "figure": fig}))
        after = figs["decoder right after an encoder run"] / figs["decoder alone"]
        rows.append(Row(f"{tag}: decoder after encoder / decoder alone",
                        figs["decoder right after an encoder run"], figs["decoder alone"],
                        "goal <= 1.05" + ("; own process, own raw sessions"
                                          if policy == "global" else ""),
                        {"policy": policy, "figure": "after / alone", "ratio": after}))
        rows.append(Row(f"{tag}: encoder after decoder / encoder alone",
                        figs["encoder right after a decoder run"], figs["encoder alone"],
                        "goal <= 1.05", {"policy": policy}))
    return rows


def option_rows(ctx, Row) -> list:
    """Thread counts, memory pattern/arena, graph optimisation level: each session timed
    alone after the idle gap (so no other session's threads are spinning), as a ratio to a
    session with the engine's default options, interleaved."""
    from run import _session

    from napari_edgesam.engine.session import default_num_threads

    threads = ctx.model.num_threads or default_num_threads()
    enc_feeds, dec_feeds = _feeds(raw_session(ctx.model.encoder_path, threads))
    cores = default_num_threads()
    configs = {f"threads={n}": {"threads": n} for n in sorted({1, 2, cores, 2 * cores})}
    configs.update({
        "no memory pattern": {"mem_pattern": False},
        "no memory arena": {"arena": False},
        "graph optimisation basic": {"level": "basic"},
        "graph optimisation extended": {"level": "extended"},
    })
    rows = []
    for role, path, feeds in (("encoder", ctx.model.encoder_path, enc_feeds),
                              ("decoder", ctx.model.decoder_path, dec_feeds)):
        sessions = {"default": _session(path, threads)}
        sessions.update({name: _session(path, **{"threads": threads, **kw})
                         for name, kw in configs.items()})
        times: dict = {name: [] for name in sessions}
        for s in sessions.values():
            s.run(None, feeds)
        for _ in range(ctx.repeats):
            for name, s in sessions.items():
                time.sleep(IDLE)
                times[name].append(_timed(lambda s=s: s.run(None, feeds)))
        med = {k: statistics.median(v) for k, v in times.items()}
        for name in configs:
            rows.append(Row(f"{role} {name}", med[name], med["default"],
                            f"alone, ratio to the default options ({threads} threads)"))
    return rows


def bench_threads(ctx) -> list:
    """The harness's ``threads`` rows: thread-pool policies, then session options."""
    from run import Row

    from napari_edgesam.engine.session import default_num_threads

    threads = ctx.model.num_threads or default_num_threads()
    result = all_policies(ctx.model.encoder_path, ctx.model.decoder_path, threads,
                          ctx.repeats)
    return policy_rows(result, Row) + option_rows(ctx, Row)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", type=Path, default=MODELS["faithful"][0])
    p.add_argument("--decoder", type=Path, default=MODELS["faithful"][1])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child-global", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_global:
        print(json.dumps(measure(["global"], args.encoder, args.decoder, args.threads,
                                 args.repeats)))
        return 0
    sys.path.insert(0, str(HERE))
    from run import Row, format_table

    load_before = Path("/proc/loadavg").read_text().split()[:3]
    result = all_policies(args.encoder, args.decoder, args.threads, args.repeats)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}, {args.threads} threads, {args.repeats} rounds, "
          f"idle gap {IDLE * 1e3:.0f} ms; load average before {' '.join(load_before)}, "
          f"after {' '.join(load_after)}")
    print(format_table(policy_rows(result, Row)))
    if args.json:
        args.json.write_text(json.dumps({"load_before": load_before, "load_after": load_after,
                                         "onnxruntime": ort.__version__,
                                         "threads": args.threads, "repeats": args.repeats,
                                         **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
