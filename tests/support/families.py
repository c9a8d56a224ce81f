"""The families and samples under test, read from the family registry (modelport.convert.archs) and the sample
table (modelport.samples.tiny.SAMPLES): a family or a sample joins the tests by being registered, not by being typed
here."""
from __future__ import annotations

from modelport.convert import archs
from modelport.convert.archs.base import Decoder
from modelport.samples import tiny

# the samples of the decoder families our ONNX graph builder builds, as their ONNX sections say (a sample is named for
# its family; gemma3's family is gemma3_text); encoders (bert) have their own tests (test_family_bert.py)
FAMILIES = tuple(sorted(name for name, sample in tiny.SAMPLES.items()
                        if archs.for_hf(sample.family).onnx.builder and sample.resizes is None
                        and sample.auto_class == tiny.CAUSAL_LM))



def ort_builds(name: str) -> bool:
    """Whether the builder makes an --ops ort graph of sample `name`: not with ALiBi (mpt), which its
    GroupQueryAttention does not add (refused)."""
    arch = archs.for_hf(tiny.SAMPLES[name].family)
    return not arch.onnx.decoder.alibi_bias_max(arch.normalize(tiny.config(name)))


# (sample, float operator set) of each graph the builder builds
BUILT_OPS = tuple((name, ops) for name in FAMILIES for ops in ("portable", "ort")
                  if ops == "portable" or ort_builds(name))

# the plain llama-like decoders among them (the builder's default Decoder: no scales, caps or norm offsets), through
# GGUF in three dtypes and round trips kept bit-exact (test_gguf_parity.py, test_roundtrip.py)
LLAMA_LIKE = tuple(name for name in FAMILIES if archs.for_hf(tiny.SAMPLES[name].family).onnx.decoder == Decoder())

# the causal-LM samples of every other family (falcon40b and falcon2 beside falcon: other layouts), each through
# every GGUF path in test_families.py; encoders have their own tests (bert: test_family_bert.py), and a sample that
# only resizes another (mixtral8) serves the tests of the count-dependent rules it is made for
MORE_FAMILIES = tuple(name for name, sample in tiny.SAMPLES.items()
                      if sample.family not in LLAMA_LIKE and sample.auto_class == tiny.CAUSAL_LM
                      and sample.resizes is None)

# GGUF -> HF tolerance where a family's documented transform is not exact in f32: norms applied as (offset + w) go
# to GGUF as F32 (w + 1) and back as (w + 1) - 1, within half an ulp of (w + 1): below 1e-6 for |w| < 8 (exact for
# BF16/F16 sources, see tests/test_family_gemma.py)
ROUNDTRIP_ATOL = {name: 1e-6 for name, sample in tiny.SAMPLES.items() if sample.norm_offset}
