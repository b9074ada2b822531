"""Benchmark the daemon over loopback: request -> first preview frame latency and frames/s,
for each preview encoding and size. Not a test; prints a Markdown table.

    python benchmarks/bench_daemon.py                 # spawns a daemon (default model, --device auto)
    python benchmarks/bench_daemon.py --tiny          # tiny random 256 px model: protocol/encoder cost
    python benchmarks/bench_daemon.py --endpoint tcp://127.0.0.1:5617   # an already running daemon

Each run is a drag that never converges (stop_distance 0) with previews every step
(interval_ms 0), so frames/s is bounded by step time, rendering, encoding and transport.

    python benchmarks/bench_daemon.py --concurrent 8  # then 8 clients dragging at once: fairness

`--concurrent N` adds a table: N clients (threads, one connection each) start one drag each at the
same moment; per-session steps/s (min / median / max), their max/min ratio (1.0 = perfectly fair
round-robin), all sessions' steps/s together, and first-frame latency.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.client import Client, DaemonUnavailable  # noqa: E402
from daemon.protocol import Message  # noqa: E402


@dataclass
class RunTimes:
    t_request: float
    t_reply: float | None = None
    frames: list[float] = field(default_factory=list)
    frame_bytes: list[int] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    t_done: float | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_daemon(
    model: str | None, device: str, log_path: Path, max_sessions: int = 8, extra: list[str] | None = None
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    args = [sys.executable, "-m", "daemon", "--bind", endpoint, "--device", device, "--log-level", "warning"]
    args += ["--max-sessions", str(max(max_sessions, 8))]
    if model:
        args += ["--model", model]
    args += extra or []
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    with Client(endpoint, connect_timeout=0.5) as c:
        while True:
            try:
                c.hello()
                return proc, endpoint
            except DaemonUnavailable:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise SystemExit(f"daemon did not start:\n{log_path.read_text()}") from None


def encode_ms(rgb_bytes: bytes, resolution: int, size: int, encoding: str, repeat: int = 10) -> float:
    """This machine's cost of encoding one preview frame (the daemon's encoder does the same work)."""
    import numpy as np
    from PIL import Image as PILImage

    from daemon.encoding import encode_image

    rgb = np.frombuffer(rgb_bytes, np.uint8).reshape(resolution, resolution, 3)
    if size != resolution:
        rgb = np.asarray(PILImage.fromarray(rgb).resize((size, size), PILImage.BILINEAR))
    encode_image(rgb, encoding, fast=True)  # first call loads codecs
    t = time.perf_counter()
    for _ in range(repeat):
        encode_image(rgb, encoding, fast=True)
    return (time.perf_counter() - t) / repeat * 1000


def one_run(
    client: Client,
    latent_id: str,
    resolution: int,
    size: int,
    encoding: str,
    steps: int,
    interval_ms: int = 0,
) -> RunTimes:
    r = resolution
    times = RunTimes(time.perf_counter())

    def on_event(msg: Message) -> None:
        now = time.perf_counter()
        if msg.type == "drag_start_reply":
            times.t_reply = now
            if not msg.ok:
                times.t_done = now
        elif msg.type == "drag_step":
            times.steps.append(now)
        elif msg.type == "drag_frame":
            times.frames.append(now)
            times.frame_bytes.append(len(msg.frames[0]))
        elif msg.type in ("drag_done", "drag_error"):
            times.t_done = now

    stream = client.start_drag(
        latent_id,
        handles=[[0.3 * r, 0.4 * r], [0.6 * r, 0.6 * r]],
        targets=[[0.5 * r, 0.4 * r], [0.6 * r, 0.4 * r]],
        params={"stop_distance": 0.0},
        max_steps=steps,
        preview={"size": size, "encoding": encoding, "interval_ms": interval_ms},
        on_event=on_event,
        wait=False,
    )
    client.wait_until(lambda: stream.finished, 600)
    if stream.error is not None:
        raise SystemExit(f"drag failed: {stream.error}")
    client.close_session(stream.session)
    return times


def print_header(columns: list[str]) -> None:
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))


def concurrent_runs(endpoint: str, count: int, steps: int, size: int, encoding: str) -> list[RunTimes]:
    """`count` clients, each in its own thread, start one drag at the same moment."""
    barrier = threading.Barrier(count)
    results: list[RunTimes | BaseException] = [RuntimeError("not run")] * count

    def worker(i: int) -> None:
        try:
            with Client(endpoint, compute_timeout=600) as client:
                info = client.hello()
                res = next(m for m in info["models"] if m["name"] == info["default_model"])["resolution"]
                latent = client.generate(seed=100 + i, encoding="raw").latent
                barrier.wait(120)
                results[i] = one_run(client, latent.id, res, size, encoding, steps)
        except BaseException as e:  # reported below, after every thread ended
            results[i] = e
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise SystemExit(f"concurrent run failed: {errors[0]!r}")
    return [r for r in results if isinstance(r, RunTimes)]


def print_concurrent(runs: list[RunTimes], steps: int, size: int, encoding: str) -> None:
    rates = sorted((len(t.steps) - 1) / (t.steps[-1] - t.steps[0]) for t in runs)
    start = min(t.t_request for t in runs)
    end = max(t.steps[-1] for t in runs)
    total = sum(len(t.steps) for t in runs) / (end - start)
    first = sorted((t.frames[0] - t.t_request) * 1000 for t in runs)
    print(f"\n{len(runs)} concurrent drags, {steps} steps each, {encoding} previews at {size} px\n")
    print_header(
        [
            "sessions",
            "steps/s min",
            "median",
            "max",
            "max/min",
            "all sessions steps/s",
            "first frame ms median / max",
        ]
    )
    row = [
        len(runs),
        f"{rates[0]:.1f}",
        f"{statistics.median(rates):.1f}",
        f"{rates[-1]:.1f}",
        f"{rates[-1] / rates[0]:.2f}",
        f"{total:.1f}",
        f"{statistics.median(first):.0f} / {first[-1]:.0f}",
    ]
    print("| " + " | ".join(map(str, row)) + " |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", help="benchmark a running daemon instead of spawning one")
    p.add_argument("--model", help="model for the spawned daemon (default: the daemon's default)")
    p.add_argument("--tiny", action="store_true", help="spawn with a tiny random 256 px model")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=20, help="steps per drag")
    p.add_argument("--repeat", type=int, default=2, help="drags per configuration")
    p.add_argument("--sizes", default="128,256", help="preview sizes, comma-separated ('' for none)")
    p.add_argument("--encodings", default="raw,png,jpeg,webp")
    p.add_argument("--interval-ms", type=int, default=0, help="preview rate limit (0: a frame every step)")
    p.add_argument("--concurrent", type=int, default=0, help="then N drags at once (fairness table)")
    p.add_argument("--concurrent-steps", type=int, default=50, help="steps per concurrent drag")
    p.add_argument(
        "--daemon-args", default="", help="more arguments for the spawned daemon, e.g. '--batch-steps off'"
    )
    args = p.parse_args()
    if args.concurrent < 0 or args.concurrent_steps < 2:
        p.error("--concurrent must be >= 0 and --concurrent-steps >= 2")

    proc = None
    tmp = tempfile.TemporaryDirectory()
    endpoint = args.endpoint
    if endpoint is None:
        model = "random:tiny-256" if args.tiny else args.model
        log_path = Path(tmp.name) / "daemon.log"
        extra = shlex.split(args.daemon_args)
        proc, endpoint = spawn_daemon(model, args.device, log_path, args.concurrent, extra)
    try:
        with Client(endpoint, compute_timeout=600) as client:
            info = client.hello()
            model_info = next(m for m in info["models"] if m["name"] == info["default_model"])
            resolution = model_info["resolution"]
            generated = client.generate(seed=1, encoding="raw")
            latent = generated.latent
            one_run(client, latent.id, resolution, 64, "raw", 3)  # warm-up: lazy init, caches
            print(
                f"daemon {info['daemon_version']} on {info['device']}, model {model_info['name']} "
                f"({resolution} px), {args.steps} steps x {args.repeat} drags per row, previews every step; "
                f"daemon args: {args.daemon_args or '-'}\n"
            )
            print_header(
                ["encoding", "preview px", "first frame ms", "frames/s", "steps/s", "KiB/frame", "encode ms"]
            )
            for size in (int(s) for s in args.sizes.split(",") if s.strip()):
                for encoding in args.encodings.split(","):
                    if encoding not in info["encodings"]:
                        continue
                    runs = [
                        one_run(client, latent.id, resolution, size, encoding, args.steps, args.interval_ms)
                        for _ in range(args.repeat)
                    ]
                    first = statistics.median((t.frames[0] - t.t_request) * 1000 for t in runs)
                    fps = statistics.median(
                        (len(t.frames) - 1) / (t.frames[-1] - t.frames[0]) if len(t.frames) > 1 else 0.0
                        for t in runs
                    )
                    sps = statistics.median((len(t.steps) - 1) / (t.steps[-1] - t.steps[0]) for t in runs)
                    kib = statistics.mean(b for t in runs for b in t.frame_bytes) / 1024
                    enc = encode_ms(generated.image.data, resolution, size, encoding)
                    row = [
                        encoding,
                        size,
                        f"{first:.1f}",
                        f"{fps:.1f}",
                        f"{sps:.1f}",
                        f"{kib:.1f}",
                        f"{enc:.2f}",
                    ]
                    print("| " + " | ".join(map(str, row)) + " |")
        if args.concurrent:
            runs = concurrent_runs(endpoint, args.concurrent, args.concurrent_steps, 256, "jpeg")
            print_concurrent(runs, args.concurrent_steps, 256, "jpeg")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
