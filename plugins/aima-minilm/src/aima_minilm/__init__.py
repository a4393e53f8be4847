"""AIMA plugin: the all-MiniLM-L6-v2 sentence embedder, its BERT graph built for ONNX Runtime from the safetensors
weights (no torch, no sentence-transformers)."""
