"""Serving: ONNX export and its sidecar, chunked scoring, evaluation, recommendation, metrics.

Nothing here imports the LightningModule: a served model is an ONNX file and its sidecar, or a
net rebuilt from a checkpoint through the model contract (deepcf.models.contract)."""
