"""One module per inference runtime, all behind the predictor interface of `base`; the ONNX export they read.

Nothing here knows the registry (optcv.runtime), the measurements or the gate that use it.
"""
