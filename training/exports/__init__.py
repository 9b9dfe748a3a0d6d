"""Exports of a registered adapter version: merged weights, ONNX builds and distilled students, each measured
against its teacher (base + adapter) and recorded in the hub as an artifact of the version it came from."""
