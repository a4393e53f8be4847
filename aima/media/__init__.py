"""Media handling: content sniffing (`aima.media.sniff`) and probing with Pillow and PyAV (`.probe`).

The submodules are imported directly; `sniff` has no heavy dependencies, so the upload path can check content
without importing the decoders.
"""
