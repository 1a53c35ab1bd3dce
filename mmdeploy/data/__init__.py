"""Datasets: manifests, the synthetic generator, raw-layout indexers and the feature cache."""
