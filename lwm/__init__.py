"""LWM-PyTorch."""
