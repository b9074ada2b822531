#!/usr/bin/env python3
"""Install krita-draggan: the daemon's virtual environment and the Krita plugin.

    python install.py                  # daemon venv + plugin, then prints how to start the daemon
    python install.py --run            # ... and starts the daemon on the bundled demo model
    python install.py --plugin-only    # the Krita side only (the daemon runs on a remote GPU box)
    python install.py --daemon-only    # the daemon side only (on the GPU box)
    python install.py --uninstall      # remove what this script installed

Standard library only, so it runs with any Python >= 3.10 on a fresh machine. Every step is
idempotent; every failure ends with a message that says what to do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent
PLUGIN_NAME = "krita_draggan"  # folder name in pykrita and the kritarc key enable_<name>
PLUGIN_SOURCE = REPO / "plugin_krita"
PROTOCOL_FILES = ("protocol.py", "client.py")  # copied from daemon/ into <plugin>/_protocol/
VENDOR_REQUIREMENTS = ("pyzmq>=25", "msgpack>=1.0")
CPU_TORCH = "torch==2.13.0"  # the CPU wheel; machines with an NVIDIA GPU get PyPI's default torch
VENV_MARKER = "krita-draggan-venv.json"
VENDOR_MARKER = "krita_draggan_vendor.json"
DEFAULT_PORT = 5617  # the protocol's default (docs/protocol.md)
MIN_PYTHON = (3, 10)


class InstallError(RuntimeError):
    """A step failed; the message says what went wrong and what to do."""


def say(message: str) -> None:
    print(f"[install] {message}", flush=True)


# --------------------------------------------------------------------------- locations


def user_data_dir(app: str) -> Path:
    """platformdirs-like per-user data folder (without needing platformdirs)."""
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / app
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / app
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / app


def default_pykrita_dir() -> Path:
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming") / "krita" / "pykrita"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "krita" / "pykrita"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "krita" / "pykrita"


def default_kritarc() -> Path:
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "kritarc"
    if sys.platform == "darwin":
        return home / "Library" / "Preferences" / "kritarc"
    return Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "kritarc"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


# --------------------------------------------------------------------------- kritarc


def set_ini_value(text: str, section: str, key: str, value: str) -> str:
    """Set key=value in [section] of an INI/KConfig text, keeping every other line as it was."""
    lines = text.splitlines()
    header = f"[{section}]"
    start = next((i for i, line in enumerate(lines) if line.strip() == header), None)
    if start is None:
        body = "\n".join(lines).rstrip("\n")
        return (body + "\n\n" if body else "") + f"{header}\n{key}={value}\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    for i in range(start + 1, end):
        if lines[i].split("=", 1)[0].strip() == key:
            lines[i] = f"{key}={value}"
            return "\n".join(lines) + "\n"
    insert_at = end
    while insert_at > start + 1 and not lines[insert_at - 1].strip():
        insert_at -= 1
    lines.insert(insert_at, f"{key}={value}")
    return "\n".join(lines) + "\n"


def remove_ini_value(text: str, section: str, key: str) -> str:
    """Remove key from [section], keeping every other line as it was."""
    lines = text.splitlines()
    out, current = [], None
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1]
        if current == section and "=" in line and line.split("=", 1)[0].strip() == key:
            continue
        out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def enable_in_kritarc(kritarc: Path, enable: bool) -> None:
    try:
        text = kritarc.read_text(encoding="utf-8") if kritarc.exists() else ""
    except (OSError, UnicodeDecodeError) as e:
        raise InstallError(f"cannot read {kritarc} ({e}); fix or move that file and run again") from e
    key = f"enable_{PLUGIN_NAME}"
    new = set_ini_value(text, "python", key, "true") if enable else remove_ini_value(text, "python", key)
    if new != text:
        try:
            kritarc.parent.mkdir(parents=True, exist_ok=True)
            kritarc.write_text(new, encoding="utf-8")
        except OSError as e:
            raise InstallError(f"cannot write {kritarc} ({e})") from e
    say(f"{'enabled' if enable else 'disabled'} the plugin in {kritarc}")


# --------------------------------------------------------------------------- Krita's Python


def detect_krita_python(root: Path = Path("/")) -> tuple[str | None, str]:
    """(X.Y of the Python that Krita embeds, or None; where it was found).

    Linux: the libpython that Krita's Python plugin library (kritapykrita.so) links against.
    """
    candidates: list[Path] = []
    if sys.platform.startswith("linux"):
        for pattern in ("usr/lib/*/kritaplugins/kritapykrita*.so", "usr/lib*/kritaplugins/kritapykrita*.so",
                        "usr/local/lib*/kritaplugins/kritapykrita*.so",
                        "usr/local/lib/*/kritaplugins/kritapykrita*.so"):
            candidates.extend(sorted(root.glob(pattern)))
        for path in candidates:
            try:
                found = re.search(rb"libpython3\.(\d+)", path.read_bytes())
            except OSError:
                continue
            if found:
                return f"3.{int(found.group(1))}", str(path)
    elif sys.platform == "darwin":
        for app in (Path("/Applications/krita.app"), Path.home() / "Applications" / "krita.app"):
            versions = sorted(app.glob("Contents/Frameworks/Python.framework/Versions/3.*"))
            if versions:
                return versions[-1].name, str(versions[-1])
    elif sys.platform == "win32":
        roots = [Path(os.environ.get(v, "")) / "Krita (x64)" for v in ("ProgramFiles", "ProgramW6432")]
        for root in roots:
            for dll in sorted(root.glob("**/python3*.dll")):
                found = re.fullmatch(r"python3(\d+)\.dll", dll.name.lower())
                if found:
                    return f"3.{int(found.group(1))}", str(dll)
    return None, "not found"


def wheel_platforms() -> list[str]:
    """pip --platform tags for binary wheels that load on this machine."""
    machine = platform.machine().lower()
    if sys.platform == "win32":
        return ["win_arm64"] if machine in ("arm64", "aarch64") else ["win_amd64"]
    if sys.platform == "darwin":
        arch = "arm64" if machine in ("arm64", "aarch64") else "x86_64"
        majors = ["11_0", "12_0", "13_0", "14_0"] if arch == "arm64" else ["10_9", "10_13", "11_0", "12_0"]
        return [f"macosx_{m}_{arch}" for m in majors] + [f"macosx_{m}_universal2" for m in ("10_9", "11_0")]
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    libc, version = platform.libc_ver()
    if libc != "glibc" or not version:
        raise InstallError(
            "vendoring for a non-glibc Linux is not supported: install pyzmq and msgpack for Krita's "
            "Python yourself"
        )
    minor = int(version.split(".")[1])
    tags = [f"manylinux_2_{m}_{arch}" for m in range(17, minor + 1)]
    return [*tags, f"manylinux2014_{arch}"]


def vendor_packages(plugin_dir: Path, python_version: str) -> None:
    """pyzmq + msgpack wheels for Krita's Python, unpacked into <plugin>/vendor."""
    if not re.fullmatch(r"3\.\d+", python_version):
        raise InstallError(f"--krita-python must look like 3.11, got {python_version!r}")
    vendor = plugin_dir / "vendor"
    platforms = wheel_platforms()
    wanted = {"python": python_version, "platforms": platforms, "requirements": list(VENDOR_REQUIREMENTS)}
    marker = vendor / VENDOR_MARKER
    try:
        if json.loads(marker.read_text()) == wanted:
            say(f"vendored pyzmq + msgpack for Python {python_version} already in place")
            return
    except (OSError, ValueError):
        pass
    # download into a fresh folder and swap it in only on success: an offline re-install keeps the
    # working vendor/ it already has
    staging = Path(tempfile.mkdtemp(prefix=".vendor-new-", dir=plugin_dir))
    abi = "cp" + python_version.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--target", str(staging), "--only-binary=:all:", "--python-version", python_version,
           "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for tag in platforms:
        cmd += ["--platform", tag]
    cmd += list(VENDOR_REQUIREMENTS)
    say(f"vendoring {', '.join(VENDOR_REQUIREMENTS)} for Krita's Python {python_version} ({platforms[-1]})")
    try:
        run(cmd, f"could not download pyzmq/msgpack wheels for Python {python_version} on {platforms[0]}. "
                 "Check the network and that --krita-python is right"
                 + ("; the previously vendored packages were kept" if vendor.is_dir() else ""))
        (staging / VENDOR_MARKER).write_text(json.dumps(wanted))
        swap_in(staging, vendor)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def swap_in(new: Path, target: Path) -> None:
    """Replace `target` by `new` (same parent), keeping `target` until `new` is in place."""
    old = target.with_name(f".{target.name}-old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- steps


def run(cmd: list[str], failure: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(cmd, **kwargs)
    except OSError as e:
        raise InstallError(f"{failure}: cannot run {cmd[0]} ({e})") from e
    if result.returncode != 0:
        raise InstallError(f"{failure} (command failed with exit code {result.returncode}: {' '.join(cmd)})")
    return result


def has_nvidia_gpu() -> bool:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        result = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and "GPU" in result.stdout


def check_pip() -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    if result.returncode != 0:
        raise InstallError(
            f"pip is not available for {sys.executable}. Install it (Debian/Ubuntu: "
            "`sudo apt-get install python3-pip python3-venv`) or run install.py with a Python that has pip"
        )


def choose_torch(torch_spec: str | None, nvidia_gpu: bool) -> tuple[str, str]:
    """(pip requirement for torch, why): --torch-spec, else the CPU pin, else PyPI's default build."""
    if torch_spec:
        return torch_spec, "--torch-spec"
    if not nvidia_gpu:
        return CPU_TORCH, "no NVIDIA GPU: CPU build"
    return "torch", ("NVIDIA GPU found: PyPI's default torch, unpinned (pip picks the newest CUDA build "
                     "for this platform); choose another with --torch-spec, e.g. --torch-spec 'torch==2.5.1' "
                     "or --torch-spec 'torch --index-url https://download.pytorch.org/whl/cu121'")


def install_daemon(venv: Path, editable: bool, system_site_packages: bool = False,
                   torch_spec: str | None = None) -> None:
    """Create the venv, install torch (CPU pin without an NVIDIA GPU, --torch-spec wins) and this project."""
    python = venv_python(venv)
    if not python.exists():
        if venv.exists() and any(venv.iterdir()):
            raise InstallError(f"{venv} exists but is not a virtual environment; choose another --venv")
        say(f"creating the daemon's virtual environment in {venv}")
        extra = ["--system-site-packages"] if system_site_packages else []
        run([sys.executable, "-m", "venv", *extra, str(venv)],
            f"could not create a virtual environment in {venv} "
            "(Debian/Ubuntu: `sudo apt-get install python3-venv`)")
        # only a venv made here is ours to delete with --uninstall
        (venv / VENV_MARKER).write_text(json.dumps({"project": "krita-draggan", "repo": str(REPO)}))
    torch_req, why = choose_torch(torch_spec, has_nvidia_gpu() if not torch_spec else False)
    say(f"installing {torch_req} ({why})")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    run([*pip, *shlex.split(torch_req)], f"could not install {torch_req} into {venv}")
    say(f"installing krita-draggan from {REPO} ({'editable' if editable else 'copy'})")
    run(pip + (["-e", str(REPO)] if editable else [str(REPO)]), f"could not install {REPO} into {venv}")
    check = ("import torch, zmq, msgpack, daemon, engine, stylegan2; "
             "print(torch.__version__, torch.version.cuda or 'no CUDA')")
    result = run([str(python), "-c", check], "the daemon's environment is incomplete",
                 capture_output=True, text=True)
    version, _, cuda = result.stdout.strip().partition(" ")
    say(f"daemon environment ready: torch {version} ({'CUDA ' + cuda if cuda != 'no CUDA' else cuda}) "
        f"in {venv}")


def install_plugin(pykrita: Path, kritarc: Path, krita_python: str | None) -> None:
    """Copy the plugin (with the daemon's protocol + client) into pykrita, vendor, enable."""
    if not PLUGIN_SOURCE.is_dir():
        raise InstallError(f"plugin source {PLUGIN_SOURCE} is missing; run install.py from a full checkout")
    missing = [f for f in PROTOCOL_FILES if not (REPO / "daemon" / f).is_file()]
    if missing:
        raise InstallError(f"daemon/{', daemon/'.join(missing)} missing; run install.py from a full checkout")
    if krita_python is None:
        krita_python, where = detect_krita_python()
        if krita_python is None:
            raise InstallError(
                "could not find Krita's embedded Python (is Krita installed?). Pass its version with "
                "--krita-python X.Y (Debian 12: 3.11; Krita 5.2 for Windows/macOS bundles 3.10)"
            )
        say(f"Krita embeds Python {krita_python} ({where})")
    target = pykrita / PLUGIN_NAME
    target.mkdir(parents=True, exist_ok=True)
    for entry in target.iterdir():  # refresh everything but the vendored wheels
        if entry.name != "vendor":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "vendor", "*.desktop")
    for entry in PLUGIN_SOURCE.iterdir():
        if ignore(str(PLUGIN_SOURCE), [entry.name]):
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name, ignore=ignore)
        else:
            shutil.copy2(entry, target / entry.name)
    protocol_dir = target / "_protocol"
    protocol_dir.mkdir()
    (protocol_dir / "__init__.py").write_text('"""Copied from daemon/ by install.py: do not edit."""\n')
    for name in PROTOCOL_FILES:
        shutil.copy2(REPO / "daemon" / name, protocol_dir / name)
    shutil.copy2(PLUGIN_SOURCE / f"{PLUGIN_NAME}.desktop", pykrita / f"{PLUGIN_NAME}.desktop")
    say(f"installed the plugin into {target}")
    vendor_packages(target, krita_python)
    enable_in_kritarc(kritarc, True)


