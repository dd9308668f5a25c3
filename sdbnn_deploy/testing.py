"""A gate for your own test suite: is the deployed model still the PyTorch model?

    from sdbnn_deploy.testing import assert_deployment_matches

    def test_deployed_model_matches():
        assert_deployment_matches("model.pt", "build/x86", data="val.npz")

It runs `sdbnn_deploy.verify.verify` (PyTorch, onnxruntime of the ONNX, the TVM artifact, on the same
inputs) without a progress bar, and raises AssertionError with the readable summary (figures per
runtime, the exceeded tolerances, the first layer that departs) when a tolerance is exceeded. It
returns the report (the JSON layout of sdbnn_deploy.schema) when it passes, for further checks of your
own, e.g. `report["runtimes"]["tvm"]["top1_accuracy"] >= 0.95`.
"""
from sdbnn_deploy.verify import DEFAULT_MIN_AGREEMENT, summary, verify


def assert_deployment_matches(checkpoint, deployed, data="digits", limit=None,
                              min_agreement=DEFAULT_MIN_AGREEMENT, max_logit_diff=None, **kw) -> dict:
    """Assert that `deployed` (an ONNX file or artifact folder) agrees with `checkpoint` on `data`.

    data: "digits", a .npz (x, optional y) or an image folder; limit: use the first N inputs;
    min_agreement: lowest top-1 agreement with PyTorch; max_logit_diff: largest |logit difference|
    (default 1% of the largest |logit|). Other keywords go to verify (batch_size, arch, trust_pickle).
    """
    report = verify(checkpoint, deployed, data=data, limit=limit, min_agreement=min_agreement,
                    max_logit_diff=max_logit_diff, progress=False, **kw)
    if not report["passed"]:
        raise AssertionError(summary(report))
    return report
