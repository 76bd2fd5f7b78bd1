"""Adapters: the registry (`registry`) and merging into a full model (`merge`)."""
