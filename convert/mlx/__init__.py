"""MLX (mlx-lm) folders: names, affine quantization, the codec."""
