"""The prepared GPU run (``benchmarks/gpu/run.sh``) and its summary (docs/gpu.md)."""
