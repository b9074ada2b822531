"""Generator architecture: shapes, dtypes, determinism, truncation, early stop."""

from __future__ import annotations

import pytest
import torch

from stylegan2 import Generator, networks, seed_to_z, to_uint8_image

CONFIGS = [
    dict(img_resolution=32, channel_base=512, channel_max=32, architecture="skip"),
    dict(img_resolution=32, channel_base=512, channel_max=32, architecture="orig"),
    dict(img_resolution=64, channel_base=1024, channel_max=32, architecture="resnet"),
    dict(img_resolution=16, channel_base=256, channel_max=16, architecture="skip", img_channels=1),
]


def make(cfg: dict, c_dim: int = 0, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    cfg = dict(cfg)
    channels = cfg.pop("img_channels", 3)
    return Generator(
        z_dim=64, c_dim=c_dim, w_dim=64, img_channels=channels, mapping_kwargs={"num_layers": 2}, **cfg
    ).eval()


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c['img_resolution']}-{c['architecture']}")
def test_shapes_and_dtypes(cfg: dict) -> None:
    G = make(cfg)
    z = torch.randn(3, 64)
    ws = G.mapping(z, None)
    log2 = cfg["img_resolution"].bit_length() - 1
    # NVIDIA: 2 convs per block except b4 (1), plus the last torgb.
    assert G.num_ws == 2 * (log2 - 2) + 2
    assert ws.shape == (3, G.num_ws, 64) and ws.dtype == torch.float32
    img = G.synthesis(ws, noise_mode="const")
    channels = cfg.get("img_channels", 3)
    assert img.shape == (3, channels, cfg["img_resolution"], cfg["img_resolution"])
    assert img.dtype == torch.float32
    assert torch.isfinite(img).all()
    u8 = to_uint8_image(img)
    assert (
        u8.shape == (3, cfg["img_resolution"], cfg["img_resolution"], channels) and u8.dtype.name == "uint8"
    )


def test_nvidia_parameter_names() -> None:
    G = make(CONFIGS[2])
    names = set(G.state_dict())
    for expected in [
        "mapping.fc0.weight",
        "mapping.fc1.bias",
        "mapping.w_avg",
        "synthesis.b4.const",
        "synthesis.b4.resample_filter",
        "synthesis.b4.conv1.affine.weight",
        "synthesis.b4.conv1.noise_const",
        "synthesis.b4.conv1.noise_strength",
        "synthesis.b8.conv0.weight",
        "synthesis.b8.conv0.resample_filter",
        "synthesis.b8.skip.weight",
        "synthesis.b64.torgb.affine.bias",
        "synthesis.b64.torgb.weight",
    ]:
        assert expected in names, expected
    assert "synthesis.b8.torgb.weight" not in names  # resnet: only the last block has torgb


def test_determinism_for_fixed_seed() -> None:
    a = make(CONFIGS[0], seed=3)
    b = make(CONFIGS[0], seed=3)
    z = seed_to_z(42, 64)
    assert torch.equal(seed_to_z(42, 64), z)
    ia = a(z, None, truncation_psi=0.7, noise_mode="const")
    ib = b(z, None, truncation_psi=0.7, noise_mode="const")
    assert torch.equal(ia, ib)
    assert not torch.equal(ia, a(seed_to_z(43, 64), None, noise_mode="const"))


def test_seed_to_z_matches_reference_convention() -> None:
    import numpy as np

    z = seed_to_z(7, 512)
    ref = np.random.RandomState(7).randn(1, 512).astype("float32")
    assert np.array_equal(z.numpy(), ref)
    with pytest.raises(ValueError, match="seed"):
        seed_to_z(-1, 512)


def test_truncation() -> None:
    G = make(CONFIGS[0])
    G.mapping.w_avg.normal_()
    z = torch.randn(2, 64)
    w1 = G.mapping(z, None)
    w0 = G.mapping(z, None, truncation_psi=0.0)
    assert torch.allclose(w0, G.mapping.w_avg.expand_as(w0))
    wh = G.mapping(z, None, truncation_psi=0.5)
    assert torch.allclose(wh, (w1 + w0) / 2, atol=1e-6)
    wc = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=3)
    assert torch.allclose(wc[:, :3], wh[:, :3]) and torch.equal(wc[:, 3:], w1[:, 3:])


def test_noise_modes() -> None:
    G = make(CONFIGS[0])
    for m in G.modules():
        if hasattr(m, "noise_strength"):
            m.noise_strength.data.fill_(0.5)
    ws = G.mapping(torch.randn(1, 64), None)
    const1 = G.synthesis(ws, noise_mode="const")
    assert torch.equal(const1, G.synthesis(ws, noise_mode="const"))
    assert not torch.equal(G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random"))
    assert not torch.equal(const1, G.synthesis(ws, noise_mode="none"))
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="loud")


def test_class_conditioning() -> None:
    G = make(CONFIGS[0], c_dim=4)
    z = torch.randn(2, 64)
    c = torch.eye(4)[:2]
    ws = G.mapping(z, c)
    assert not torch.equal(ws[0], G.mapping(z, torch.eye(4)[2:4])[0])
    assert "mapping.embed.weight" in G.state_dict()
    with pytest.raises(ValueError, match="class-conditional"):
        G.mapping(z, None)


