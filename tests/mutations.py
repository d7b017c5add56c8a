"""Deliberate one-line breaks of documented behaviour, and whether the suite catches each.

    python -m tests.mutations            # every mutation: caught / missed, then one JSON line
    python -m tests.mutations -k resume  # the mutations whose name contains "resume"

Each mutation replaces one exact piece of source (it must occur exactly once, so the list fails loudly when the
code moves), runs the tests that should catch it (``pytest -x -n 0``), and restores the file, also when
interrupted. A mutation counts as caught when those tests fail (pytest's exit code 1); a collection error or an
empty selection is reported as an error, not as caught. Before any mutation, the named tests must pass on the
unmodified tree. The last line printed is one JSON object: ``mutations_total``, ``mutations_caught`` and the names
of the missed ones. docs/testing.md lists the same mutations with what each test reports."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str  # the behaviour broken
    file: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail


P, T = "infoprune/pipeline.py", "tests/test_prune.py"
MUTATIONS = [
    Mutation("resuming train.py", "infoprune/training.py",
             'trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))',
             "trainer.fit(model, datamodule=datamodule, ckpt_path=None)",
             ("tests/test_train.py::test_resume_from_last_checkpoint_runs_only_the_remaining_epochs",)),
    Mutation("a resumed fit's random draws", "infoprune/training.py",
             "        set_random_state(state_dict)\n", "        pass\n",
             ("tests/test_train.py::test_a_fit_resumed_after_a_crash_ends_with_the_uninterrupted_fits_weights",)),
    Mutation("resuming an interrupted fine-tune", "infoprune/job.py",
             "trainer.fit(model, datamodule=self.datamodule, ckpt_path=ckpt_path)",
             "trainer.fit(model, datamodule=self.datamodule, ckpt_path=None)",
             (f"{T}::test_interrupted_fine_tune_resumes_and_a_failed_run_loses_nothing",)),
    Mutation("the layer-by-layer schedule", "pruning/schedule.py",
             "plan = [PruningStep(target, 1.0 - target, [name], finetune_epochs) for name in layer_names]",
             "plan = [PruningStep(target, 1.0 - target, None, 0)]",
             (f"{T}::test_layer_by_layer_schedule_prunes_one_layer_per_step_with_a_fine_tune_between",)),
    Mutation("weighted MI l1_out", "pruning/metrics.py",
             "normalized(mutual_information(stats.counts)) * normalized(output_l1(layer))",
             "normalized(mutual_information(stats.counts)) * normalized(input_l1(layer))",
             ("tests/test_documented.py::test_weighted_mi_l1_out_is_normalised_mi_times_normalised_output_l1",)),
    Mutation("weighted MI activation", "pruning/metrics.py",
             "weights = stats.bin_mean_abs() / layer_mean_abs if layer_mean_abs > 0",
             "weights = stats.bin_mean_abs() if layer_mean_abs > 0",
             ("tests/test_documented.py::test_weighted_mi_activation_weights_bins_by_mean_abs_activation",)),
    Mutation("un-augmented calibration set", "datamodules/base.py",
             "yield self.transform_batch(images.to(device), train=augment), labels.to(device)",
             "yield self.transform_batch(images.to(device), train=True), labels.to(device)",
             ("tests/test_documented.py::test_calibration_images_are_unaugmented_training_images_chosen_by_the_seed",)),
    Mutation("Inf detection", "pruning/stats.py",
             "            if not torch.isfinite(summary).all():", "            if torch.isnan(summary).any():",
             ("tests/test_documented.py::test_inf_activations_are_detected_before_they_reach_the_histograms",)),
    Mutation("iterative per-step amounts", "pruning/schedule.py",
             "per_step = 1.0 - (1.0 - target) ** (1.0 / steps)", "per_step = target / steps",
             (f"{T}::test_iterative_schedule_removes_the_same_fraction_of_what_is_left_at_every_step",)),
    Mutation("results.json FLOPs", P,
             'dense["flops"], count_flops(model.net, example))', 'dense["flops"], dense["flops"])',
             (f"{T}::test_results_json_flops_are_those_of_the_saved_networks",)),
    Mutation("global normalization: auto", P,
             'normalization = "none" if isinstance(self.metric, (MutualInformation, Entropy)) else "max"',
             'normalization = "max" if isinstance(self.metric, (MutualInformation, Entropy)) else "none"',
             (f"{T}::test_global_scope_normalisation_auto_and_a_flops_budget",)),
    Mutation("pruning.recalibrate_bn_images", P,
             "                recalibrate_batchnorm(model.net, batches)\n", "                pass\n",
             (f"{T}::test_batchnorm_is_re_estimated_after_pruning_when_asked",)),
    Mutation("pruning.recalibrate_bn_augment", "datamodules/base.py",
             "yield self.transform_batch(images.to(device), train=augment), labels.to(device)",
             "yield self.transform_batch(images.to(device), train=False), labels.to(device)",
             (f"{T}::test_batchnorm_is_re_estimated_after_pruning_when_asked",
              "tests/test_datamodules.py::"
              "test_augmented_calibration_batches_are_seeded_and_leave_the_global_random_state_alone")),
    Mutation("seeded augmentation of calibration batches", "datamodules/base.py",
             "with torch.random.fork_rng(devices=devices) if augment else nullcontext():", "with nullcontext():",
             ("tests/test_datamodules.py::"
              "test_augmented_calibration_batches_are_seeded_and_leave_the_global_random_state_alone",)),
    Mutation("records made before a setting existed", "infoprune/run_identity.py",
             '        if isinstance(parent, dict) and name in parent and parent[name] == earlier:\n            del parent[name]',
             "        pass",
             (f"{T}::test_a_setting_added_later_keeps_the_records_made_before_it_at_the_value_that_reproduces_them",)),
    Mutation("records recognised with the data elsewhere", "infoprune/run_identity.py",
             "return {name: value for name, value in datamodule.items() if name not in DATA_LOCATION}",
             "return dict(datamodule)",
             (f"{T}::test_runs_and_baselines_are_recognised_with_the_data_kept_elsewhere",)),
    Mutation("a resumed run's time", "infoprune/job.py",
             "carried = timer.time_elapsed() - (end - start if start is not None and end is not None else 0.0)",
             "carried = 0.0",
             (f"{T}::test_interrupted_fine_tune_resumes_and_a_failed_run_loses_nothing",)),
    Mutation("rerun of a finished run", P,
             "    finished = finished_results(cfg)\n", "    finished = None\n",
             (f"{T}::test_two_job_multirun_reports_and_its_rerun_leaves_finished_jobs_byte_identical",)),
    Mutation("CEP exclude_layers", "pruning/cep.py",
             "return {n: m for n, m in layers.items() if n not in exclude}", "return dict(layers)",
             ("tests/test_cep.py::test_excluded_layers_stay_dense_and_the_rest_reach_the_density",)),
    Mutation("validation before work", "infoprune/validation.py",
             "        if metric.needs_data:\n            check_stats(cfg, datamodule)\n",
             "        if metric.needs_data:\n            pass\n",
             ("tests/test_validation.py",)),
    Mutation("selection rounding", "pruning/selection.py",
             "n = math.ceil(fraction * num_channels - 1e-9)", "n = round(fraction * num_channels)",
             ("tests/test_pruning.py::test_odd_widths_round_up_alike_and_the_rule_is_monotone",)),
    Mutation("evaluation order", "datamodules/base.py",
             "self.val_set, self.test_set = evaluation_order(val), evaluation_order(test)",
             "self.val_set, self.test_set = val, test",
             ("tests/test_datamodules.py::"
              "test_evaluation_order_is_a_fixed_mix_of_classes_even_when_files_are_sorted_by_class",)),
    Mutation("report seeds column", "infoprune/report/runs.py",
             'seeds=sorted({m.get("seed") for m in members}, key=str))', 'seeds=[m.get("seed") for m in members])',
             ("tests/test_report.py::test_seeds_column_counts_distinct_seeds_and_a_single_seed_shows_no_spread",)),
    Mutation("reported accuracies", "infoprune/job.py",
             '"acc_pruned": state["pruned"]["acc"],', '"acc_pruned": state["baseline"]["acc"],',
             (f"{T}::test_oneshot_end_to_end_for_every_metric",)),
    Mutation("ONNX export", "infoprune/export.py",
             "graph = Preprocessed(net, preprocessing).eval() if bake else net",
             "graph = torch.nn.Sequential(Preprocessed(net, preprocessing) if bake else net,"
             " torch.nn.Softmax(1)).eval()",
             ("tests/test_pruning.py::test_export_torchscript_and_onnx",)),
    Mutation("sensitivity allocation", "pruning/allocation.py",
             "if best is None or key < best[0]:", "if best is None or key > best[0]:",
             ("tests/test_sensitivity.py::"
              "test_allocation_takes_the_cheapest_loss_per_parameter_first_and_stops_at_the_target",)),
    Mutation("sensitivity points", "infoprune/sensitivity.py",
             "            model.load_state_dict(original)\n", "            pass\n",
             ("tests/test_sensitivity.py::test_a_group_of_duplicates_loses_nothing_at_half",)),
    Mutation("APoZ direction", "pruning/activation_metrics.py",
             "return 1.0 - stats.mean", "return stats.mean",
             ("tests/test_field_criteria.py::test_a_zeroed_channel_scores_lowest[apoz]",)),
    Mutation("Taylor under DDP", "pruning/gradients.py",
             'p.grad = all_reduce(p.grad, "sum") / total', "p.grad = p.grad / total",
             ("tests/test_field_criteria.py::test_two_processes_give_the_same_scores_as_one",)),
    Mutation("baseline curve on resume", "infoprune/training.py",
             '        self.values = list(state_dict["values"])\n', "        pass\n",
             (f"{T}::test_baseline_cache_trains_each_baseline_once_and_resumes_an_interrupted_training",)),
    Mutation("drop-in resume", "callbacks/scheduled.py",
             "        pl_module.on_load_checkpoint = on_load_checkpoint\n", "        pass\n",
             ("tests/test_drop_in.py::test_an_interrupted_fit_with_channel_pruning_resumes_from_its_checkpoint[1]",
              "tests/test_drop_in.py::test_an_interrupted_fit_with_connection_pruning_resumes_with_its_masks")),
    Mutation("masked parameter order", "callbacks/cep.py",
             '    first = [k for k in ("weight", "weight_orig") if k in params]\n', "    first = []\n",
             ("tests/test_drop_in.py::test_an_interrupted_fit_with_connection_pruning_resumes_with_its_masks",)),
    Mutation("grouped consumer cost", "pruning/cost.py",
             "per_out = self.in_kept[conv] * self._kernel(conv) // self.groups[conv]",
             "per_out = self.in_kept[conv] * self._kernel(conv)",
             ("tests/test_grouped_convolutions.py::test_masked_equals_slimmed_and_the_cost_accounting_is_exact",)),
    Mutation("grouped consumer output-L1", "pruning/metrics.py",
             "groups = convolution_groups(consumer.module)  # input i of a grouped conv", "groups = 1  #",
             ("tests/test_grouped_convolutions.py::"
              "test_output_l1_of_a_grouped_consumer_reads_the_filters_of_the_channels_group",)),
    Mutation("a temporary file left by a failed write", "infoprune/io.py",
             "        tmp.unlink(missing_ok=True)\n", "        pass\n",
             ("tests/test_faults.py::test_a_failed_write_keeps_the_earlier_file_and_names_the_path",)),
    Mutation("Lightning checkpoints written in place", "infoprune/checkpoint_io.py",
             "write_atomically(path, lambda tmp: torch.save(checkpoint, tmp))", "torch.save(checkpoint, path)",
             ("tests/test_faults.py::test_lightning_checkpoints_are_written_atomically",)),
    Mutation("checkpoints unpickled whole", "infoprune/builders.py",
             'checkpoint = torch.load(path, map_location="cpu", weights_only=True)',
             'checkpoint = torch.load(path, map_location="cpu", weights_only=False)',
             ("tests/test_faults.py::test_a_checkpoint_holding_arbitrary_objects_is_not_unpickled",)),
    Mutation("NaN weights in a checkpoint", "infoprune/builders.py",
             "    if bad:\n", "    if False:\n",
             ("tests/test_faults.py::test_a_checkpoint_with_bad_contents_is_named_before_any_work[nan-weights]",)),
    Mutation("a truncated MNIST file", "datamodules/torchvision_sets.py",
             "    if size != expected:\n", "    if False:\n",
             ("tests/test_faults.py::test_a_truncated_mnist_file_is_named_before_any_work",)),
    Mutation("a broken image named", "datamodules/image_folder.py",
             "except (OSError, ValueError, SyntaxError) as error:  # PIL's errors", "except KeyError as error:  #",
             ("tests/test_faults.py::test_a_broken_jpeg_is_named_before_any_training",
              "tests/test_faults.py::test_a_broken_imagenet_file_is_named_when_the_loader_reaches_it")),
    Mutation("the baseline's random state on a rerun", "infoprune/job.py",
             "    set_random_state(torch.load(self.random_state_file(cache), weights_only=True))", "    pass",
             ("tests/test_kill.py::test_a_job_killed_at_any_phase_resumes_to_the_uninterrupted_result[statistics]",)),
    Mutation("the scores' random state on a rerun", P,
             "set_random_state(torch.load(rng, weights_only=True))  # as if the statistics pass had run here",
             "pass",
             ("tests/test_kill.py::test_a_job_killed_at_any_phase_resumes_to_the_uninterrupted_result[selection]",)),
    Mutation("scores read back after an interruption", P,
             "        if saved.exists() and key_file.exists() and rng.exists()", "        if False",
             ("tests/test_kill.py::test_a_job_killed_at_any_phase_resumes_to_the_uninterrupted_result[selection]",)),
    Mutation("the starting checkpoint read once", "infoprune/job.py",
             "model = build_model(self.cfg, self.datamodule, self.checkpoint)",
             "model = build_model(self.cfg, self.datamodule)",
             (f"{T}::test_the_checkpoint_a_job_starts_from_is_read_once",)),
    Mutation("distillation's temperature scale", "callbacks/distillation.py",
             'reduction="batchmean", log_target=True) * temperature ** 2', 'reduction="batchmean", log_target=True)',
             ("tests/test_distillation.py::test_soft_target_term_matches_a_float64_reference",)),
    Mutation("a new MLflow store opened under a lock", "infoprune/loggers.py",
             "        fcntl.flock(lock, fcntl.LOCK_EX)\n", "        pass\n",
             ("tests/test_loggers.py::test_parallel_jobs_opening_a_new_mlflow_store_all_get_their_run",)),
    Mutation("statistics replayed from one forward pass", "pruning/stats.py",
             "        if not first and kept is not None:", "        if False:",
             ("tests/test_channel_scores.py::test_one_forward_pass_gives_the_statistics_of_one_pass_per_stage_bit_for_bit",)),
    Mutation("a replayed stage leaves the random state a pass leaves", "pruning/stats.py",
             "            next(iter(batches()), None)\n", "",
             ("tests/test_channel_scores.py::test_one_forward_pass_gives_the_statistics_of_one_pass_per_stage_bit_for_bit",)),
    Mutation("predicted latency kept up to date", "pruning/latency.py",
             "            self.module_seconds[module] = self.seconds(module)", "            pass",
             ("tests/test_latency.py::test_predicted_latency_follows_the_widths_of_the_slimmed_network",)),
    Mutation("latency goal interpolated between measurements", "pruning/latency.py",
             "            goal = under[0] + (target - under[1]) * (over[0] - under[0]) / (over[1] - under[1])",
             "            goal = min(1.0, goal * target / measured)",
             ("tests/test_latency.py::test_selection_is_redone_until_the_measured_latency_meets_the_target",)),
    Mutation("a search's budget", "infoprune/search.py",
             "    return -excess if excess > 0 else float(results[objective])", "    return float(results[objective])",
             ("tests/test_search.py::test_a_job_over_its_budget_returns_minus_its_largest_relative_excess",)),
    Mutation("search settings checked before any work", "infoprune/validation.py",
             "    check_search(cfg)\n", "",
             ("tests/test_search.py::test_bad_search_settings_fail_before_any_work",)),
    Mutation("tap points after a residual addition", "pruning/layers.py",
             "    return call.input is tensor or (call.input.shape == tensor.shape",
             "    return call.input is tensor or (False and call.input.shape == tensor.shape",
             ("tests/test_structures.py::test_tap_points_follow_the_dataflow_not_the_registration_order",)),
    Mutation("output channels as a group", "pruning/layers.py",
             "        if not consumers:\n", "        if False:\n",
             ("tests/test_structures.py::test_a_segmentation_head_keeps_its_class_maps",)),
    Mutation("cost of a layer called several times", "pruning/cost.py",
             "positions[module] = positions.get(module, 0) + output.numel() // channels",
             "positions[module] = output.numel() // channels",
             ("tests/test_structures.py::test_the_cost_of_removing_any_one_channel_is_what_slimming_it_saves",)),
    Mutation("channels-last slices", "pruning/layers.py",
             "        if _slice_cuts_the_channels(graph, node):", "        if True:",
             ("tests/test_transformers.py::test_swin_window_attention_and_patch_merging_prune_with_their_stage",)),
    Mutation("layer norms masked over the kept channels", "pruning/masks.py",
             "            MaskedNormalization.mask(norm.module, norm.idxs[torch.isin(norm.root_idxs, removed.cpu())])",
             "            pass",
             ("tests/test_transformers.py::test_convnext_masked_equals_slimmed_with_exact_widths",)),
    Mutation("window attention padded to whole windows", "pruning/attention.py",
             "    if window is None or output.dim() != 4:", "    if True:",
             ("tests/test_transformers.py::test_swin_costs_are_exact_with_padded_windows",)),
    Mutation("layer norm entries per channel", "pruning/cost.py",
             "(norm.module.bias is not None)) * count[channel]", "(norm.module.bias is not None))",
             ("tests/test_transformers.py::test_swin_costs_are_exact_with_padded_windows",)),
    Mutation("linear-pair attention as one node", "pruning/layers.py",
             "    custom.update({type(m): LinearPairPruner() for m in model.modules() if is_linear_pair(m)})\n", "",
             ("tests/test_transformers.py::test_timm_attention_heads_prune_whole_beside_the_embedding_width_and_mlps",)),
    Mutation("channels-last merges interleaved", "pruning/layers.py",
             "        if merge is None:\n", "        if True:\n",
             ("tests/test_transformers.py::test_timm_patch_merging_reads_each_channel_at_four_interleaved_positions",)),
    Mutation("splits along the channels of tokens mapped", "pruning/layers.py",
             "        if split is None:\n            split_mapping(graph, node)",
             "        if True:\n            split_mapping(graph, node)",
             ("tests/test_transformers.py::test_a_gated_mlp_prunes_its_hidden_units_as_pairs_of_the_two_halves_it_multiplies",)),
    Mutation("channels mapped beyond a consumer's inputs", "pruning/layers.py",
             "        if unmapped:\n", "        if False:\n",
             ("tests/test_transformers.py::"
              "test_channels_mapped_beyond_a_consumers_inputs_are_left_out_and_the_rest_prunes_exactly",)),
    Mutation("loose parameters on their channel axis", "pruning/layers.py",
             "    return (unique or long or [None])[-1]", "    return (long or [None])[-1]",
             ("tests/test_transformers.py::test_a_loose_parameter_is_pruned_on_its_one_axis_of_its_own_length",)),
    Mutation("FLOPs counted without autograd", "pruning/flops.py",
             "            p.requires_grad_(False)", "            pass",
             ("tests/test_transformers.py::test_flops_are_counted_when_a_parameter_reaches_a_layer_unchanged",)),
    Mutation("a layer's per-row parameters slimmed with it", "pruning/slim.py",
             "                _drop_rows(module, name, removed)", "                pass",
             ("tests/test_transformers.py::test_a_layers_own_per_row_parameters_go_with_its_rows",)),
    Mutation("width-tied attention's measured cost", "pruning/attention.py",
             "    for units in range(min(3, width // heads)):", "    for units in range(min(2, width // heads)):",
             ("tests/test_transformers.py::test_width_tied_attention_costs_are_exact",)),
    Mutation("a head's rows in each of query, key and value", "pruning/attention.py",
             "    tp.prune_linear_out_channels(module.qkv, _inner_rows(width, dims).tolist())",
             "    tp.prune_linear_out_channels(module.qkv, _inner_rows(width, dims, 1).tolist() + list(range(width, width + len(dims) * 2)))",
             ("tests/test_transformers.py::test_timm_attention_heads_prune_whole_beside_the_embedding_width_and_mlps",)),
    Mutation("a head's products counted with its removal", "pruning/cost.py",
             "            params, flops = params + self.head_extras[name][0], flops + self.head_extras[name][1]",
             "            params = params + self.head_extras[name][0]",
             ("tests/test_transformers.py::test_timm_vit_costs_are_exact",)),
    Mutation("whole heads kept", "pruning/selection.py",
             "                      math.lcm(round_to, layer.unit_size))",
             "                      math.lcm(round_to, layer.channel_groups))",
             ("tests/test_transformers.py::test_a_group_of_heads_keeps_at_least_one_head_and_reloads_from_its_structure",)),
    Mutation("a head weighed by what reads its output", "pruning/metrics.py",
             "        total = total.view(layer.channel_groups, -1)[-1].repeat(layer.channel_groups)\n",
             "        pass\n",
             ("tests/test_transformers.py::"
              "test_a_heads_query_key_and_value_dimensions_share_the_output_l1_of_the_weights_reading_the_head",)),
    Mutation("nn.MultiheadAttention made a linear pair", "pruning/layers.py",
             "    pair_multihead_attention(model)\n", "",
             ("tests/test_transformers.py::test_vit_groups_are_the_embedding_width_each_mlp_hidden_width_and_each_blocks_heads",)),
    Mutation("a paired attention in its module's mode", "pruning/multihead.py",
             "        self.train(attention.training)\n", "",
             ("tests/test_multihead.py::test_an_encoder_layer_prunes_its_heads_and_its_width_and_still_runs",)),
    Mutation("width-tied attention found by trying it", "pruning/attention.py",
             '        for role, trial in (("pair", _try_pair), ("tied", _try_tied)):',
             '        for role, trial in (("pair", _try_pair),):',
             ("tests/test_transformers.py::"
              "test_an_attention_that_splits_its_input_width_into_heads_is_found_width_tied_and_slims_inside",)),
]


def run_tests(tests: tuple[str, ...]) -> int:
    """pytest's exit code for ``tests`` in one process, stopping at the first failure."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider",
               "-m", "", *tests]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True).returncode


