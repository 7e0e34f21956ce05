"""Mutation check: plant known bugs one at a time in a scratch copy of the project and run the
tests of their area; every one must make a test fail.

Each :class:`Mutation` names a file under ``src/anyorder``, an exact snippet of it (it must occur
exactly once) and its replacement, and the tests of its area (pytest node ids, kept few so that the
whole check runs in minutes). The script copies ``src``, ``tests``, ``benchmarks``, ``docs`` and
``pyproject.toml`` into one scratch folder per concurrent run, applies a mutation, runs
``pytest -x -q -p no:cacheprovider`` on its tests with a timeout, restores the file, and prints a
table: ``caught`` (a test failed), ``NOT CAUGHT`` (all passed), ``SNIPPET MISSING`` (the snippet no
longer occurs exactly once: the code moved or changed, so update the mutation), ``TIMEOUT`` or
``NO TESTS``. The exit status is 1 unless every mutation is caught. First, unless
``--no-baseline``, the listed tests run once unmutated: they must pass, or no result means anything.

The test runs are forked from this process after it has imported torch and the other heavy
modules (never the package under test), so a run starts in a fraction of a second rather than the
several seconds an interpreter takes to import torch; ``--no-fork`` starts a fresh interpreter each.

Adding a family or a feature: add its mutations to :data:`FAMILY_MUTATIONS` (one list per family)
or to the list of its layer, each with the tests that should catch it; when one is not caught,
write the test that catches it.

    python benchmarks/mutation_check.py                  # everything
    python benchmarks/mutation_check.py --only sampling  # names or areas containing "sampling"
    python benchmarks/mutation_check.py --list           # what is planted where; snippets checked
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("src", "tests", "benchmarks", "docs", "pyproject.toml")
PKG = "src/anyorder/"


@dataclass(frozen=True)
class Mutation:
    """One planted bug: in ``src/anyorder/<file>``, ``old`` (exactly once) becomes ``new``; one of
    ``tests`` (pytest node ids under ``tests/``) must fail."""

    name: str
    area: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str = ""


def M(name: str, area: str, file: str, old: str, new: str, *tests: str, why: str = "") -> Mutation:
    return Mutation(name, area, file, old, new, tuple(f"tests/{t}" for t in tests), why)


# ---- the four issue 24 found unnoticed (each now has its test) ----------------------------------
ISSUE_24 = [
    M("sfid-spatial-halved", "evaluation", "evaluation/evaluate.py",
      '"spatial": res["spatial"],',
      '"spatial": res["spatial"] / 2,',
      "test_evaluation.py::test_cli_eval_inception_end_to_end_fid_and_sfid_match_the_adm_definitions",
      why="sFID from spatial features at half scale"),
    M("adm-crop-bilinear", "io", "io/images.py",
      "round(img.size[1] * ratio)), resample=Image.BICUBIC)",
      "round(img.size[1] * ratio)), resample=Image.BILINEAR)",
      "test_tokenizers_official.py::test_center_crop_arr_size",
      "test_tokenize.py::test_adm_rows_are_the_centre_crop_and_its_flip_and_bad_files_are_listed",
      why="ADM centre crop resized BILINEAR instead of BICUBIC"),
    M("inpaint-zero-context", "sampling", "sampling/decode.py",
      "model.feed_prefix(state, rows.context(model, job.prefix))",
      "model.feed_prefix(state, rows.context(model, torch.zeros_like(job.prefix)))",
      "test_inpaint_conditioning.py",
      why="the known tokens written out, but zeros teacher-forced in their place"),
    M("inpaint-zero-codes", "editing", "editing/inpaint.py",
      "job = edit_job(model, codes[idx], unknown[idx].view(-1, *grid), _group(classes, idx, B), "
      "policy,\n"
      "                           orders=orders[idx], generator=generator)\n"
      "            out[idx] = job.codes(decode(job))",
      "job = edit_job(model, torch.zeros_like(codes[idx]), unknown[idx].view(-1, *grid), "
      "_group(classes, idx, B),\n"
      "                           policy, orders=orders[idx], generator=generator)\n"
      "            out[idx] = torch.where(unknown[idx].view(-1, *grid), job.codes(decode(job)), "
      "codes[idx])",
      "test_inpaint_conditioning.py",
      why="inpainting decodes from zeros and copies the known tokens back afterwards"),
    M("label-dropout-inverted", "training", "training/loop.py",
      "device=run.gen.device) < run.class_dropout",
      "device=run.gen.device) >= run.class_dropout",
      "test_train_step.py::test_class_labels_are_dropped_at_the_models_rate",
      why="90% of the labels dropped instead of 10%"),
    M("grad-clip-off", "training", "training/loop.py",
      "cfg.grad_clip if cfg.grad_clip > 0 else math.inf",
      "math.inf",
      "test_train_step.py::test_grad_norm_clipping_and_the_adamw_update_by_closed_form",
      why="gradient-norm clipping never clips"),
]

# ---- the kinds issue 24 found caught: guidance schedules, step plans, permutations, FID, KV-cache
CAUGHT_BEFORE = [
    M("pow-cosine-sign", "nn", "nn/schedules.py",
      "(1.0 - math.cos(math.pi * frac)) / 2.0",
      "(1.0 + math.cos(math.pi * frac)) / 2.0",
      "test_schedules.py::test_pow_cosine_guidance",
      "test_rar_fixtures.py::test_guidance_schedule_equals_fixture"),
    M("linear-guidance-reversed", "nn", "nn/schedules.py",
      "return start + (end - start) * decoded / total",
      "return end + (start - end) * decoded / total",
      "test_schedules.py::test_linear_guidance_and_enabling",
      "test_policy.py::test_the_guidance_schedules_are_the_papers"),
    M("guidance-scale-per-step-not-token", "nn", "nn/schedules.py",
      "return [self(decoded + j, total) for j in range(count)]",
      "return [self(decoded, total) for j in range(count)]",
      "test_schedules.py::test_per_token_scales_follow_each_tokens_own_index"),
    M("guidance-mix-from-c", "sampling", "sampling/decode.py",
      "return (c - u).mul_(s_c).add_(u)",
      "return (c - u).mul_(s_c).add_(c)",
      "test_family_contract.py::test_guided_greedy_sampling_is_the_argmax_of_the_mix_at_the_policys_scale",
      "test_editing.py::test_guidance_rows_mix_as_documented"),
    M("step-plan-cosine-shifted", "nn", "nn/schedules.py",
      "target = min(int((1 - math.cos(math.pi / 2 * (s + 1) / steps)) * total + 1), total)\n"
      "            n = target",
      "target = min(int((1 - math.cos(math.pi / 2 * (s + 2) / steps)) * total + 1), total)\n"
      "            n = target",
      "test_schedules.py",
      "test_randar_fixtures.py::test_parallel_decoding_schedules"),
    M("step-plan-first-step-two", "nn", "nn/schedules.py",
      "out = [1]\n"
      "    done = 1",
      "out = [2]\n"
      "    done = 2",
      "test_schedules.py",
      "test_randar_fixtures.py::test_parallel_decoding_schedules"),
    M("extrapolation-plan-overcounts", "nn", "nn/schedules.py",
      "nxt = min(max(target - idx - n, 1), max(total - idx - n, 1))",
      "nxt = min(max(target - idx, 1), max(total - idx - n, 1))",
      "test_policy.py::test_extrapolation_schedule_runs_over_the_whole_canvas_from_the_placed_tokens"),
    M("unpermute-not-inverted", "nn", "nn/orders.py",
      "return permute(x, invert(order))",
      "return permute(x, order)",
      "test_orders.py"),
    M("known-first-unknown-first", "nn", "nn/orders.py",
      "idx = torch.sort(flag, dim=1, stable=True).indices",
      "idx = torch.sort(flag, dim=1, descending=True, stable=True).indices",
      "test_editing.py::test_known_first_orders_is_a_stable_partition"),
    M("training-orders-r-inverted", "nn", "nn/orders.py",
      "device=generator.device if generator is not None else base.device) < r",
      "device=generator.device if generator is not None else base.device) > r",
      "test_orders.py::test_training_orders_follow_r"),
    M("z-curve-axes-swapped", "nn", "nn/orders.py",
      "code |= ((c >> bit) & 1) << (2 * bit) | ((r >> bit) & 1) << (2 * bit + 1)",
      "code |= ((r >> bit) & 1) << (2 * bit) | ((c >> bit) & 1) << (2 * bit + 1)",
      "test_orders.py"),
    M("alternate-even-rows-flipped", "nn", "nn/orders.py",
      "grid[1::2] = grid[1::2].flip(1)",
      "grid[::2] = grid[::2].flip(1)",
      "test_orders.py"),
    M("fid-trace-term-once", "evaluation", "evaluation/metrics.py",
      "- 2.0 * tr_covmean)",
      "- tr_covmean)",
      "test_evaluation.py::test_frechet_distance_matches_scipy_sqrtm_on_random_gaussians",
      "test_evaluation.py::test_frechet_distance_closed_form_for_diagonal_covariances"),
    M("fid-biased-covariance", "evaluation", "evaluation/metrics.py",
      "np.cov(feats, rowvar=False)",
      "np.cov(feats, rowvar=False, bias=True)",
      "test_evaluation.py::test_cli_eval_inception_end_to_end_fid_and_sfid_match_the_adm_definitions"),
    M("kv-static-mask-strict", "nn", "nn/kv_cache.py",
      "self.slots[:, None] >= self.slots[None, :]",
      "self.slots[:, None] > self.slots[None, :]",
      "test_family_contract.py::test_the_static_step_gives_the_eager_steps_logits"),
    M("kv-eager-mask-off-by-one", "nn", "nn/kv_cache.py",
      "return self.slots[None, : step.kv_len] < step.visible[:, None]",
      "return self.slots[None, : step.kv_len] <= step.visible[:, None]",
      "test_lpd.py::test_greedy_generations_id_for_id"),
    M("kv-eager-rows-see-later-rows", "nn", "nn/kv_cache.py",
      "return None if L == 1 else causal_lower_right(L, step.kv_len)",
      "return None",
      "test_core.py::test_parallel_decode_logits_equal_full_sequence_forward"),
    M("kv-window-one-short", "nn", "nn/kv_cache.py",
      "if half < stop:",
      "if half < stop - 1:",
      "test_core.py::test_the_static_steps_attention_windows_cover_each_step_and_are_at_most_four",
      "test_family_contract.py::test_the_static_step_gives_the_eager_steps_logits"),
]

# ---- new ones, in every layer --------------------------------------------------------------------
LAYERS = [
    # io
    M("seed-limit-inclusive", "io", "io/seeds.py",
      "if not 0 <= int(seed) < SEED_LIMIT:",
      "if not 0 <= int(seed) <= SEED_LIMIT:",
      "test_cli_faults.py::test_check_seed_and_the_argparse_type"),
    M("pickle-loaded-unsafely", "io", "io/checkpoint.py",
      "obj = torch.load(str(path), map_location=map_location, weights_only=True)",
      "obj = torch.load(str(path), map_location=map_location, weights_only=False)",
      "test_checkpoints.py::test_malicious_pickle_is_refused_and_never_runs"),
    M("state-dict-shapes-unchecked", "io", "io/checkpoint.py",
      "if k in given and tuple(given[k].shape) != tuple(expected[k].shape)",
      "if False",
      "test_checkpoints.py::test_width_mismatch_names_keys_and_both_shapes"),
    M("16-bit-scaled-without-rounding", "io", "io/images.py",
      "eight = (wide * 255 + 32767) // 65535",
      "eight = (wide * 255) // 65535",
      "test_app_faults.py::test_to_8bit_rounds_to_the_nearest_of_256_levels"),
    M("official-value-rule-ignored", "io", "io/config.py",
      "ok = bool(rule.check(value))",
      "ok = True",
      "test_official_config_values.py"),
    # nn
    M("rope-frequencies-over-head-dim", "nn", "nn/rope.py",
      "torch.arange(0, half, 2)[: half // 2].float() / half))",
      "torch.arange(0, half, 2)[: half // 2].float() / head_dim))",
      "test_randar_fixtures.py::test_rope_table"),
    M("rope-rotates-backwards", "nn", "nn/rope.py",
      "torch.view_as_complex(xs) * torch.view_as_complex(t))",
      "torch.view_as_complex(xs) * torch.view_as_complex(t).conj())",
      "test_core.py::test_rope_rotates_each_pair_by_its_angle_in_eager_and_compiled_forms"),
    M("adaln-scale-without-one", "nn", "nn/transformer.py",
      "return x * (1 + scale) + shift",
      "return x * scale + shift",
      "test_rar_fixtures.py::test_training_path_logits_and_labels"),
    M("swiglu-gate-swapped", "nn", "nn/transformer.py",
      "h = F.silu(self.fc1(x)) * self.fc3(x)",
      "h = F.silu(self.fc3(x)) * self.fc1(x)",
      "test_randar_fixtures.py::test_training_logits_and_loss"),
    # hub
    M("hub-forgets-recorded-sampling", "hub", "hub.py",
      'sampling = dict(extra.get("sampling") or {})',
      "sampling = {}",
      "test_family_contract.py::test_save_and_load_round_trip"),
    M("hub-ignores-dtype", "hub", "hub.py",
      "target = dtype if (dtype is not None and sd[k].is_floating_point()) else want[k]",
      "target = want[k]",
      "test_bf16.py"),
    # data
    M("adm-second-row-not-flipped", "data", "data/augment.py",
      'return [crop, hflip(crop)] if aug == "adm" else [crop]',
      'return [crop, crop] if aug == "adm" else [crop]',
      "test_tokenize.py::test_adm_rows_are_the_centre_crop_and_its_flip_and_bad_files_are_listed"),
    M("five-crop-corners-swapped", "data", "data/augment.py",
      "boxes = [(0, 0), (w - size, 0), (0, h - size),",
      "boxes = [(0, 0), (0, h - size), (w - size, 0),",
      "test_tokenize.py::test_ten_crop_rows_are_torchvision_tencrop_of_the_1p1x_crop"),
    M("epoch-stream-overreads", "data", "data/codes.py",
      "k = min(left, self.n - off)",
      "k = min(left, self.n - off + 1)",
      "test_train_data.py::test_each_epoch_visits_every_image_once_and_ranks_split_it_without_loss_or_repeat"),
    # sampling
    M("top-k-keeps-only-the-max", "sampling", "sampling/decode.py",
      "kth = logits.topk(top_k, dim=-1).values[:, -1:]",
      "kth = logits.topk(top_k, dim=-1).values[:, :1]",
      "test_core.py::test_sample_logits_top_k_top_p_and_greedy"),
    M("top-p-drops-the-crossing-token", "sampling", "sampling/decode.py",
      "drop[:, 1:] = drop[:, :-1].clone()",
      "drop[:, 1:] = drop[:, 1:].clone()",
      "test_core.py::test_top_p_keeps_the_smallest_set_reaching_p"),
    M("temperature-multiplies", "sampling", "sampling/decode.py",
      "logits = logits / max(temperature, 1e-5)",
      "logits = logits * max(temperature, 1e-5)",
      "test_core.py::test_sample_logits_top_k_top_p_and_greedy"),
    M("uint8-round-truncates", "sampling", "sampling/batch.py",
      "x = x.mul(255.0).add_(0.5).clamp_(0.0, 255.0)",
      "x = x.mul(255.0).clamp_(0.0, 255.0)",
      "test_sample_npz.py::test_uint8_round_is_randars_conversion"),
    M("balanced-labels-in-blocks", "sampling", "sampling/protocol.py",
      "dtype=torch.int64).repeat(rounds)[:num_samples]",
      "dtype=torch.int64).repeat_interleave(rounds)[:num_samples]",
      "test_sample_npz.py::test_balanced_labels_spread_the_remainder_over_the_first_classes"),
    M("one-seed-stream-for-every-chunk", "sampling", "sampling/batch.py",
      'f"anyorder.sample:{int(seed)}:{int(chunk)}"',
      'f"anyorder.sample:{int(seed)}:0"',
      "test_sample_npz.py::test_every_batch_has_its_own_stream_and_the_seed_reproduces"),
    # editing
    M("half-mask-rounds-down", "editing", "editing/masks.py",
      "m[:, : math.ceil(w / 2)] = True",
      "m[:, : w // 2] = True",
      "test_editing.py::test_mask_helpers"),
    M("mask-any-means-all", "editing", "editing/masks.py",
      "out = cells.any(dim=4).any(dim=2)",
      "out = cells.all(dim=4).any(dim=2)",
      "test_editing.py::test_mask_from_image_snaps_and_validates"),
    M("outpaint-known-block-at-the-corner", "editing", "editing/inpaint.py",
      "canvas[:, top : top + h, left : left + w] = codes",
      "canvas[:, :h, :w] = codes",
      "test_editing.py::test_outpaint_larger_canvas_keeps_known"),
    M("extrapolation-low-res-transposed", "editing", "editing/extrapolate.py",
      "low_orders = (first // W) // factor * gw + (first % W) // factor",
      "low_orders = (first % W) // factor * gw + (first // W) // factor",
      "test_editing.py::test_extrapolate_places_low_res_on_the_even_grid"),
    # evaluation
    M("inception-score-marginal-per-row", "evaluation", "evaluation/metrics.py",
      "marginal = part.mean(0, keepdims=True)",
      "marginal = part.mean(1, keepdims=True)",
      "test_evaluation.py::test_inception_score_on_known_class_distributions"),
    M("manifold-radius-nearest", "evaluation", "evaluation/metrics.py",
      "radii[r0 : r0 + len(rows)] = best.max(1).values",
      "radii[r0 : r0 + len(rows)] = best.min(1).values",
      "test_evaluation.py::test_precision_recall_match_brute_force_knn"),
    M("pr-never-float16", "evaluation", "evaluation/metrics.py",
      "if torch.isfinite(d16).all():",
      "if False:",
      "test_evaluation.py::test_precision_recall_follow_adm_float16_distance_blocks"),
    # training
    M("warmup-starts-at-zero", "training", "training/schedules.py",
      "return base_lr * (step + 1) / warmup",
      "return base_lr * step / warmup",
      "test_schedules.py::test_lr_warms_up_then_decays_to_end_lr"),
    M("anneal-ratio-rises", "training", "training/schedules.py",
      "return 1.0 - (step - start) / (end - start)",
      "return (step - start) / (end - start)",
      "test_schedules.py::test_r_is_linear_between_start_and_end"),
    M("no-weight-decay", "training", "training/optim.py",
      '"weight_decay": cfg.weight_decay,',
      '"weight_decay": 0.0,',
      "test_train_step.py::test_grad_norm_clipping_and_the_adamw_update_by_closed_form"),
    M("adam-default-betas", "training", "training/optim.py",
      "betas=tuple(cfg.betas)",
      "betas=(0.9, 0.999)",
      "test_train_step.py::test_grad_norm_clipping_and_the_adamw_update_by_closed_form"),
    M("accumulated-loss-not-averaged", "training", "training/loop.py",
      "(loss / cfg.grad_accum).backward()",
      "loss.backward()",
      "test_train.py::test_accumulating_two_micro_batches_equals_one_batch_of_twice_the_size",
      "test_train_step.py::test_grad_norm_clipping_and_the_adamw_update_by_closed_form"),
    # cli
    M("cli-error-exit-1", "cli", "cli/main.py",
      'print(f"anyorder {args.command}: error: {e}", file=sys.stderr)\n'
      "        return 2",
      'print(f"anyorder {args.command}: error: {e}", file=sys.stderr)\n'
      "        return 1",
      "test_cli_sample.py::test_class_out_of_range_exit_code_2"),
    M("cli-png-batches-share-a-seed", "cli", "cli/sample.py",
      "args.seed, i // bs,",
      "args.seed, 0,",
      "test_cli_sample.py::test_png_batches_do_not_repeat_each_other"),
    # app
    M("app-known-cells-not-pasted", "app", "app/render.py",
      "px = torch.where(cells(frame.step == 0, ds), base.to(px.dtype), px)",
      "px = torch.where(cells(frame.step == 1, ds), base.to(px.dtype), px)",
      "test_app.py::test_inpaint_keeps_known_pixels_and_handles_odd_masks"),
    M("app-every-class-is-class-0", "app", "app/core.py",
      "return [i % entry.model.num_classes for i in range(n)]",
      "return [0] * n",
      "test_app.py::test_every_class_in_turn_generates_class_i_mod_the_class_count"),
]

# ---- per model family: a new family adds its list here -------------------------------------------
FAMILY_MUTATIONS: dict[str, list[Mutation]] = {
    "rar": [
        M("rar-condition-token-off-by-one", "models/rar", "models/rar/model.py",
          "return self.check_classes(classes) + self.codebook_size + 1",
          "return self.check_classes(classes) + self.codebook_size",
          "test_rar_fixtures.py::test_condition_token_layout"),
        M("rar-target-aware-row-shifted", "models/rar", "models/rar/model.py",
          "target = torch.cat([zero, ta[2 + orders], zero], dim=1)",
          "target = torch.cat([zero, ta[1 + orders], zero], dim=1)",
          "test_rar_fixtures.py::test_training_path_logits_and_labels"),
        M("rar-position-tables-decay", "models/rar", "models/rar/model.py",
          '"gamma", "embed", "embedding",',
          '"gamma", "embedding",',
          "test_train.py::test_weight_decay_groups_match_the_official_trainer"),
    ],
    "randar": [
        M("randar-slot-rope-not-interleaved", "models/randar", "models/randar/model.py",
          "rope_slots=torch.cat([rope0, rope.repeat_interleave(2, dim=1)], dim=1)",
          "rope_slots=torch.cat([rope0, rope.repeat(1, 2, 1, 1)], dim=1)",
          "test_randar_fixtures.py::test_greedy_generations_id_for_id"),
        M("randar-vectors-decay", "models/randar", "models/randar/model.py",
          "        return param.dim() >= 2\n",
          "        return param.dim() >= 1\n",
          "test_train.py::test_weight_decay_groups_match_the_official_trainer"),
    ],
    "lpd": [
        M("lpd-queries-blind-to-their-group", "models/lpd", "models/lpd/model.py",
          "qry_qry = groups[None, :] == g",
          "qry_qry = groups[None, :] == groups[:, None] + T",
          "test_lpd.py::test_teacher_forced_logits_and_loss_equal_the_official_forward"),
        M("lpd-group-tokens-causal", "models/lpd", "models/lpd/model.py",
          "tok_tok = groups[None, :] <= g",
          "tok_tok = torch.ones(T, T, dtype=torch.bool, device=groups.device).tril()",
          "test_lpd.py::test_the_queries_of_one_group_see_each_other_and_nothing_after_them"),
        M("lpd-cached-queries-see-only-the-tokens", "models/lpd", "models/lpd/model.py",
          "visible = torch.cat([state.slots.new_full((x.shape[1],), see), state.slots.new_full((num_queries,), stop)])",
          "visible = torch.cat([state.slots.new_full((x.shape[1],), see), state.slots.new_full((num_queries,), see)])",
          "test_lpd.py::test_greedy_generations_id_for_id"),
        M("lpd-position-rows-shifted", "models/lpd", "models/lpd/model.py",
          "return self.pos_embed[0, 1:][orders]",
          "return self.pos_embed[0, :-1][orders]",
          "test_lpd.py::test_teacher_forced_logits_and_loss_equal_the_official_forward"),
        M("lpd-guidance-per-step", "models/lpd", "models/lpd/spec.py",
          'return GuidanceSchedule("linear", self.guidance_scale, start=1.0, per_token=True, enabled=on)',
          'return GuidanceSchedule("linear", self.guidance_scale, start=1.0, per_token=False, enabled=on)',
          "test_lpd.py::test_every_steps_head_and_guided_logits_equal_the_official"),
        M("lpd-mask-token-exempt-from-decay", "models/lpd", "models/lpd/model.py",
          'return param.dim() >= 2 and not name.endswith(".bias")',
          'return param.dim() >= 2 and not name.endswith(".bias") and name != "mask_token"',
          "test_lpd.py::test_weight_decay_follows_the_official_add_weight_decay"),
        M("lpd-training-plan-never-drawn", "models/lpd", "models/lpd/model.py",
          "return {\"groups\": ids[torch.randint(ids.shape[0], (1,), generator=generator, device=dev)][0]}",
          "return {\"groups\": ids[0]}",
          "test_lpd.py::test_training_draws_one_plan_per_step_from_the_official_step_counts"),
        M("lpd-plan-surplus-added", "models/lpd", "models/lpd/plans.py",
          "sizes[-1] -= surplus",
          "sizes[-1] += surplus",
          "test_lpd.py::test_group_plans_start_with_one_grow_and_sum_to_the_tokens"),
        M("locality-repulsion-ignored", "nn", "nn/locality.py",
          "blocked[ok] |= near[cell[ok]]",
          "blocked[ok] |= False",
          "test_lpd.py::test_locality_orders_are_the_officials_when_its_draws_are_replayed"),
        M("locality-deferred-before-low", "nn", "nn/locality.py",
          "pool_key = torch.where(low, rank, torch.where(deferred, T + rank, 2 * T + rank))",
          "pool_key = torch.where(low, T + rank, torch.where(deferred, rank, 2 * T + rank))",
          "test_lpd.py::test_locality_orders_are_the_officials_when_its_draws_are_replayed"),
        M("locality-scores-per-diagonal-as-edge", "nn", "nn/locality.py",
          "weight = torch.where(cheb == 1, 1.0 / dist.clamp_min(1.0), torch.zeros_like(dist))",
          "weight = torch.where(cheb == 1, torch.ones_like(dist), torch.zeros_like(dist))",
          "test_lpd.py::test_locality_orders_are_the_officials_when_its_draws_are_replayed"),
    ],
}
MUTATIONS: list[Mutation] = (ISSUE_24 + CAUGHT_BEFORE + LAYERS
                              + [m for ms in FAMILY_MUTATIONS.values() for m in ms])


# ---- running ------------------------------------------------------------------------------------
# imported here once before the test runs are forked (the package under test never is)
PRELOAD = ("torch", "torch.distributed.checkpoint.state_dict", "numpy", "scipy.linalg",
           "PIL.Image", "safetensors.torch", "yaml", "tqdm", "pytest")
PYTEST_ARGS = ("-x", "-q", "-p", "no:cacheprovider", "--no-header")


@dataclass
class Result:
    mutation: Mutation
    status: str
    seconds: float = 0.0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "caught"


def snippet_problem(m: Mutation, root: Path = ROOT) -> str | None:
    """Why ``m`` cannot be applied to the project as it is (None: the snippet occurs once)."""
    path = root / PKG / m.file
    if not path.is_file():
        return f"no file {PKG}{m.file}"
    n = path.read_text().count(m.old)
    return None if n == 1 else f"snippet occurs {n} times in {PKG}{m.file}"


def make_scratch(base: Path, i: int) -> Path:
    dest = base / f"w{i}"
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dest / name)
    return dest


def run_env(scratch: Path) -> dict[str, str]:
    """The environment of a test run in a scratch copy: its own ``src`` (also for subprocesses
    the tests start), the project's fixtures (tests look for them beside the project root, which a
    scratch copy is not), no bytecode (a restored file must never be read from a stale cache), one
    thread per run."""
    env = dict(os.environ)
    fixtures = Path(os.environ.get("ANYORDER_FIXTURES", ROOT.parent / "shared" / "fixtures"))
    env.update({"ANYORDER_FIXTURES": str(fixtures.resolve()), "PYTHONDONTWRITEBYTECODE": "1",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONPATH": str(scratch / "src")})
    return env


class TestRun:
    """``pytest`` on ``tests`` in ``scratch``, its output in ``log``: a child forked from this
    process or, with ``fork=False``, a fresh interpreter; either in its own session, killed as a
    group on timeout."""

    def __init__(self, scratch: Path, tests: tuple[str, ...], log: Path, fork: bool) -> None:
        self.log, self.t0, self.rc = log, time.perf_counter(), None
        args = [*PYTEST_ARGS, *tests]
        env = run_env(scratch)
        self.proc: subprocess.Popen | None = None
        if not fork:
            with open(log, "wb") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "pytest", *args], cwd=scratch, env=env, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True)
            self.pid = self.proc.pid
            return
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            _child(scratch, env, args, log)  # never returns

    def poll(self) -> int | None:
        if self.rc is None:
            if self.proc is not None:
                self.rc = self.proc.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.rc = os.waitstatus_to_exitcode(status)
        return self.rc

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc is not None:
            self.proc.wait()
        else:
            os.waitpid(self.pid, 0)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _child(scratch: Path, env: dict[str, str], args: list[str], log: Path) -> None:
    """The forked test run: a new session, output to ``log``, the scratch copy's ``src`` first on
    the path (the project's own ``src`` removed), pytest, then leave without running parent code."""
    code = 3
    try:
        os.setsid()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(scratch)
        os.environ.clear()
        os.environ.update(env)
        own = str((ROOT / "src").resolve())
        rest = [p for p in sys.path if p and str(Path(p).resolve()) != own]
        sys.path[:] = [str(scratch / "src"), *rest]
        sys.dont_write_bytecode = True
        import pytest

        code = int(pytest.main(args))
    except BaseException:  # noqa: BLE001 - report anything; the parent reads the log
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def first_failure(output: str) -> str:
    m = re.search(r"^(FAILED|ERROR) (\S+)", output, re.M)
    if m:
        return m.group(2).removeprefix("tests/")
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    return lines[-1][:80] if lines else ""


def verdict(m: Mutation, rc: int | None, out: str, secs: float, timeout: float) -> Result:
    if rc is None:
        return Result(m, "TIMEOUT", secs, f"over {timeout:.0f} s")
    if rc == 0:
        skipped = re.search(r"(\d+) skipped", out)
        why = f"{skipped.group(1)} skipped, the rest passed" if skipped else "all passed"
        return Result(m, "NOT CAUGHT", secs, why)
    missing = rc == 4 and re.search(r"ERROR: (file or directory )?not found", out)  # not a conftest crash
    if missing or rc == 5:  # a listed test pytest cannot find (renamed?), or none collected
        return Result(m, "NO TESTS", secs, first_failure(out))
    return Result(m, "caught", secs, first_failure(out))


def wait_for(run: TestRun, timeout: float) -> int | None:
    while run.poll() is None:
        if run.seconds > timeout:
            run.kill()
            return None
        time.sleep(0.1)
    return run.rc


def check_all(chosen: list[Mutation], scratches: list[Path], logs: Path, timeout: float,
              fork: bool) -> list[Result]:
    """Each mutation in a free scratch copy, one run per copy at a time."""
    results: list[Result | None] = [None] * len(chosen)
    todo = list(range(len(chosen)))
    free = list(scratches)
    active: list[tuple[int, Path, TestRun, Path, str]] = []  # index, copy, run, file, its text

    def report(i: int) -> None:
        r = results[i]
        print(f"[{i + 1}/{len(chosen)}] {r.mutation.name}: {r.status} ({r.seconds:.1f} s) "
              f"{r.detail}", flush=True)

    while todo or active:
        while todo and free:
            i = todo.pop(0)
            m = chosen[i]
            problem = snippet_problem(m)
            if problem:
                results[i] = Result(m, "SNIPPET MISSING", detail=problem)
                report(i)
                continue
            scratch = free.pop()
            path = scratch / PKG / m.file
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new, 1))
            run = TestRun(scratch, m.tests, logs / f"{i:03d}.log", fork)
            active.append((i, scratch, run, path, original))
        time.sleep(0.1)
        for item in list(active):
            i, scratch, run, path, original = item
            rc = run.poll()
            if rc is None and run.seconds <= timeout:
                continue
            if rc is None:
                run.kill()
            path.write_text(original)
            results[i] = verdict(chosen[i], rc, run.output(), run.seconds, timeout)
            report(i)
            active.remove(item)
            free.append(scratch)
    return [r for r in results if r is not None]


