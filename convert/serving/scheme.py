"""The compressed-tensors schemes written here (W4A16 / W8A16, int, group-wise, pack-quantized) described with the
compressed-tensors library's own types, and the quantization_config llm-compressor writes beside them."""
from __future__ import annotations

import compressed_tensors
from compressed_tensors.base import (COMPRESSION_VERSION_NAME, QUANTIZATION_CONFIG_NAME, QUANTIZATION_METHOD_NAME,
                                     SPARSITY_CONFIG_NAME)
from compressed_tensors.config import CompressionFormat
from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                             QuantizationStatus, QuantizationStrategy, QuantizationType)

from modelport.formats.serving import COMPRESSED_TENSORS

PACKED = CompressionFormat.pack_quantized.value


def weight_args(bits: int, group_size: int, symmetric: bool) -> QuantizationArgs:
    """llm-compressor's W4A16 / W8A16 presets (`_int_wnam`), with the group size and symmetry asked for."""
    return QuantizationArgs(num_bits=bits, type=QuantizationType.INT, strategy=QuantizationStrategy.GROUP,
                            group_size=group_size, symmetric=symmetric, dynamic=False)


def scheme(bits: int, group_size: int, symmetric: bool) -> QuantizationScheme:
    return QuantizationScheme(targets=["Linear"], weights=weight_args(bits, group_size, symmetric), format=PACKED)


def config_entry(bits: int, group_size: int, symmetric: bool, ignore: list[str]) -> dict:
    """config.json's quantization_config as ModelCompressor.update_config writes it (compressed status)."""
    qc = QuantizationConfig(config_groups={"group_0": scheme(bits, group_size, symmetric)}, format=PACKED,
                            quantization_status=QuantizationStatus.COMPRESSED, ignore=ignore)
    return {COMPRESSION_VERSION_NAME: compressed_tensors.__version__, QUANTIZATION_METHOD_NAME: COMPRESSED_TENSORS,
            SPARSITY_CONFIG_NAME: {}, "transform_config": {},
            **qc.model_dump(mode="json", exclude={QUANTIZATION_METHOD_NAME})}


CONFIG_KEY = QUANTIZATION_CONFIG_NAME
