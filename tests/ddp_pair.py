"""Every DDP check of the default suite in one pair of processes.

``python tests/ddp_pair.py OUT`` trains the digits baseline into ``OUT/baseline``, then starts itself as a pair
of processes (``torch.distributed.run --standalone --nproc-per-node 2``) that runs each scenario below, one after
the other, the way a cluster launcher (torchrun, SLURM) starts a job: the processes exist before the first
Trainer, so every Trainer joins the same gloo process group instead of launching its own. Rank 0 writes what each
scenario produced under ``OUT/<scenario>``; ``OUT/exit_code`` is written last, whatever happened. The tests run
the one-process counterpart and compare (``ddp_pair`` fixture in ``tests/conftest.py``, which starts this in
the background as soon as a selected test needs it). Spawning the pair once instead of once per test is what
keeps the DDP checks cheap; Lightning's own launcher from the command line keeps an end-to-end test of its own
(``tests/test_train.py``)."""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import BASELINE_TRAINING, FAST, compose_config, slim_classifier  # noqa: E402

#: train.py with the ChannelScoring callback on one training batch: scores from 999 images sharded over the ranks
SCORES_RUN = ["trainer.max_epochs=1", "++trainer.limit_train_batches=1", "++trainer.limit_val_batches=1", "test=false",
              "logger=none", "callbacks=channel_scores", "callbacks.rich_progress_bar=null", "pruning/metric=mi",
              "pruning.stats.num_images=999", "pruning.stats.batch_size=100"]
#: prune.py's job on a trained digits checkpoint, global scope (widths depend on every layer's scores)
PRUNE_RUN = FAST + ["trainer.accelerator=cpu", "finetune.max_epochs=1", "pruning.stats.num_images=512",
                    "pruning/scope=global", "pruning.target=0.5", "pruning/metric=mi"]
EXAMPLE = ROOT / "examples" / "prune_resnet18.py"


def example_args(report: Path, devices: int) -> list[str]:
    """The worked example's command line: one-shot global MI pruning, slimmed mid-fit, 2 epochs."""
    return ["--devices", str(devices), "--epochs", "2", "--slim-epoch", "1", "--schedule", "oneshot", "--report",
            str(report)]


def field_criteria_scores(out: Path, rank: int, world_size: int) -> None:
    from tests.test_field_criteria import _digits_scores

    scores = _digits_scores(rank, world_size)
    if rank == 0:
        torch.save(scores, out / "scores.pt")


def channel_scores(out: Path, rank: int, world_size: int) -> None:
    from infoprune.training import train

    train(compose_config("train", ["trainer=ddp_cpu", *SCORES_RUN], out))


def prune_widths(out: Path, rank: int, world_size: int, baseline: str) -> None:
    from infoprune.pipeline import prune

    prune(compose_config("prune", ["trainer=ddp_cpu", f"ckpt_path={baseline}", *PRUNE_RUN], out))


def worked_example(out: Path, rank: int, world_size: int) -> None:
    argv = sys.argv
    sys.argv = [str(EXAMPLE), *example_args(out / "report.json", world_size)]
    try:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    finally:
        sys.argv = argv


def masked_fine_tune(out: Path, rank: int, world_size: int, baseline: str) -> None:
    """One epoch of DDP fine-tuning under ChannelMasking (half of every layer's channels by input-L1); rank 0
    records whether the masked channels stayed zero, slims the network in memory, saves it and keeps its logits on
    the digits test images."""
    import pytorch_lightning as pl

    from infoprune.callbacks.masking import ChannelMasking, save_weights_checkpoint
    from infoprune.datamodules import DigitsDataModule
    from infoprune.models.classifier import ImageClassifier
    from infoprune.pruning.layers import find_prunable_layers
    from infoprune.pruning.masks import masked_channels_are_zero
    from infoprune.pruning.metrics import InputL1
    from infoprune.pruning.selection import select_layerwise

    module = ImageClassifier.load_from_checkpoint(baseline, weights_only=False)
    layers = find_prunable_layers(module.net, module.example_input_array)
    keep = select_layerwise({layer.name: InputL1()(layer) for layer in layers}, layers, 0.5)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=world_size, strategy="ddp", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, callbacks=[ChannelMasking(keep, network="net")])
    trainer.fit(module, datamodule=DigitsDataModule())
    if rank == 0:
        (out / "masked.json").write_text(json.dumps({"masks_zero": bool(masked_channels_are_zero(layers, keep)),
                                                     "global_step": trainer.global_step}))
        slim_classifier(module, keep)
        save_weights_checkpoint(module, out / "slim.ckpt")
        datamodule = DigitsDataModule()
        datamodule.setup("test")
        with torch.no_grad():
            logits = module.eval()(datamodule.transform_batch(datamodule.test_set.images, train=False))
        torch.save(logits, out / "slim_test_logits.pt")