def uninstall(args: argparse.Namespace) -> None:
    if not args.daemon_only:
        target = args.krita_dir / PLUGIN_NAME
        if target.exists():
            shutil.rmtree(target)
            say(f"removed {target}")
        desktop = args.krita_dir / f"{PLUGIN_NAME}.desktop"
        if desktop.exists():
            desktop.unlink()
        if args.kritarc.exists():
            enable_in_kritarc(args.kritarc, False)
    if not args.plugin_only and args.venv.exists():
        if not (args.venv / VENV_MARKER).exists():
            raise InstallError(
                f"{args.venv} was not created by install.py ({VENV_MARKER} missing); not removing it"
            )
        shutil.rmtree(args.venv)
        say(f"removed {args.venv}")
    say("uninstalled")


def daemon_command(args: argparse.Namespace) -> list[str]:
    """The daemon on --model, else its own default (the bundled demo model, or random weights)."""
    if args.model is not None and not args.model.is_file():
        raise InstallError(f"--model {args.model}: no such file")
    model = ["--model", str(args.model.resolve())] if args.model else []
    return [str(venv_python(args.venv)), "-m", "daemon", *model, "--bind", f"tcp://127.0.0.1:{args.port}"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    only = p.add_mutually_exclusive_group()
    only.add_argument("--plugin-only", action="store_true", help="install only the Krita plugin")
    only.add_argument("--daemon-only", action="store_true", help="install only the daemon's environment")
    p.add_argument("--uninstall", action="store_true", help="remove the plugin and the daemon's venv")
    p.add_argument("--venv", type=Path, default=user_data_dir("krita-draggan") / "venv",
                   help="the daemon's virtual environment (default: %(default)s)")
    p.add_argument("--krita-dir", type=Path, default=default_pykrita_dir(),
                   help="Krita's pykrita folder (default: %(default)s)")
    p.add_argument("--kritarc", type=Path, default=default_kritarc(),
                   help="Krita's settings file (default: %(default)s)")
    p.add_argument("--krita-python", metavar="X.Y", help="Python version Krita embeds (default: detected)")
    p.add_argument("--no-editable", dest="editable", action="store_false",
                   help="install a copy of the project into the venv instead of linking the checkout")
    p.add_argument("--system-site-packages", action="store_true",
                   help="let the venv see this Python's packages (reuse its torch, e.g. a ROCm build)")
    p.add_argument("--torch-spec", metavar="SPEC",
                   help="pip requirement for torch, overriding the automatic choice (CPU pin without an "
                        "NVIDIA GPU, else PyPI's default torch), e.g. 'torch==2.5.1' or "
                        "'torch --index-url https://download.pytorch.org/whl/cu121'")
    p.add_argument("--run", action="store_true", help="start the daemon on the demo model when done")
    p.add_argument("--model", type=Path, help="model for --run (default: the daemon's bundled demo model)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="daemon port for --run (default: %(default)s)")
    args = p.parse_args(argv)
    if args.run and (args.plugin_only or args.uninstall):
        p.error("--run needs the daemon: it cannot go with --plugin-only or --uninstall")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if sys.version_info < MIN_PYTHON:
            need = ".".join(map(str, MIN_PYTHON))
            raise InstallError(f"Python {need}+ is needed, this is {platform.python_version()}")
        if args.uninstall:
            uninstall(args)
            return 0
        if not args.daemon_only:
            check_pip()
            install_plugin(args.krita_dir, args.kritarc, args.krita_python)
        cmd = None
        if not args.plugin_only:
            install_daemon(args.venv, args.editable, args.system_site_packages, args.torch_spec)
            cmd = daemon_command(args)
    except InstallError as e:
        print(f"[install] error: {e}", file=sys.stderr)
        return 2
    if not args.daemon_only:
        say("restart Krita, then open Settings > Dockers > DragGAN")
    if cmd:
        if args.run:
            say("starting the daemon (Ctrl-C stops it): " + " ".join(cmd))
            try:
                return subprocess.call(cmd, cwd=REPO)
            except KeyboardInterrupt:
                return 0
        say("start the daemon with:\n    " + " ".join(cmd) + "\n(add --model FILE.safetensors for others)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
