"""Training data: corpus synthesis from speech engines, manifests, conversations + RTTM, loaders."""