def distilled_fine_tune(out: Path, rank: int, world_size: int, baseline: str) -> None:
    """Two DDP training steps of the baseline slimmed to half of every layer's channels (input-L1), distilled from the
    unpruned baseline (alpha 0.5, T 2) at learning rate 0; every rank records the loss each step returned and the
    loss recomputed by hand on its own batch (float64 soft term), gathered on rank 0."""
    import pytorch_lightning as pl

    from infoprune.callbacks.distillation import KnowledgeDistillation, frozen_copy
    from infoprune.datamodules import DigitsDataModule
    from infoprune.models.classifier import ImageClassifier
    from infoprune.pruning.layers import find_prunable_layers
    from infoprune.pruning.metrics import InputL1
    from infoprune.pruning.selection import select_layerwise
    from tests.test_distillation import kd_by_hand

    class Record(pl.Callback):
        def __init__(self) -> None:
            self.steps = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.steps.append((batch[0].clone(), batch[1].clone(), float(outputs["loss"])))

    module = ImageClassifier.load_from_checkpoint(baseline, weights_only=False)
    teacher = frozen_copy(module.net)
    layers = find_prunable_layers(module.net, module.example_input_array)
    slim_classifier(module, select_layerwise({layer.name: InputL1()(layer) for layer in layers}, layers, 0.5))
    module.hparams.optimizer["lr"] = 0.0
    record = Record()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, accelerator="cpu",
                         devices=world_size, strategy="ddp", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[KnowledgeDistillation(0.5, 2.0, teacher=teacher), record])
    trainer.fit(module, datamodule=DigitsDataModule())
    mine = {"steps": len(record.steps), "returned": [], "by_hand": [], "soft": []}
    with torch.no_grad():
        for x, y, loss in record.steps:
            logits, target = module.train()(x), teacher(x)
            soft = kd_by_hand(logits.double().numpy(), target.double().numpy(), 2.0)
            hard = torch.nn.functional.cross_entropy(logits.double(), y).item()
            mine["returned"].append(loss)
            mine["by_hand"].append(0.5 * hard + 0.5 * soft)
            mine["soft"].append(soft)
    gathered = [None] * world_size
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        (out / "losses.json").write_text(json.dumps({"world_size": world_size, "ranks": gathered}))


#: scenario name -> (function, whether it takes the baseline checkpoint)
SCENARIOS = {"field_criteria": (field_criteria_scores, False), "channel_scores": (channel_scores, False),
             "prune_widths": (prune_widths, True), "worked_example": (worked_example, False),
             "masked_fine_tune": (masked_fine_tune, True), "distilled_fine_tune": (distilled_fine_tune, True)}


def run_scenarios(out: Path, baseline: str) -> None:
    """Each scenario in this process, one of the pair (rank and world size from the launcher's environment)."""
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    for name, (scenario, needs_baseline) in SCENARIOS.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        scenario(folder, rank, world_size, *([baseline] if needs_baseline else []))
        dist.barrier()
    dist.destroy_process_group()


def main(out: Path) -> int:
    """The baseline, then the pair; returns the pair's exit code (also written to ``OUT/exit_code``)."""
    code = 1
    try:
        from infoprune.training import train

        train(compose_config("train", BASELINE_TRAINING, out / "baseline"))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   __file__, str(out), str(out / "baseline" / "checkpoints" / "last.ckpt")]
        code = subprocess.run(command, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")).returncode
    finally:
        (out / "exit_code").write_text(str(code))
    return code


if __name__ == "__main__":
    if "LOCAL_RANK" in os.environ:  # one of the pair
        run_scenarios(Path(sys.argv[1]), sys.argv[2])
    else:
        sys.exit(main(Path(sys.argv[1])))
