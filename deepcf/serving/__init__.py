"""Serving: ONNX export and its sidecar, chunked scoring, an item-row model's cached codes and
new-user fold-in, evaluation, recommendation, metrics, and the HTTP service.

Nothing here imports the LightningModule: a served model is an ONNX file and its sidecar, or a
net rebuilt from a checkpoint through the model contract (deepcf.models.contract)."""