def apply(mutation: Mutation) -> str:
    """Replace ``mutation.old`` by ``mutation.new`` in its file; returns the original text."""
    path = ROOT / mutation.file
    text = path.read_text()
    found = text.count(mutation.old)
    if found != 1:
        raise ValueError(f"{mutation.name}: the text to replace occurs {found} times in {mutation.file}")
    path.write_text(text.replace(mutation.old, mutation.new))
    return text


def check_sources() -> None:
    """Every mutation's text occurs exactly once in its file (the list follows the code)."""
    for mutation in MUTATIONS:
        found = (ROOT / mutation.file).read_text().count(mutation.old)
        if found != 1:
            raise ValueError(f"{mutation.name}: the text to replace occurs {found} times in {mutation.file}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", default="", help="only the mutations whose name contains this")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.k in m.name]
    check_sources()
    tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
    if run_tests(tests) != 0:
        sys.exit("the named tests fail on the unmodified tree: fix them before judging mutations")
    print(f"{'mutation':<48} {'result':<8} {'s':>6}  file")
    missed, errors = [], []
    for mutation in chosen:
        start = time.perf_counter()
        original = apply(mutation)
        try:
            code = run_tests(mutation.tests)
        finally:
            (ROOT / mutation.file).write_text(original)
        result = {1: "caught", 0: "MISSED"}.get(code, f"error {code}")
        if code == 0:
            missed.append(mutation.name)
        elif code != 1:
            errors.append(mutation.name)
        print(f"{mutation.name:<48} {result:<8} {time.perf_counter() - start:6.1f}  {mutation.file}", flush=True)
    caught = len(chosen) - len(missed) - len(errors)
    print(f"{caught} of {len(chosen)} mutations caught")
    print(json.dumps({"mutations_total": len(chosen), "mutations_caught": caught, "missed": missed,
                      "errors": errors}))


if __name__ == "__main__":
    main()