def table(results: list[Result]) -> str:
    rows = ["| # | mutation | area | file | result | s | caught by / why not |",
            "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        m = r.mutation
        rows.append(f"| {i} | {m.name} | {m.area} | {m.file} | {r.status} | {r.seconds:.1f} "
                    f"| {r.detail} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="run the mutations whose name or area contains this")
    ap.add_argument("--jobs", type=int, default=2, help="test runs at once (default 2)")
    ap.add_argument("--timeout", type=float, default=180.0,
                    help="seconds for one mutation's tests (default 180)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the unmutated run of the listed tests")
    ap.add_argument("--no-fork", action="store_true",
                    help="a fresh interpreter per run (slower; where fork is missing or fails)")
    ap.add_argument("--list", action="store_true",
                    help="list the mutations and check their snippets; run nothing")
    args = ap.parse_args(argv)
    names = [m.name for m in MUTATIONS]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        print(f"duplicate mutation names: {dupes}", file=sys.stderr)
        return 1
    chosen = [m for m in MUTATIONS if not args.only or args.only in m.name or args.only in m.area]
    if not chosen:  # else the baseline would run every test file for nothing
        print(f"no mutation's name or area contains --only {args.only!r} (a plain substring)", file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.name:40s} {m.area:14s} {m.file:28s} {snippet_problem(m) or 'ok'}")
        return 0 if all(snippet_problem(m) is None for m in chosen) else 1
    fork = not args.no_fork and hasattr(os, "fork")
    t0 = time.perf_counter()
    if fork:
        os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})  # before torch loads
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except ImportError:
                pass
    jobs = max(1, min(args.jobs, len(chosen)))
    with tempfile.TemporaryDirectory(prefix="anyorder-mutations-") as tmp:
        scratches = [make_scratch(Path(tmp), i) for i in range(jobs)]
        logs = Path(tmp) / "logs"
        logs.mkdir()
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            run = TestRun(scratches[0], tests, logs / "baseline.log", fork)
            rc = wait_for(run, args.timeout * 4)
            print(f"baseline: {len(tests)} test selections, unmutated: rc={rc} in "
                  f"{run.seconds:.0f} s", flush=True)
            if rc != 0:
                print(run.output()[-3000:])
                print("the listed tests fail without any mutation: fix that first", file=sys.stderr)
                return 1
        done = check_all(chosen, scratches, logs, args.timeout, fork)
    print()
    print(table(done))
    bad = [r for r in done if not r.ok]
    how = "forked" if fork else "fresh interpreters"
    print(f"\n{len(done) - len(bad)} of {len(done)} mutations caught in "
          f"{time.perf_counter() - t0:.0f} s ({jobs} at a time, {how})"
          + (f"; NOT OK: {', '.join(r.mutation.name for r in bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
