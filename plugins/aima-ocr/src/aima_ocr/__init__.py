"""AIMA plugin: text in images and video keyframes, read with RapidOCR (PP-OCRv4 detection and recognition, ONNX)."""