@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=lambda c: c["architecture"])
def test_early_stop_features_equal_full_run(cfg: dict) -> None:
    G = make(cfg)
    ws = G.mapping(torch.randn(2, 64), None)
    img_full, full = G.synthesis(ws, return_features=True, noise_mode="const")
    assert img_full is not None and list(full) == G.synthesis.block_names()
    for name in G.synthesis.block_names():
        img, part = G.synthesis(ws, stop_after=name, return_features=True, noise_mode="const")
        assert img is None
        assert list(part) == G.synthesis.block_names()[: len(part)] and list(part)[-1] == name
        for k, v in part.items():
            assert torch.equal(v, full[k]), (name, k)


def test_feature_block_is_b128_at_256_and_above() -> None:
    G = Generator(512, 0, 512, 256, 3, channel_base=256, channel_max=8, mapping_kwargs={"num_layers": 1})
    assert G.feature_block_name(6) == "b128"
    assert G.num_ws == 14


def test_bad_inputs() -> None:
    G = make(CONFIGS[0])
    with pytest.raises(ValueError, match="ws must have shape"):
        G.synthesis(torch.zeros(1, 3, 64))
    with pytest.raises(ValueError, match="unknown block"):
        G.synthesis(torch.zeros(1, G.num_ws, 64), stop_after="b999", return_features=True)
    with pytest.raises(ValueError, match="power of two"):
        Generator(64, 0, 64, 48, 3)
    with pytest.raises(ValueError, match="architecture"):
        Generator(64, 0, 64, 32, 3, architecture="unet")


def test_gradients_flow_to_ws_only_up_to_the_stop_block() -> None:
    G = make(CONFIGS[0]).requires_grad_(False)
    ws = G.mapping(torch.randn(1, 64), None).detach().requires_grad_(True)
    _, feats = G.synthesis(ws, stop_after="b16", return_features=True, noise_mode="const")
    feats["b16"].square().mean().backward()
    grad = ws.grad[0].abs().sum(dim=1)
    # b4: ws 0; b8: ws 1-2; b16: ws 3-4; later ws (b32 and torgb) get no gradient.
    assert (grad[:5] > 0).all() and (grad[5:] == 0).all()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "split"])
@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=lambda c: f"{c['img_resolution']}-{c['architecture']}")
@pytest.mark.parametrize(
    "noise_mode,offset_limit",
    [("const", None), ("const", 0), ("none", None), ("random", None)],
    ids=["const", "const-bias-apart", "none", "random"],
)
def test_frozen_constants_compute_the_same_function(
    cfg: dict, fused: bool, noise_mode: str, offset_limit: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen layers derive demodulation sums, weight/bias casts and const noise once, and fold the
    activation gain, noise and bias in; the image and the gradient w.r.t. ws must be those of the
    per-call formulation (trainable weights)."""
    if offset_limit is not None:  # layers too large for a [C, H, W] offset keep the bias apart
        monkeypatch.setattr(networks, "_MAX_FOLDED_OFFSET", offset_limit)
    trainable = make(cfg)
    gen = torch.Generator().manual_seed(7)  # nonzero biases and noise strengths (both init to 0)
    state = {
        k: torch.randn(v.shape, generator=gen) * 0.3 if k.endswith(("bias", "noise_strength")) else v
        for k, v in trainable.state_dict().items()
    }
    trainable.load_state_dict(state)
    frozen = make(cfg).requires_grad_(False)
    frozen.load_state_dict(state)
    ws = trainable.mapping(torch.randn(2, 64), None).detach()
    out = {}
    for name, G in (("trainable", trainable), ("frozen", frozen)):
        w = ws.clone().requires_grad_(True)
        torch.manual_seed(5)  # the same random noise for both
        img = G.synthesis(w, noise_mode=noise_mode, fused_modconv=fused)
        (grad,) = torch.autograd.grad(img.square().mean(), [w])
        out[name] = (img.detach(), grad)
    torch.testing.assert_close(out["frozen"][0], out["trainable"][0], rtol=1e-5, atol=1e-5)
    scale = out["trainable"][1].abs().max().item()
    torch.testing.assert_close(out["frozen"][1], out["trainable"][1], rtol=1e-4, atol=1e-5 * scale)


def test_frozen_constants_follow_in_place_weight_edits() -> None:
    """The cache is keyed by each tensor's version counter: editing, reloading or replacing a frozen
    weight must never leave a stale demodulation sum, bias or noise behind."""
    G = make(CONFIGS[0]).requires_grad_(False)
    ws = G.mapping(torch.randn(1, 64), None)
    G.synthesis(ws, noise_mode="const")  # fills the cache
    layer = G.synthesis.b8.conv1
    with torch.no_grad():
        layer.weight.mul_(-1.5)
        layer.bias.add_(0.3)
        layer.noise_strength.fill_(0.7)
    G.synthesis.b16.conv0.load_state_dict({**G.synthesis.b16.conv0.state_dict(), "bias": torch.ones(32)})
    fresh = make(CONFIGS[0]).requires_grad_(False)
    fresh.load_state_dict(G.state_dict())
    assert torch.equal(G.synthesis(ws, noise_mode="const"), fresh.synthesis(ws, noise_mode="const"))
    assert not any("frozen" in name for name in G.state_dict())
