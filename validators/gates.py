"""Gates: the limits a candidate must meet, by what it is. A lossless float conversion must reproduce the
reference almost exactly; each quantization tier loses more and gets a looser limit.

Where each default comes from (the README's "Validation gates" table says the same):
- f32, f16, bf16: measured with `modelport validate` on the tiny llama/mistral/qwen2 models (samples/tiny.py,
  built-in texts), set 5-80x above the worst KL seen (ppl ratio: 1.5x its distance from 1).
- Quantized tiers, mean KL: 5x llama.cpp's published Llama-3-8B scoreboard (`llama-perplexity --kl-divergence` on
  wikitext, tools/perplexity/README.md and PR #6936) for the tier's loosest listed preset: Q8_0 0.0014, Q6_K 0.0055,
  Q5_K_M 0.011, Q4_K_M 0.031, Q4_0 0.072, Q3_K_M 0.10, Q2_K 0.44. The 5x headroom is for what differs from that
  measurement: the built-in texts (code, CJK, emoji and whitespace runs lose more than English prose) and other
  families and sizes (Llama 3 8B is among the more sensitive: PR #6936 found it losing about twice Llama 2 7B's
  perplexity at Q4_K_M). Presets the scoreboard does not list share their tier's limit (Q5_0/Q5_1/Q5_K_S with
  Q5_K_M; Q4_1 and ONNX INT4 with Q4_0; IQ types by bits per weight).
- Quantized tiers, top-1 and ppl ratio: not from the scoreboard. The published ppl ratios (Q8_0 1.0004, Q6_K
  1.0035, Q4_K_M 1.028, Q2_K 1.56) all sit inside these limits; they stay wide because seeded random tiny models
  swing further (tiny Q8_0: ppl ratio up to 1.035, top-1 down to 0.973), and a trained model's loss shows in KL.
A seeded random tiny model quantized below Q8_0 has no redundancy and is expected to fail (tiny Q4_0: KL 0.3-0.4)."""
from __future__ import annotations

from dataclasses import dataclass

from modelport.formats.errors import BadInput


@dataclass(frozen=True)
class Limits:
    max_kl: float  # mean KL(ref || cand) over all positions, nats
    min_top1: float  # share of positions whose argmax agrees
    max_ppl_ratio: float  # perplexity(cand) / perplexity(ref)


TIERS = {
    "f32": Limits(1e-5, 0.999, 1.001),
    "f16": Limits(5e-4, 0.98, 1.01),
    "bf16": Limits(5e-3, 0.97, 1.03),
    "q8": Limits(0.007, 0.95, 1.05),  # 5 x Q8_0's 0.0014
    "q6": Limits(0.03, 0.90, 1.10),  # 5 x Q6_K's 0.0055, rounded up
    "q5": Limits(0.055, 0.85, 1.15),  # 5 x Q5_K_M's 0.011
    "q4": Limits(0.16, 0.80, 1.25),  # 5 x Q4_K_M's 0.031, rounded up
    "q4_0": Limits(0.36, 0.75, 1.30),  # 5 x Q4_0's 0.072
    "q3": Limits(0.50, 0.70, 1.40),  # 5 x Q3_K_M's 0.10
    "q2": Limits(2.20, 0.55, 2.00),  # 5 x Q2_K's 0.44
}

# a candidate's storage type -> tier (GGUF file types by their llama.cpp names; IQ types by bits per weight)
TIER_OF = {"F32": "f32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8", "Q6_K": "q6", "INT8": "q8", "INT4": "q4_0",
           "INT6": "q6", "INT5": "q5", "INT3": "q3", "INT2": "q2",  # MLX's affine widths
           "Q5_0": "q5", "Q5_1": "q5", "Q5_K_S": "q5", "Q5_K_M": "q5",
           "Q4_0": "q4_0", "Q4_1": "q4_0", "Q4_K_S": "q4", "Q4_K_M": "q4", "IQ4_NL": "q4", "IQ4_XS": "q4",
           "Q3_K_S": "q3", "Q3_K_M": "q3", "Q3_K_L": "q3", "IQ3_XXS": "q3", "IQ3_XS": "q3", "IQ3_S": "q3",
           "IQ3_M": "q3", "Q2_K": "q2", "Q2_K_S": "q2", "IQ2_XXS": "q2", "IQ2_XS": "q2", "IQ2_S": "q2",
           "IQ2_M": "q2", "IQ1_S": "q2", "IQ1_M": "q2", "TQ1_0": "q2", "TQ2_0": "q2"}

FLAGS = {"max_kl": "--max-kl", "min_top1": "--min-top1", "max_ppl_ratio": "--max-ppl-ratio"}


def limits(cand_type: str, overrides: dict[str, float | None] | None = None) -> tuple[Limits, str]:
    """The candidate type's default limits with any flags applied, and the tier they came from."""
    tier = TIER_OF.get(cand_type, "q2")  # an unknown type gets the loosest tier, never a false alarm
    base = vars(TIERS[tier])
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for k in given:
        if k not in base:
            raise BadInput(None, f"unknown gate {k!r}; known: {', '.join(base)}")
    return Limits(**{**base, **given}), tier


def evaluate(overall: dict, tokenizer_mismatches: list[str], lim: Limits) -> dict[str, dict]:
    """Gate name -> limit, value, pass. Tokenizer parity is always a gate: different ids are a different model."""
    return {
        "tokenizer": {"limit": 0, "value": len(tokenizer_mismatches), "passed": not tokenizer_mismatches,
                      "detail": ", ".join(tokenizer_mismatches)},
        "kl_mean": {"limit": lim.max_kl, "value": overall["kl_mean"], "passed": overall["kl_mean"] <= lim.max_kl,
                    "detail": "mean KL(ref || cand), nats"},
        "top1": {"limit": lim.min_top1, "value": overall["top1"], "passed": overall["top1"] >= lim.min_top1,
                 "detail": "share of positions whose top-1 token agrees"},
        "ppl_ratio": {"limit": lim.max_ppl_ratio, "value": overall["ppl_ratio"],
                      "passed": overall["ppl_ratio"] <= lim.max_ppl_ratio,
                      "detail": "perplexity(cand) / perplexity(ref)"},
    }
