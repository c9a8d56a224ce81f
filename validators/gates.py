"""Gates: the limits a candidate must meet, by what it is. A lossless float conversion must reproduce the
reference almost exactly; each quantization tier loses more and gets a looser limit.

Where the defaults come from (README "Validation gates" has the measured table): the float tiers and Q8_0 are
measured with `modelport validate` on the tiny llama/mistral/qwen2 models (samples/tiny.py, built-in texts) and set
5-80x above the worst value seen (ppl ratio: 1.5x its distance from 1). Below Q8_0, seeded random-weight models
have no redundancy and lose far more than trained ones (tiny Q4_0: mean KL 0.3-0.4), so those tiers follow
llama.cpp's published `llama-perplexity --kl-divergence` figures for trained 7-8B models with ~3x headroom; a
tiny random model quantized that low is expected to fail them."""
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
    "q8": Limits(0.02, 0.95, 1.05),
    "q6": Limits(0.05, 0.90, 1.10),
    "q5": Limits(0.10, 0.85, 1.15),
    "q4": Limits(0.20, 0.80, 1.25),
    "q3": Limits(0.40, 0.70, 1.40),
    "q2": Limits(1.00, 0.55, 2.00),
}

# a candidate's storage type -> tier (GGUF file types by their llama.cpp names; IQ types by bits per weight)
TIER_OF = {"F32": "f32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8", "Q6_K": "q6", "INT8": "q8", "INT4": "q4",
           "INT6": "q6", "INT5": "q5", "INT3": "q3", "INT2": "q2",  # MLX's affine widths
           "Q5_0": "q5", "Q5_1": "q5", "Q5_K_S": "q5", "Q5_K_M": "q5",
           "Q4_0": "q4", "Q4_1": "q4", "Q4_K_S": "q4", "Q4_K_M": "q4", "IQ4_NL": "q4", "IQ4_XS": "q4",
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
