"""Several drag sessions of one generator stepped as one batch.

On a GPU one session's step is bound by kernel launches and tiny kernels, not by arithmetic, so
N sessions cost far less as one batch of N than as N steps. StyleGAN2's synthesis treats every
sample on its own (no batch statistics), so a session's features, tracking, loss and gradient
are the same in the batch as alone: the losses are summed and differentiated once, and each
session's latent gets exactly its own gradient. Each session keeps its own Adam state, points,
targets and stop rule; a session that has converged skips its update as when stepped alone.

Sessions can share a batch only when the forward is the same program for all of them: same
generator object, feature block, noise mode, autocast, modconv and number of optimised layers
(`batch_key`). With compile="cudagraph" for all of them the whole batched step is captured as one
CUDA graph, kept until the group changes or one of its sessions changes something a graph holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Sequence

import numpy as np
import torch

from .errors import DragInputError
from .fast_step import GraphedCompute
from .session import DragSession, StepOutputs, StepResult, step_outputs


def batch_key(session: DragSession) -> Hashable:
    """Sessions with equal keys can be stepped as one batch."""
    p = session.params
    return (id(session.G), session.feature_name, p.noise_mode, p.autocast, p.modconv, p.num_layers, p.compile)


class BatchStepper:
    """Steps a group of sessions (equal `batch_key`) together; holds the group's CUDA graph.

    Only one graph is kept (the last group's): a daemon's running group changes as drags start
    and end, and every graph holds its own memory pool. The sessions keep their own graphs, so
    stepping them alone again costs no capture.
    """

    def __init__(self) -> None:
        self._graph: GraphedCompute[list[StepOutputs]] | None = None
        self._graph_of: tuple | None = None  # the sessions (and their graph versions) it was captured for

    def step(self, sessions: Sequence[DragSession]) -> list[StepResult]:
        """One step of every session; the same results as stepping each alone (up to float rounding)."""
        sessions = list(sessions)
        if not sessions:
            return []
        if len({id(s) for s in sessions}) != len(sessions):
            raise DragInputError("a session appears twice in one batch")
        keys = {batch_key(s) for s in sessions}
        if len(keys) != 1:
            raise DragInputError(
                "these sessions cannot share a batch: they differ in generator, feature block, noise "
                "mode, autocast, modconv, num_layers or compile (see engine.batch.batch_key)"
            )
        with contextlib.ExitStack() as locks:
            for s in sorted(sessions, key=id):  # one global order: no deadlock with other lockers
                locks.enter_context(s._lock)
            outputs = self._outputs(sessions)
            packed = torch.cat([out[3] for out in outputs])
            host = packed.cpu().numpy().astype(np.float64)  # one device -> host transfer for all
            results, offset = [], 0
            for s, (ws, points, grad, _) in zip(sessions, outputs, strict=True):
                size = s._packed_size()
                results.append(s._apply_step(ws, points, grad, host[offset : offset + size]))
                offset += size
            return results

    def drop_graph(self) -> None:
        self._graph = None
        self._graph_of = None

    def _outputs(self, sessions: list[DragSession]) -> list[StepOutputs]:
        if sessions[0].params.compile == "none":
            return step_outputs(sessions)
        group = tuple(s.graph_version for s in sessions)  # unique per session and state
        if self._graph is None or self._graph_of != group:
            self.drop_graph()  # free the old pool before capturing the new one
            self._graph = GraphedCompute(lambda: step_outputs(sessions), sessions[0].device)
            self._graph_of = group
        return self._graph()
