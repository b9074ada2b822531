#!/usr/bin/env python3
"""Run the krita-draggan end-to-end test in real Krita under Xvfb.

    python tests/krita_e2e/run_e2e.py --model PATH.safetensors [--out DIR] [--timeout S]

1. makes an isolated HOME (a clean Krita profile) and installs the plugin there with
   `install.py --plugin-only` (vendored pyzmq/msgpack for Krita's own Python);
2. installs the test driver plugin (driver/krita_draggan_e2e) beside it and writes the
   daemon's address into kritarc, as an artist's saved setting would be;
3. starts `python -m daemon` on the model (CPU, loopback), then runs Krita twice:
   phase 1 generates, drags, stops, survives a daemon kill + restart, saves the .kra;
   phase 2 (a fresh Krita) reopens the .kra and continues dragging from a history layer.
   While Krita runs, the driver asks for daemon kills/starts through files in control/.

Exit code 0 when both phases passed; the summary (checks, timings) is printed and written to
OUT/summary.json. Every wait is bounded: Krita's own watchdog plus a hard timeout here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DRIVER = HERE / "driver"
START_TIMEOUT_S = 120.0  # launch -> first result line (a cold Krita profile takes about 25 s)


class E2EError(RuntimeError):
    """The end-to-end run could not be set up (missing Krita, install failure, daemon failure)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_tools() -> None:
    missing = [t for t in ("krita", "xvfb-run") if shutil.which(t) is None]
    if missing:
        raise E2EError(
            f"{' and '.join(missing)} not found: the end-to-end test needs real Krita under Xvfb. "
            "Install them with `apt-get install -y krita python3-pyqt5 xvfb xauth` (Debian 12: Krita 5.1.5)"
        )


