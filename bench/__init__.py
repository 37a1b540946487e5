"""Benchmarks, the sleeping stand-in model and the synthetic dataset. The job never imports this package; the
command line imports `rayinpaint demo` and `rayinpaint bench` from it when one of them runs."""
