"""Training: the model, its configuration and the ALS and Adam solvers, on CPU, GPU or torch.distributed."""
