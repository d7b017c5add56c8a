"""Where does a pruning job's wall time go? Runs one ``prune.py`` job with the network's forward passes and every
backward pass timed, and prints its per-phase table (``results.json``'s ``phase_s``) and the share of the wall time
spent outside the network's forward and backward passes (Trainer set-up, data, metrics, logging, checkpoints,
statistics bookkeeping, the pipeline itself).

    DATA_DIR=../shared/datasets python -m benchmarks.job_time_budget ckpt_path=<baseline.ckpt> \\
        experiment=cpu/layerwise_cifar10_jpeg pruning/metric=wmi_l1 [more prune.py overrides]

Goal: under 10% outside the network. Last line: JSON with ``outside_network_share``, ``wall_s``, ``forward_s``,
``backward_s`` and every phase's seconds."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager

import torch
from hydra.utils import get_class

from benchmarks.common import compose, print_json, scratch_dir
from infoprune.pipeline import prune


@contextmanager
def timing(owner: type, method: str, totals: dict[str, float], key: str):
    """Add the wall time of every call of ``owner.method`` to ``totals[key]`` (calls nested in a timed call of the
    same method count once)."""
    original = getattr(owner, method)
    depth = [0]

    def timed(*args, **kwargs):
        depth[0] += 1
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                totals[key] += time.perf_counter() - start

    setattr(owner, method, timed)
    try:
        yield
    finally:
        setattr(owner, method, original)


def main() -> None:
    overrides = sys.argv[1:]
    if any(arg in ("-h", "--help") for arg in overrides):
        print(__doc__)
        return
    out = scratch_dir("job_time_budget-")
    cfg = compose("prune", overrides, out)
    network = get_class(cfg.model.net._target_)
    totals = {"forward_s": 0.0, "backward_s": 0.0}
    with timing(network, "forward", totals, "forward_s"), timing(torch.Tensor, "backward", totals, "backward_s"):
        results = prune(cfg)
    wall = results["wall_s"]
    network_s = totals["forward_s"] + totals["backward_s"]
    print(f"\n{'phase':34s}{'seconds':>10s}{'share':>8s}")
    for phase, seconds in results["phase_s"].items():
        print(f"{phase:34s}{seconds:>10.1f}{seconds / wall:>8.1%}")
    print(f"{'(outside every phase)':34s}{wall - sum(results['phase_s'].values()):>10.1f}")
    print(f"{'whole job':34s}{wall:>10.1f}")
    print(f"network forward {totals['forward_s']:.1f} s + backward {totals['backward_s']:.1f} s = {network_s:.1f} s; "
          f"outside the network: {1 - network_s / wall:.1%} of the wall time ({torch.get_num_threads()} threads)")
    print_json({"outside_network_share": round(1 - network_s / wall, 4), "wall_s": round(wall, 1),
                **{k: round(v, 1) for k, v in totals.items()},
                **{f"phase/{k}": round(v, 1) for k, v in results["phase_s"].items()}})


if __name__ == "__main__":
    main()
