"""Tools that run a trained model: predict on your own images (:mod:`.predict`), draw a dataset's
predictions (:mod:`.visualize`) and export to TorchScript or ONNX (:mod:`.export`)."""
