"""Where does a training step's time go? Training images/s of a plain PyTorch loop and of ``ImageClassifier`` under a
Lightning Trainer configured as ``train.py`` configures it (same network, in-memory data, augmentation and
optimizer), for SimpleNet x0.25 on CIFAR-10-JPEG and LeNet-5 on MNIST, and the effect of every speed setting:
channels-last memory format (``model.channels_last``), ``torch.compile`` of the network (``model.compile``),
bfloat16 autocast (``trainer.precision=bf16-mixed``) and, for sweeps, two one-thread jobs side by side against one
two-thread job (images/s of the whole machine).

    DATA_DIR=../shared/datasets python -m benchmarks.train_throughput [--repeats 2] [--batches N] [--warmup 3]
        [--clock wall|cpu] [--networks lenet5] [--no-compile]

Steady state only: the first ``--warmup`` batches (allocator warm-up, compilation) are not timed, nor is the
Trainer's set-up. Each figure is the best of ``--repeats`` rounds in which every measurement runs once in turn
(interference only ever slows a run down, and drift hits every figure of a round alike);
the timed batches default to about ten seconds of training per measurement (bfloat16 autocast, an order of magnitude
slower where the CPU has no bf16 units, is measured once on a twelfth of them). Without the datasets under
DATA_DIR, synthetic images of the same shapes are used. ``--clock cpu`` counts this process's CPU seconds instead
of wall seconds, for a machine that other jobs keep busy (the side-by-side machine rows are then left out). Last
line: JSON with ``lightning_over_plain_<network>`` (the current configuration against the plain loop in the same
memory format; goal: at least 0.95), ``bare_lightning_over_plain_<network>`` (the same without callbacks and
loggers: what Lightning's own loop costs), ``best_over_current_<network>`` and every measured images/s."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from benchmarks.common import SyntheticCIFAR, cifar_datamodule, compose, print_json, scratch_dir
from infoprune.builders import build_model
from infoprune.datamodules import InMemoryImageDataModule, MNISTDataModule
from infoprune.training import build_trainer

#: network -> (train.py overrides that configure it, batch size, timed batches by default)
NETWORKS = {
    "simplenet": (["experiment=simplenet_cifar10_cpu"], 128, 24),
    "lenet5": (["experiment=lenet5_mnist"], 64, 300),
}
#: speed settings measured under Lightning, as train.py overrides
SETTINGS = {
    "current": [],
    "channels_last": ["model.channels_last=true"],
    "compile": ["model.compile=true"],
    "compile+channels_last": ["model.compile=true", "model.channels_last=true"],
    "bf16_autocast": ["trainer.precision=bf16-mixed"],
    # not a speed setting: the current configuration without callbacks (progress bar, checkpoints, model summary)
    # and loggers, which leaves Lightning's own training loop as the only difference from the plain loop
    "bare": ["callbacks=none", "logger=none"],
}


class SyntheticMNIST(SyntheticCIFAR):
    """MNIST-shaped random uint8 images (used when the real MNIST is not under DATA_DIR)."""

    name, in_channels, image_size = "synthetic MNIST", 1, 28
    mean, std = (0.1307,), (0.3081,)

    def load(self, train: bool):
        g = torch.Generator().manual_seed(int(train))
        n = 60000 if train else 10000
        return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,))


def datamodule(network: str, batch_size: int) -> InMemoryImageDataModule:
    """The network's dataset from DATA_DIR when present, else synthetic images of its shape."""
    if network == "simplenet":
        return cifar_datamodule(batch_size)
    data_dir = os.environ.get("DATA_DIR")
    if data_dir and (Path(data_dir) / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        dm = MNISTDataModule(data_dir=data_dir, batch_size=batch_size, crop_padding=0)
    else:
        dm = SyntheticMNIST(batch_size=batch_size, crop_padding=0, flip=False)
    dm.setup()
    return dm


def config(network: str, setting: list[str], batches: int):
    """The train.py config of ``network`` with ``setting``, stopped after ``batches`` training batches and without
    validation (not part of training throughput), writing to a temporary folder."""
    overrides, batch_size, _ = NETWORKS[network]
    return compose("train", overrides + setting + [
        "trainer.max_epochs=1", f"+trainer.limit_train_batches={batches}", "+trainer.limit_val_batches=0",
        "trainer.accelerator=cpu", f"datamodule.batch_size={batch_size}", "test=false"],
        scratch_dir("train_throughput-"))


#: what a measurement's seconds are: wall time, or the CPU time of this process (all its threads), which other
#: processes on a shared machine inflate far less
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class StepClock(pl.Callback):
    """``clock`` time from the start of training batch ``warmup`` to the end of the last one."""

    def __init__(self, warmup: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.warmup, self.clock, self.start, self.end, self.batches = warmup, clock, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.end, self.batches = self.clock(), self.batches + 1


def lightning_images_per_s(network: str, setting: list[str], batches: int, warmup: int,
                           clock: Callable[[], float] = time.perf_counter) -> float:
    """Steady-state training images/s of ImageClassifier in the Trainer train.py builds."""
    batch_size = NETWORKS[network][1]
    data = datamodule(network, batch_size)
    cfg = config(network, setting, batches + warmup)
    torch.manual_seed(0)
    model = build_model(cfg, data)
    steps = StepClock(warmup, clock)
    trainer = build_trainer(cfg)
    trainer.callbacks.append(steps)
    trainer.fit(model, datamodule=data)
    return steps.batches * batch_size / (steps.end - steps.start)


def plain_images_per_s(network: str, batches: int, warmup: int, channels_last: bool = False,
                       compile_net: bool = False, bf16: bool = False,
                       clock: Callable[[], float] = time.perf_counter) -> float:
    """Steady-state training images/s of the same network, data, augmentation and optimizer in a plain loop."""
    batch_size = NETWORKS[network][1]
    data = datamodule(network, batch_size)
    cfg = config(network, [], batches + warmup)
    torch.manual_seed(0)
    model = build_model(cfg, data)
    net = model.net.train()
    optimizer = model.configure_optimizers()["optimizer"]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    forward = torch.compile(net) if compile_net else net
    loader = iter(data.train_dataloader())
    start, done = None, 0
    for i in range(batches + warmup):
        if i == warmup:
            start = clock()
        images, labels = next(loader)
        x = data.transform_batch(images, train=True).contiguous(memory_format=memory_format)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x), labels)
        loss.backward()
        optimizer.step()
        done += i >= warmup
    return done * batch_size / (clock() - start)


