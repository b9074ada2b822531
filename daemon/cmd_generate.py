"""`draggan generate`: one image from a seed, written as PNG (the quickest end-to-end check)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "heads-256.safetensors"


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="model file (.safetensors or NVIDIA .pkl), or 'random:PRESET' for random weights; "
        "default: the bundled demo model, else random:demo-256",
    )
    p.add_argument("--seed", type=int, default=0, help="latent seed (reference RandomState convention)")
    p.add_argument("--psi", type=float, default=0.7, help="truncation psi")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps")
    p.add_argument("--out", type=Path, default=Path("generated.png"), help="output PNG path")


def load_any_model(spec: str | None, device: str = "cpu"):
    """Load a model by path, or build a random one for 'random:PRESET'."""
    from stylegan2.presets import random_generator

    if spec is None:
        spec = str(DEFAULT_MODEL) if DEFAULT_MODEL.is_file() else "random:demo-256"
    if spec.startswith("random:"):
        return random_generator(spec.split(":", 1)[1]).to(device), spec
    try:
        from stylegan2.loading import load_model
    except ImportError:  # pragma: no cover - older checkouts
        from stylegan2.model_file import load_generator as load_model
    return load_model(spec, device=device), spec


def run_generate(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from engine.latent import resolve_device
    from stylegan2 import seed_to_z, to_uint8_image

    device = resolve_device(args.device)
    G, name = load_any_model(args.model, device=str(device))
    with torch.no_grad():
        z = seed_to_z(args.seed, G.z_dim).to(device)
        ws = G.mapping(z, None, truncation_psi=args.psi)
        img = G.synthesis(ws, noise_mode="const")
    Image.fromarray(to_uint8_image(img)[0]).save(args.out)
    print(
        f"wrote {args.out} ({G.img_resolution}x{G.img_resolution}, model {name}, "
        f"seed {args.seed}, psi {args.psi})"
    )
    return 0
