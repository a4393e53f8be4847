"""AIMA speakers plugin: who speaks when, with Resemblyzer's voice encoder run without torch (onnxruntime)."""