def current_uses_channels_last(network: str) -> bool:
    """Whether train.py's current configuration of ``network`` trains channels-last on this machine."""
    batch_size = NETWORKS[network][1]
    return build_model(config(network, [], 1), datamodule(network, batch_size)).uses_channels_last()


def machine_images_per_s(network: str, jobs: int, batches: int, warmup: int) -> float:
    """Images/s of the whole machine with ``jobs`` plain-loop processes side by side, each with
    ``cores / jobs`` threads."""
    threads = max(1, (os.cpu_count() or 2) // jobs)
    cmd = [sys.executable, "-m", "benchmarks.train_throughput", "--plain-only", network, "--batches", str(batches),
           "--warmup", str(warmup)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
    return sum(float(p.communicate()[0].strip().splitlines()[-1]) for p in procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, help="timed training batches per measurement (default: per network)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of measurements (the best of each figure is kept)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile settings (quick runs)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (for a machine other jobs share; no machine rows)")
    parser.add_argument("--plain-only", choices=list(NETWORKS), help=argparse.SUPPRESS)  # one process of a sweep
    args = parser.parse_args()
    if args.plain_only:
        print(plain_images_per_s(args.plain_only, args.batches, args.warmup))
        return

    def round_robin(measures: dict[str, Callable[[], float]]) -> dict[str, float]:
        """Best of ``--repeats`` rounds, every measurement once per round in turn, so a machine that drifts
        (other tenants, clock changes) slows every figure alike instead of skewing their ratios."""
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, measure in measures.items():
                best[name] = max(best.get(name, 0.0), measure())
        return best

    clock = CLOCKS[args.clock]
    figures: dict[str, float | int | str] = {"threads": torch.get_num_threads(), "clock": args.clock,
                                             "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    rows = []
    for network in args.networks:
        n = args.batches or NETWORKS[network][2]
        slow = max(2, n // 12)
        reference = "channels_last" if current_uses_channels_last(network) else "contiguous"
        timed = {
            "plain/contiguous": lambda: plain_images_per_s(network, n, args.warmup, clock=clock),
            "plain/channels_last": lambda: plain_images_per_s(network, n, args.warmup, channels_last=True,
                                                              clock=clock),
            **({} if args.no_compile else
               {"plain/compile": lambda: plain_images_per_s(network, n, args.warmup, compile_net=True, clock=clock)}),
            **{f"lightning/{name}": (lambda setting=setting: lightning_images_per_s(network, setting, n, args.warmup,
                                                                                    clock))
               for name, setting in SETTINGS.items() if "bf16" not in name
               and not (args.no_compile and "compile" in name)},
            **({} if args.clock == "cpu" else
               {f"machine/{jobs}x{2 // jobs}": (lambda jobs=jobs: machine_images_per_s(network, jobs, n, args.warmup))
                for jobs in (1, 2)}),
        }
        measured = round_robin(timed)
        # bfloat16 autocast: an order of magnitude slower without bf16 units, measured once on fewer batches
        measured["plain/bf16_autocast"] = plain_images_per_s(network, slow, 1, bf16=True, clock=clock)
        measured["lightning/bf16_autocast"] = lightning_images_per_s(network, SETTINGS["bf16_autocast"], slow, 1,
                                                                     clock)
        plain = {k.split("/")[1]: v for k, v in measured.items() if k.startswith("plain/")}
        lightning = {k.split("/")[1]: v for k, v in measured.items() if k.startswith("lightning/")}
        machine = {k.split("/")[1]: v for k, v in measured.items() if k.startswith("machine/")}
        # like with like: the plain loop in the memory format the current configuration trains in
        figures[f"lightning_over_plain_{network}"] = round(lightning["current"] / plain[reference], 3)
        figures[f"bare_lightning_over_plain_{network}"] = round(lightning["bare"] / plain[reference], 3)
        winner = max((name for name in lightning if name != "bare"), key=lightning.get)
        figures[f"best_setting_{network}"] = winner
        figures[f"best_over_current_{network}"] = round(lightning[winner] / lightning["current"], 3)
        if machine:
            figures[f"two_jobs_over_one_{network}"] = round(machine["2x1"] / machine["1x2"], 3)
        for kind, values in (("plain", plain), ("lightning", lightning), ("machine", machine)):
            for name, value in values.items():
                figures[f"{network}/{kind}/{name}"] = round(value, 1)
                rows.append((network, kind, name, value))
                print(f"measured: {network} {kind} {name} {value:.1f} images/s", file=sys.stderr, flush=True)
    print(f"{'network':10s}{'loop':11s}{'setting':24s}{'images/s':>10s}")
    for network, kind, name, value in rows:
        print(f"{network:10s}{kind:11s}{name:24s}{value:>10.1f}")
    print(f"(CPU {figures['cpu_capability']}, {figures['threads']} threads, {args.clock} clock; 'machine': jobs x "
          f"threads per job, plain loops side by side, images/s summed; 'bare': Lightning without callbacks and "
          f"loggers)")
    print_json(figures)


if __name__ == "__main__":
    main()
