"""Adapters: the registry (`registry`), putting one on a model (`attach`) and merging into a full model
(`merge`)."""
