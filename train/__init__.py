"""One flat torchrun script per model: `torchrun --standalone --nproc_per_node=N -m minivox.train.<model>`."""
