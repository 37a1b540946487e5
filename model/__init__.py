"""Stable Diffusion 2 inpainting in plain PyTorch."""
