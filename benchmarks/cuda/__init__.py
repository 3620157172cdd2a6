"""The CUDA load benchmark and GPU check (issue 17): `benchmarks/gpu_check.sh [--dry-run]`."""
