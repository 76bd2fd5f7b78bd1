"""Serving: adapters hot-swapped on one base (`hotswap`) behind an OpenAI-compatible API (`app`)."""
