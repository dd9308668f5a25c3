"""sdbnn_deploy.testing.assert_deployment_matches, as a user's suite would call it, on the demo model."""
import pytest

from sdbnn_deploy.testing import assert_deployment_matches
from verify_fixtures import CORRUPTED_LAYER, demo_deployment


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_deployment(tmp_path_factory)


def test_passes_on_the_demo_onnx_and_x86_artifact(demo):
    for deployed in (demo["onnx"], demo["artifact"]):
        report = assert_deployment_matches(demo["checkpoint"], deployed, data="digits", limit=40)
        assert report["passed"] and report["runtimes"]["onnxruntime"]["top1_agreement"] == 1.0
    assert report["runtimes"]["tvm"]["top1_accuracy"] > 0.9


def test_raises_a_readable_summary_naming_the_layer(demo):
    with pytest.raises(AssertionError) as e:
        assert_deployment_matches(demo["checkpoint"], demo["bad_artifact"], limit=40)
    text = str(e.value)
    assert "FAILED" in text and f"first departure: {CORRUPTED_LAYER} in the conversion" in text
    assert "exceeded: onnxruntime" in text and "exceeded: tvm" in text


def test_tolerances_are_honoured(demo):
    with pytest.raises(AssertionError, match="max |logit difference|"):
        assert_deployment_matches(demo["checkpoint"], demo["onnx"], limit=8, max_logit_diff=0.0)
    # a loose enough gate lets even the broken model through
    assert_deployment_matches(demo["checkpoint"], demo["bad_onnx"], limit=40, min_agreement=0.0,
                              max_logit_diff=1e3)
