"""Served loss = trained loss, the pure part: token sequences compared, the trainer's eval loss
recomputed from per-token log-probabilities, and the tolerance they must agree within.

The trainer's eval loss (transformers' evaluation loop) is, per eval batch, the mean negative
log-likelihood over the batch's trained tokens (labels != -100, shifted by one), and over the
batches the mean weighted by batch size (the number of, possibly packed, sequences in it).
`trainer_eval_loss` reproduces exactly that from per-row sums, given the batches the trainer formed
(recorded in eval_split.json by the run recorder plugin).

Tolerance (stated in agree.json): |served - trained| <= ABS_FLOOR + rel x trained, where rel is
  - FP32_REL = 1e-4 when training evaluated and the server computes in float32: the two engines
    differ only in kernel order and accumulation (~1e-6 relative per logit); merging adds W + s*BA
    once in float32 (QLoRA: onto the same dequantised NF4 weights the trainer multiplied with);
  - HALF_REL = 2^-8 when either side runs bfloat16 (vLLM on CPU picks it for a float32 model):
    8 significant bits, unit roundoff u = 2^-9; weights and activations are each rounded once,
    so a logit, and the NLL = log-sum-exp - logit built from them, carries up to ~2u = 2^-8 of
    relative error (measured on the tiny model: 1.5e-3 relative, ~2^-9.4); 2 x HALF_REL when both
    sides do (bf16 LoRA training on CPU and bf16 serving, model=smol: measured 1.49e-3 nats on a
    0.311 loss, 4.8e-3 relative, above one side's bound and within both);
  plus ABS_FLOOR = 1e-4 nats for the float32 reduction over a few thousand tokens.
"""
from __future__ import annotations

import math

FP32_REL = 1e-4
HALF_REL = 2.0 ** -8
ABS_FLOOR = 1e-4
HALF = ("bfloat16", "float16", "bf16", "fp16", "half")
CONTEXT = 12  # tokens shown either side of a first difference


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where two token sequences differ (a length difference counts), else None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def trained_positions(labels: list[int]) -> list[int]:
    """Positions whose token the trainer scored: label != -100, except position 0 (nothing predicts it)."""
    return [t for t, lab in enumerate(labels) if lab != -100 and t > 0]


def row_nll(prompt_logprobs: list[float | None], labels: list[int]) -> tuple[float, int]:
    """(sum of -logprob over the trained tokens, their count) of one row; prompt_logprobs[t] is the
    served model's log-probability of token t given tokens < t."""
    pos = trained_positions(labels)
    missing = [t for t in pos if t >= len(prompt_logprobs) or prompt_logprobs[t] is None]
    if missing:
        raise ValueError(f"no served log-probability for trained positions {missing[:5]}")
    return -math.fsum(prompt_logprobs[t] for t in pos), len(pos)


def trainer_eval_loss(batches: list[list[list[int]]], per_row: dict[int, tuple[float, int]]) -> float:
    """The trainer's eval loss from per-row (nll sum, token count): per batch sum/count over all its
    rows (packed or not), then the mean over batches weighted by their number of sequences."""
    total, weight = 0.0, 0
    for batch in batches:
        nll = math.fsum(per_row[i][0] for seq in batch for i in seq)
        count = sum(per_row[i][1] for seq in batch for i in seq)
        if count:
            total += nll / count * len(batch)
            weight += len(batch)
    if not weight:
        raise ValueError("no trained tokens in the eval split")
    return total / weight


def tolerance(trained_loss: float, train_dtype: str, served_dtype: str) -> tuple[float, str]:
    """(tolerance in nats, how it was derived) for the dtypes of the two sides."""
    half = [d for d in (train_dtype, served_dtype) if str(d).lower() in HALF]
    rel = HALF_REL * len(half) if half else FP32_REL  # two 16-bit sides round independently: bounds add
    basis = (f"{ABS_FLOOR:g} + {rel:g} x trained loss; training {train_dtype}, serving {served_dtype}"
             + {0: "; float32 on both sides", 1: "; 16-bit arithmetic on one side",
                2: "; 16-bit arithmetic on both sides, each side's bound added"}[len(half)])
    return ABS_FLOOR + rel * abs(trained_loss), basis


def reference_loss(split: dict, metrics: dict) -> tuple[float, str]:
    """(the trainer's eval loss of the saved weights, where it comes from). With
    load_best_model_at_end the adapter is the best checkpoint's; otherwise the final weights', which
    only an eval at the last step measured."""
    if split.get("saved_weights_eval_loss") is not None:
        return float(split["saved_weights_eval_loss"]), f"best checkpoint (step {split.get('best_global_step')}) eval_loss"
    curve = metrics.get("eval_loss_curve") or []
    if not curve:
        raise ValueError("train_metrics.json has no eval_loss: the run evaluated nothing (axolotl.val_set_size=0?)")
    step, loss = curve[-1]
    if step != split.get("global_step"):
        raise ValueError(f"the last eval ran at step {step}, training ended at step {split.get('global_step')}: no eval "
                         "loss of the saved weights (make max_steps a multiple of eval_steps)")
    return float(loss), f"final eval_loss (step {step})"
