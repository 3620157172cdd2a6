"""Peak memory of converting torch.distributed.checkpoint folders: `python -m benchmarks.dcp`."""
