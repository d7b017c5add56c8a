"""Connection pruning as a job (CEP, HCEP, magnitude, LAMP, SNIP): per step, every connection's error on the
calibration images -> masks to the step's density (through the ``ConnectionPruning`` callback, as in a user's
Trainer) -> retraining; then the final retraining with masks, the masks made permanent, and the sparse files
written and measured."""
from __future__ import annotations

from typing import Any

from infoprune.callbacks.cep import ConnectionPruning, make_permanent
from infoprune.config import resolved
from infoprune.io import atomic_save
from infoprune.job import Job
from infoprune.models.classifier import ImageClassifier
from infoprune.pruning.cep import density_schedule, prunable_weights
from infoprune.pruning.cost import count_flops, count_parameters, output_positions
from infoprune.pruning.sparse import save_sparse


class ConnectionRun(Job):
    """A connection-pruning job: :meth:`run` prunes, retrains and records."""

    def run(self) -> dict[str, Any]:
        """Connection pruning: per step, errors (``ConnectionScoring`` in a validate run) -> masks to the step's
        density (``ConnectionPruning.mask``) -> retrain; then the final retraining with masks, masks made permanent, the sparse file written and measured."""
        model = self.baseline()
        state: dict[str, Any] = {"baseline": self.evaluate(model, "baseline_test"), "baseline_curve": self.baseline_curve}
        exclude = list(self.cfg.pruning.get("exclude_layers") or [])
        layers = prunable_weights(model.net, exclude)
        schedule = self.cfg.pruning.schedule
        if schedule.name == "layer_by_layer":
            raise ValueError("connection pruning supports the oneshot and iterative schedules")
        steps = schedule.get("steps", 1) if schedule.name == "iterative" else 1
        pruning = ConnectionPruning(self.metric, float(self.cfg.pruning.target), network="net",
                                    stats=resolved(self.cfg.pruning.stats), exclude_layers=exclude)
        for i, density in enumerate(density_schedule(1.0 - float(self.cfg.pruning.target), steps)):
            self.collect(f"step_{i}", pruning.scoring, model)
            with self.timed(f"step_{i}/selection_masking"):
                masks = pruning.mask(layers, pruning.scoring.errors, density)
            if i < steps - 1 and schedule.get("finetune_epochs", 0):
                self.finetune_settings(model, schedule.finetune_epochs)
                self.fit(model, f"step_{i}_finetune", schedule.finetune_epochs)
        state["pruned"] = self.evaluate(model, "pruned_test")
        state["finetuned"] = self.final_finetune(model, state)
        make_permanent(layers)
        state["summary"] = self.storage_summary(model, layers, masks)
        names = list(layers)
        state["channels_before"] = {n: int(masks[n].numel()) for n in names}
        state["channels_after"] = {n: int(masks[n].sum()) for n in names}
        return self.finish(model, state)

    def storage_summary(self, model: ImageClassifier, layers: dict, masks: dict) -> dict[str, float]:
        """Parameters, FLOPs (multiply-adds with a nonzero weight) and bytes on disk, dense vs sparse."""
        example = model.example_input_array.to(model.device)
        positions = output_positions(model.net, example)
        dense_flops = count_flops(model.net, example)
        saved_flops = sum(2 * int((~masks[n]).sum()) * positions[m] for n, m in layers.items())
        params = count_parameters(model.net)
        removed = sum(int((~mask).sum()) for mask in masks.values())
        connections = sum(mask.numel() for mask in masks.values())
        summary = {"params_before": params, "params_after": params - removed,
                   "params_remaining": (params - removed) / params, "flops_before": dense_flops,
                   "flops_after": dense_flops - saved_flops, "flops_remaining": (dense_flops - saved_flops) / dense_flops,
                   "flops_reduction": dense_flops / max(dense_flops - saved_flops, 1),
                   "density": (connections - removed) / connections}
        if self.is_global_zero():
            state_dict = model.net.state_dict()
            sparse_keys = [f"{n}.weight" for n in layers]
            atomic_save(state_dict, self.out / "dense_weights.pt")
            for encoding in ("absolute", "relative8"):
                save_sparse(state_dict, sparse_keys, self.out / f"sparse_{encoding}.pt", indices=encoding)
                summary[f"bytes_sparse_{encoding}"] = (self.out / f"sparse_{encoding}.pt").stat().st_size
            summary["bytes_dense"] = (self.out / "dense_weights.pt").stat().st_size
            summary["storage_reduction"] = summary["bytes_dense"] / summary["bytes_sparse_relative8"]
        return summary
