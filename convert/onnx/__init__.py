"""ONNX: the graph builder, the read-back walk, MatMulNBits encoding and decoding, onnxruntime quantizers, optimum, genai."""
