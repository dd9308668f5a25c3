"""The custom operators of sdbnn-deploy: one module per operator, one home for each.

Every operator module holds, in this order:
- its semantics (the module docstring: inputs, attributes, outputs, the exact rule),
- `reference(...)`: the numpy implementation that all tests compare against,
- `onnx_function()`: its ONNX model-local function, a body of standard ONNX ops only, so that an
  exported model runs on stock onnxruntime with no extra library.
The TVM computes that implement the same semantics fast live in sdbnn_deploy.tvm (kernels are kept
apart from graph rewriting), and are tested against `reference`.

All operators live in the ONNX domain DOMAIN. Packed tensors follow sdbnn_deploy.bits.
"""

DOMAIN = "sdbnn"
DOMAIN_VERSION = 1
ONNX_OPSET = 18
