"""AIMA plugin: what a vision-language model (LLaVA-1.6) sees in images and video keyframes, as structured JSON."""
