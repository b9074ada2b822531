"""install.py: kritarc merging, Krita Python detection, and real installs into temp folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import install  # noqa: E402 - the top-level script

KRITARC = """[General]
LastPreset=Basic_tip_default
[python]
enable_other_plugin=true

[MainWindow]
State=AAAA/wAAAAD9==
"""


def run_install(*args: str, home: Path | None = None, **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="400", **env_extra)  # --help shows long paths unwrapped
    if home is not None:
        env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "cfg"))
    return subprocess.run([sys.executable, str(REPO / "install.py"), *args], capture_output=True, text=True,
                          timeout=600, env=env)


# --------------------------------------------------------------------------- kritarc


def test_set_ini_value_merges_into_an_existing_section_keeping_everything_else():
    out = install.set_ini_value(KRITARC, "python", "enable_krita_draggan", "true")
    assert out.splitlines() == [
        "[General]", "LastPreset=Basic_tip_default", "[python]", "enable_other_plugin=true",
        "enable_krita_draggan=true", "", "[MainWindow]", "State=AAAA/wAAAAD9==",
    ]
    assert install.set_ini_value(out, "python", "enable_krita_draggan", "true") == out  # idempotent
    flipped = install.set_ini_value(out.replace("draggan=true", "draggan=false"), "python",
                                    "enable_krita_draggan", "true")
    assert flipped == out


def test_set_ini_value_creates_the_section_or_the_file():
    assert install.set_ini_value("", "python", "k", "v") == "[python]\nk=v\n"
    out = install.set_ini_value("[General]\na=1\n", "python", "k", "v")
    assert out == "[General]\na=1\n\n[python]\nk=v\n"


def test_remove_ini_value_only_touches_that_key_in_that_section():
    text = install.set_ini_value(KRITARC, "python", "enable_krita_draggan", "true")
    text = install.set_ini_value(text, "General", "enable_krita_draggan", "keep")
    out = install.remove_ini_value(text, "python", "enable_krita_draggan")
    assert "enable_krita_draggan=keep" in out and "enable_krita_draggan=true" not in out
    assert "enable_other_plugin=true" in out and "State=AAAA/wAAAAD9==" in out


# --------------------------------------------------------------------------- detection


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux layout")
def test_detect_krita_python_reads_the_libpython_that_kritapykrita_links(tmp_path):
    assert install.detect_krita_python(tmp_path) == (None, "not found")
    lib = tmp_path / "usr/lib/x86_64-linux-gnu/kritaplugins/kritapykrita.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF junk libpython3.11.so.1.0\x00 more")
    version, where = install.detect_krita_python(tmp_path)
    assert version == "3.11" and where.endswith("kritapykrita.so")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux layout")
def test_wheel_platforms_cover_manylinux_up_to_this_glibc():
    tags = install.wheel_platforms()
    assert tags[0].startswith("manylinux_2_17_") and tags[-1].startswith("manylinux2014_")
    assert any("manylinux_2_28_" in t for t in tags)  # pyzmq 27's wheels


def test_has_nvidia_gpu_is_false_without_nvidia_smi(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert install.has_nvidia_gpu() is False


# --------------------------------------------------------------------------- real installs


def test_plugin_install_is_complete_idempotent_and_uninstalls(tmp_path):
    pykrita, kritarc = tmp_path / "pykrita", tmp_path / "kritarc"
    kritarc.write_text(KRITARC)
    args = ("--plugin-only", "--krita-dir", str(pykrita), "--kritarc", str(kritarc), "--krita-python", "3.11")
    first = run_install(*args)
    assert first.returncode == 0, first.stderr
    plugin = pykrita / "krita_draggan"
    for name in ("__init__.py", "controller.py", "geometry.py", "_protocol/client.py"):
        assert (plugin / name).is_file(), name
    for name in ("protocol.py", "client.py"):  # the protocol is defined once: copied, not rewritten
        assert (plugin / "_protocol" / name).read_bytes() == (REPO / "daemon" / name).read_bytes()
    assert (pykrita / "krita_draggan.desktop").read_text().count("X-KDE-Library=krita_draggan") == 1
    assert not (plugin / "krita_draggan.desktop").exists()  # beside the folder, not inside
    assert (plugin / "vendor" / "zmq").is_dir() and (plugin / "vendor" / "msgpack").is_dir()
    text = kritarc.read_text()
    assert text.count("enable_krita_draggan=true") == 1
    assert "enable_other_plugin=true" in text and "State=AAAA/wAAAAD9==" in text

    # the installed copy works on its own: vendored pyzmq (cp311) and the copied protocol, no repo
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import krita_draggan.deps as d; "
        "p, c = d.protocol_modules(); import zmq; print(c.__name__, zmq.__file__)"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(pykrita)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    module, zmq_file = result.stdout.split()
    assert module == "krita_draggan._protocol.client"
    assert zmq_file.startswith(str(plugin / "vendor"))

    (plugin / "stale_module.py").write_text("x = 1\n")  # from an older version
    second = run_install(*args)
    assert second.returncode == 0, second.stderr
    assert "already in place" in second.stdout  # vendored wheels are reused
    assert not (plugin / "stale_module.py").exists()
    assert kritarc.read_text() == text

    gone = run_install("--uninstall", *args[:-2])
    assert gone.returncode == 0, gone.stderr
    assert not plugin.exists() and not (pykrita / "krita_draggan.desktop").exists()
    after = kritarc.read_text()
    assert "enable_krita_draggan" not in after and "enable_other_plugin=true" in after


def test_an_offline_reinstall_keeps_the_working_vendored_packages(tmp_path):
    pykrita, kritarc = tmp_path / "pykrita", tmp_path / "kritarc"
    args = ("--plugin-only", "--krita-dir", str(pykrita), "--kritarc", str(kritarc), "--krita-python", "3.11")
    assert run_install(*args).returncode == 0
    vendor = pykrita / "krita_draggan" / "vendor"
    (vendor / install.VENDOR_MARKER).write_text("{}")  # e.g. an older plugin version's requirements
    offline = run_install(*args, PIP_NO_INDEX="1", PIP_RETRIES="0",  # pip as on a machine offline
                          PIP_TIMEOUT="2", PIP_NO_CACHE_DIR="1", PIP_FIND_LINKS="")
    assert offline.returncode == 2 and "previously vendored packages were kept" in offline.stderr
    assert (vendor / "zmq").is_dir() and (vendor / "msgpack").is_dir()
    assert sorted(p.name for p in vendor.parent.iterdir() if p.name.startswith(".vendor")) == []


def test_torch_choice_is_said_and_can_be_overridden():
    assert install.choose_torch(None, False) == (install.CPU_TORCH, "no NVIDIA GPU: CPU build")
    req, why = install.choose_torch(None, True)
    assert req == "torch" and "unpinned" in why and "--torch-spec" in why
    assert install.choose_torch("torch==2.5.1", True) == ("torch==2.5.1", "--torch-spec")
    assert install.parse_args(["--torch-spec", "torch==2.5.1"]).torch_spec == "torch==2.5.1"


def test_default_locations_follow_home_and_xdg(tmp_path):
    result = run_install("--help", home=tmp_path)
    assert result.returncode == 0
    flat = " ".join(result.stdout.split())
    assert str(tmp_path / "data" / "krita" / "pykrita") in flat
    assert str(tmp_path / "data" / "krita-draggan" / "venv") in flat
    assert str(tmp_path / "cfg" / "kritarc") in flat


def test_bad_arguments_give_clear_errors(tmp_path):
    bad = run_install("--plugin-only", "--krita-dir", str(tmp_path / "k"), "--kritarc", str(tmp_path / "rc"),
                      "--krita-python", "three")
    assert bad.returncode == 2 and "--krita-python must look like 3.11" in bad.stderr
    clash = run_install("--plugin-only", "--run")
    assert clash.returncode == 2 and "--run needs the daemon" in clash.stderr
    (tmp_path / "notvenv").mkdir()
    (tmp_path / "notvenv" / "precious.txt").write_text("keep")
    refuse = run_install("--uninstall", "--daemon-only", "--venv", str(tmp_path / "notvenv"))
    assert refuse.returncode == 2 and "not created by install.py" in refuse.stderr
    assert (tmp_path / "notvenv" / "precious.txt").exists()


@pytest.mark.slow
def test_daemon_venv_install_and_uninstall(tmp_path):
    """The daemon side for real (reusing this Python's torch so it takes seconds, not a 200 MB install)."""
    venv = tmp_path / "venv"
    result = run_install("--daemon-only", "--venv", str(venv), "--system-site-packages")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch==2.13.0 (no NVIDIA GPU: CPU build)" in result.stdout
    assert f"{install.venv_python(venv)} -m daemon --bind tcp://127.0.0.1:5617" in result.stdout
    check = subprocess.run([str(install.venv_python(venv)), "-c",
                            "import daemon, engine, stylegan2, torch; print(daemon.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().startswith(str(REPO))  # editable: the checkout itself
    again = run_install("--daemon-only", "--venv", str(venv), "--system-site-packages")
    assert again.returncode == 0, again.stderr
    gone = run_install("--uninstall", "--daemon-only", "--venv", str(venv))
    assert gone.returncode == 0 and not venv.exists()
