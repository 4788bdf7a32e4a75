"""A rank of the 2-process gloo runs of ``test_distributed.py``, and their launcher.

Run as a script by every rank (``RANK``, ``WORLD_SIZE``, ... set by :func:`launch`, as
``torchrun`` would): it trains the runs the tests compare with one process, into
``<root>/two``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The runs of the 2-process launch, (method, profile overrides): one step of 64 images.
ONE_STEP = {"train_examples": 64}
TWO_EPOCHS = {"recipe": {"epochs": 2}}
EQUAL_STEP_METHODS = ("pgd_at", "trades", "adt_exp", "adt_exp_am", "adt_imp_am")
DATA = "mnist5k-head.pt"


def smoke(**changes):
    from adt.config.profiles import get_profile

    return get_profile("smoke", **changes)


class Interrupt(Exception):
    """Stops the 2-epoch run at the start of its second epoch."""


def _stop(epoch: int, batch: int) -> None:
    if epoch == 1:
        raise Interrupt


def _rank(root: Path) -> None:
    import torch

    from adt.core.data import DATASETS, ImageDataset
    from adt.training import distributed as ddp
    from adt.training.loop import train

    torch.set_num_threads(1)
    ctx, device = ddp.init_from_env("cpu")
    assert ctx.world_size == 2 and device == torch.device("cpu")
    data = ImageDataset(DATASETS["mnist5k"], *torch.load(root / DATA))
    out = root / "two"
    try:
        for method in EQUAL_STEP_METHODS:
            train(smoke(**ONE_STEP), method, data=data, device=device, runs_root=out,
                  progress=False)
        train(smoke(), "adt_exp", data=data, device=device, runs_root=out, progress=False)
        _conditioning(data, ctx, device, root)
        try:
            train(smoke(**TWO_EPOCHS), "pgd_at", data=data, device=device, runs_root=out,
                  progress=False, on_batch_end=_stop)
        except Interrupt:
            pass
        ddp.barrier()  # neither rank leaves the group while the other is still in a collective
    finally:
        ddp.torch_dist_cleanup()


def conditioning_setup(data):
    """A seeded SmallCNN, the AM maximiser of the smoke profile, and a batch of 64."""
    import torch

    from adt.core.data import to_float
    from adt.core.models import SmallCNN
    from adt.method.methods import build_maximizer

    torch.manual_seed(5)
    model = SmallCNN(1, 10, width=8, hidden=32)
    am = build_maximizer("adt_exp_am", smoke().methods, data.spec, 0.3)
    return model, am, to_float(data.x_train[:64]), data.y_train[:64]


def _conditioning(data, ctx, device, root: Path) -> None:
    """The AM generators' raw input [x, g1, g2] of this rank's rows, as the DDP epoch
    computes it (through DistributedClassifier, under wrapped_maximizer)."""
    import torch

    from adt.method.amortized import gradient_conditioning
    from adt.training import distributed as ddp

    model, am, x, y = conditioning_setup(data)
    classifier = ddp.DistributedClassifier(model, device)
    xs, ys = ddp.shard(x, y, ctx)
    with ddp.wrapped_maximizer(am, ctx, device):
        cond = gradient_conditioning(classifier, xs, ys, am.epsilon, am.conditioning,
                                     am.batch_share)
    torch.save(cond, root / f"conditioning-rank{ctx.rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(root: Path, mnist, nproc: int = 2, timeout: float = 240) -> None:
    """Run :func:`_rank` in ``nproc`` processes joined by gloo, on the first images of the
    dataset ``mnist`` (handed over in a file: parsing mnist5k takes seconds); raise with the
    ranks' output if one fails."""
    import torch

    small = mnist.subset(train=256, test=64)
    torch.save((small.x_train, small.y_train, small.x_test, small.y_test), root / DATA)
    port = _free_port()
    procs = []
    for rank in range(nproc):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, __file__, str(root)], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"ranks failed {failed}:\n" + "\n".join(o[-3000:] for o in outputs))


if __name__ == "__main__":
    _rank(Path(sys.argv[1]))
    # gloo's worker threads can abort the interpreter's teardown ("terminate called without
    # an active exception", SIGABRT) after a rank has finished its work: leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