class Daemon:
    """The daemon process; the driver may ask to kill it and start it again (same port)."""

    def __init__(self, model: Path, endpoint: str, log_path: Path, keys: dict | None = None) -> None:
        self.model, self.endpoint, self.log_path = model, endpoint, log_path
        self.keys = keys  # CURVE: {"dir", "server_public", "client_secret"}
        self.proc: subprocess.Popen | None = None
        self.starts: list[float] = []

    def start(self, timeout: float = 90.0) -> float:
        sys.path.insert(0, str(REPO))
        from daemon.client import Client, CurveKeys, DaemonUnavailable

        t = time.monotonic()
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        curve_args = ["--curve", "--keys-dir", self.keys["dir"]] if self.keys else []
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "--model", str(self.model), "--device", "cpu",
                 "--bind", self.endpoint, *curve_args], cwd=REPO, env=env, stdout=log, stderr=log)
        curve = None
        if self.keys:
            curve = CurveKeys.from_files(self.keys["server_public"], self.keys["client_secret"])
        with Client(self.endpoint, connect_timeout=0.5, timeout=5.0, curve=curve) as client:
            while True:
                if self.proc.poll() is not None:
                    raise E2EError(f"the daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    client.hello()
                    break
                except DaemonUnavailable:
                    if time.monotonic() - t > timeout:
                        self.stop()
                        raise E2EError(
                            f"the daemon did not answer within {timeout:g} s:\n{self.log_tail()}"
                        ) from None
        self.starts.append(round(time.monotonic() - t, 2))
        return self.starts[-1]

    def kill(self) -> None:
        """SIGKILL: a daemon that dies, not one that shuts down politely."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


def prepare_home(home: Path, endpoint: str) -> Path:
    """Install the plugin (with install.py) and the driver into an isolated HOME."""
    pykrita = home / ".local" / "share" / "krita" / "pykrita"
    kritarc = home / ".config" / "kritarc"
    env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home / ".local" / "share"),
               XDG_CONFIG_HOME=str(home / ".config"))
    result = subprocess.run([sys.executable, str(REPO / "install.py"), "--plugin-only"], env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise E2EError(f"install.py --plugin-only failed:\n{result.stdout}\n{result.stderr}")
    if not (pykrita / "krita_draggan" / "__init__.py").exists():
        raise E2EError(f"install.py did not install into {pykrita}:\n{result.stdout}")
    target = pykrita / "krita_draggan_e2e"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(DRIVER / "krita_draggan_e2e", target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(DRIVER / "krita_draggan_e2e.desktop", pykrita)
    sys.path.insert(0, str(REPO))
    import install  # the same merge install.py uses, so the plugin's own line stays as it is

    text = kritarc.read_text()
    text = install.set_ini_value(text, "python", "enable_krita_draggan_e2e", "true")
    text = install.set_ini_value(text, "krita_draggan", "endpoint", endpoint)
    kritarc.write_text(text)
    return home


def make_curve_keys(folder: Path) -> dict:
    """A daemon key pair and one authorised client ('krita'), as `draggan keys --client krita` makes."""
    sys.path.insert(0, str(REPO))
    from daemon.keys import create_client_keys, create_server_keys

    public, _ = create_server_keys(folder, overwrite=True)
    _, client_secret = create_client_keys(folder, "krita", overwrite=True)
    return {"dir": str(folder), "server_public": str(public), "client_secret": str(client_secret)}


def run_krita(home: Path, out: Path, phase: str, env_extra: dict, daemons: dict, timeout: float) -> dict:
    """One Krita process; serves the driver's control requests until Krita exits."""
    control = out / "control"
    control.mkdir(parents=True, exist_ok=True)
    runtime = out / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(runtime),
               XDG_DATA_HOME=str(home / ".local/share"), XDG_CONFIG_HOME=str(home / ".config"),
               KRITA_DRAGGAN_E2E_DIR=str(out),
               KRITA_DRAGGAN_E2E_PHASE=phase, KRITA_DRAGGAN_E2E_TIMEOUT=str(timeout - 20), **env_extra)
    env.pop("PYTHONPATH", None)  # Krita's embedded Python must not see the repo: the installed copy is tested
    # Krita's embedded Python derives its prefix from the first `python3` on PATH: a pyenv/venv python
    # there (as when this runs under pytest) makes it lose /usr/lib/python3/dist-packages (PyQt5).
    env["PATH"] = "/usr/bin:/bin:" + env.get("PATH", "")
    log_path = out / f"krita-phase{phase}.log"
    result_path = out / f"phase{phase}.json"
    result_path.unlink(missing_ok=True)  # from an earlier run in the same folder
    t = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", "krita", "--nosplash"],
                                env=env, stdout=log, stderr=log, start_new_session=True)
        served: set[str] = set()
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - t
                if elapsed > timeout or (elapsed > START_TIMEOUT_S and not result_path.exists()):
                    os.killpg(proc.pid, signal.SIGKILL)  # hung, or the driver never started
                    proc.wait()
                    break
                for req in sorted(control.glob("req-*.json")):
                    if req.name in served:
                        continue
                    served.add(req.name)
                    cmd = json.loads(req.read_text())["cmd"]
                    ack = {"cmd": cmd}
                    if cmd == "kill":
                        daemons["main"].kill()
                    elif cmd == "start":
                        ack["start_s"] = daemons["main"].start()
                    elif cmd == "start_curve":
                        ack["start_s"] = daemons["curve"].start()
                    (control / req.name.replace("req-", "ack-")).write_text(json.dumps(ack))
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = round(time.monotonic() - t, 2)
    result = json.loads(result_path.read_text()) if result_path.exists() else {
        "checks": [], "error": "the driver wrote no results (did the plugins load?)"}
    result.update(rc=proc.returncode, wall_s=wall)
    if proc.returncode != 0 or not result.get("passed"):
        result["krita_log_tail"] = log_path.read_text(errors="replace")[-3000:]
    for old in control.glob("*.json"):
        old.unlink()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="small model file for the daemon (.safetensors)")
    p.add_argument("--out", type=Path, help="work folder (default: a new temporary folder)")
    p.add_argument("--timeout", type=float, default=420.0, help="hard limit per Krita run, seconds")
    p.add_argument("--steps", type=int, default=12, help="drag steps per drag")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    out = (args.out or Path(tempfile.mkdtemp(prefix="krita-draggan-e2e-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"out": str(out), "phases": {}}
    daemons: dict[str, Daemon] = {}
    try:
        require_tools()
        port = free_port()
        endpoint = f"tcp://127.0.0.1:{port}"
        t = time.monotonic()
        home = prepare_home(out / "home", endpoint)
        summary["install_s"] = round(time.monotonic() - t, 2)
        keys = make_curve_keys(out / "keys")
        curve_endpoint = f"tcp://127.0.0.1:{free_port()}"
        daemons["main"] = daemon = Daemon(args.model.resolve(), endpoint, out / "daemon.log")
        daemons["curve"] = Daemon(args.model.resolve(), curve_endpoint, out / "daemon-curve.log", keys)
        daemon.start()
        env_extra = {"KRITA_DRAGGAN_E2E_ENDPOINT": endpoint, "KRITA_DRAGGAN_E2E_MODEL": args.model.stem,
                     "KRITA_DRAGGAN_E2E_STEPS": str(args.steps),
                     "KRITA_DRAGGAN_E2E_CURVE_ENDPOINT": curve_endpoint,
                     "KRITA_DRAGGAN_E2E_SERVER_KEY": keys["server_public"],
                     "KRITA_DRAGGAN_E2E_CLIENT_KEY": keys["client_secret"]}
        for phase in ("1", "2"):
            result = run_krita(home, out, phase, env_extra, daemons, args.timeout)
            summary["phases"][phase] = result
            if not result.get("passed"):
                break
            if phase == "1":  # a daemon restart between the sessions too: the .kra must carry everything
                daemon.stop()
                daemon.start()
        summary["daemon_starts_s"] = daemon.starts
    except E2EError as e:
        summary["error"] = str(e)
    finally:
        for d in daemons.values():
            d.stop()
    summary["wall_s"] = round(time.monotonic() - t0, 2)
    passed = "error" not in summary and len(summary["phases"]) == 2 and all(
        r.get("passed") for r in summary["phases"].values())
    summary["passed"] = passed
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(report(summary))
    return 0 if passed else 1


def report(summary: dict) -> str:
    lines = [f"krita-draggan E2E: {'PASSED' if summary['passed'] else 'FAILED'} in {summary['wall_s']} s "
             f"(work folder {summary['out']})"]
    if "error" in summary:
        lines.append(f"error: {summary['error']}")
    for phase, result in summary["phases"].items():
        lines.append(f"phase {phase}: rc={result.get('rc')} wall={result.get('wall_s')} s "
                     f"timings={json.dumps(result.get('timings', {}))}")
        for c in result.get("checks", []):
            detail = "" if c["ok"] else f": {c['detail']}"
            lines.append(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['name']}{detail}")
        for n in result.get("notes", []):
            lines.append(f"  note: {n}")
        if result.get("error"):
            lines.append(f"  error: {result['error']}")
        if result.get("krita_log_tail"):
            lines.append("  krita log tail:\n" + result["krita_log_tail"])
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
