"""Batched drag steps in a real daemon: running drags of one model step as one batch, and give the
same results as the same drags stepped one after another (`--batch-steps off`)."""

from __future__ import annotations

import numpy as np

from daemon.client import Client

FAR = {"stop_distance": 0.0}  # never converges: runs end by max_steps
DRAGS = [  # (seed, handles, targets, max_steps): different lengths, so the batch shrinks mid-run
    (21, [[80, 80]], [[110, 84]], 6),
    (22, [[150, 150], [100, 170]], [[150, 120], [92, 180]], 9),
    (23, [[128, 60]], [[140, 70]], 4),
]


def _final_latents(endpoint: str) -> list[np.ndarray]:
    with Client(endpoint) as client:
        streams = [
            client.start_drag(
                client.generate(seed=seed).latent, h, t, params=FAR, max_steps=n, previews=False, wait=False
            )
            for seed, h, t, n in DRAGS
        ]
        done = [s.wait() for s in streams]
        assert [d.content["reason"] for d in done] == ["max_steps"] * len(DRAGS)
        assert [sum(e.type == "drag_step" for e in s.events) for s in streams] == [n for *_, n in DRAGS]
        latents = [np.frombuffer(d.latent().data, "<f4").reshape(d.latent().shape) for d in done]
        for s in streams:
            client.close_session(s.session)
        return latents


def test_batched_steps_match_one_by_one(start_daemon):
    batched = start_daemon("--batch-steps", "on", "--log-level", "debug")
    one_by_one = start_daemon("--batch-steps", "off")
    a, b = _final_latents(batched.endpoint), _final_latents(one_by_one.endpoint)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=5e-5)
    log = batched.log()
    assert "stepping 3 drags as one batch" in log or "stepping 2 drags as one batch" in log, log[-2000:]
    assert "stepping them one by one" not in log
