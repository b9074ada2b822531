"""Does GPU memory come back after drags end? Runs drags one after another and prints allocated memory.

A daemon runs thousands of drags in one process; anything a finished session leaves behind grows
without bound. For each variant (eager, CUDA graph, split; with and without previews) this makes a
session, steps it, lets it go, collects garbage and prints `torch.cuda.memory_allocated()`. Flat
numbers after the first rounds (which fill the model's shared constants) mean nothing leaks.

    PYTHONPATH=. python3 benchmarks/probe_session_memory.py --rounds 3
"""

from __future__ import annotations

import argparse
import gc
import sys
import weakref
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.bench_speed import build_generator, engine_session, make_points
from engine import latent_from_seed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="512")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default="eager,cudagraph,cudagraph-split")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    device = torch.device("cuda")
    G = build_generator(args.config, device)
    res = int(G.img_resolution)
    handles, targets = make_points(res, 5)
    print("| round | variant | previews | session freed | allocated MiB after |\n|---|---|---|---|---|")
    print(f"| 0 | (model only) | | | {torch.cuda.memory_allocated() / 2**20:.0f} |")
    for r in range(1, args.rounds + 1):
        for variant in args.variants.split(","):
            for preview in (False, True):
                session = engine_session(G, latent_from_seed(G, r), handles, targets, None, variant)
                for _ in range(5):
                    session.step()
                    if preview:
                        session.render_async(res // 2).result()
                ref = weakref.ref(session)
                del session
                gc.collect()
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                mib = torch.cuda.memory_allocated() / 2**20
                print(
                    f"| {r} | {variant} | {'yes' if preview else 'no'} | {ref() is None} | {mib:.0f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
