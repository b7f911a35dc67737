"""Export (libra_rcnn.export, docs/export.md): every meta-architecture of the project, traced by
Detectron2's TracingAdapter at 256 x 256, against the eager model at 256 x 256 and 200 x 330, in
TorchScript and in ONNX Runtime; the command with weights and a sample image; its errors."""
import numpy as np
import onnxruntime
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from libra_rcnn.tools import export

from conftest import CONFIG, REPO, SMALL_OVERRIDES, TINY, load_cfg

# Tracing warns of every Python value it records as a constant: the test checks the results instead.
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")

# Random-init models score every class about equally: threshold 0 so that they detect (up to
# TEST.DETECTIONS_PER_IMAGE boxes after NMS) and the comparison has boxes to compare.
DETECT = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
ARCHITECTURES = {
    # GeneralizedRCNN with the BFP backbone, LibraRPN and LibraROIHeads.
    "libra_rcnn": ("configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml", []),
    "libra_retinanet": ("configs/FashionScenes/libra_retinanet_R_18_FPN_GN.yaml", []),  # LibraRetinaNet, BFP
    "ab_fsaf": ("configs/FashionScenes/ab_fsaf_R_18_FPN_GN.yaml", []),  # FSAF's both branches
}  # fmt: skip
# TorchScript runs the traced graph with PyTorch's own kernels, the graph that ONNX export
# records too: one architecture each way covers it; ONNX (the other kernels) for every one.
EXPORTS = [("libra_rcnn", "torchscript")] + [(name, "onnx") for name in ARCHITECTURES]
TRACED_HW, OTHER_HW = (256, 256), (200, 330)
# Largest differences allowed, boxes in pixels. TorchScript runs PyTorch's own kernels (measured:
# identical); ONNX Runtime's kernels round differently (measured up to ~1e-3 px on boxes decoded
# from random-init deltas, ~3e-7 on scores).
TOLERANCE = {"torchscript": (1e-4, 1e-6), "onnx": (5e-3, 1e-5)}


def images():
    g = torch.Generator().manual_seed(1)
    return {hw: torch.rand(3, *hw, generator=g) * 255 for hw in (TRACED_HW, OTHER_HW)}


def matched_differences(eager, exported):
    """Largest box and score differences between two ``Instances`` of the same detections.

    Detections of equal score may come in either order (measured: FSAF, two boxes of score
    0.0164 swapped in ONNX Runtime), so each eager detection is paired with the exported one
    of the same class and nearest box (after NMS a class has no two equal boxes), and the
    pairing must be one-to-one.
    """
    assert len(exported) == len(eager)
    a, b = eager.pred_boxes.tensor, exported.pred_boxes.tensor
    other_class = eager.pred_classes[:, None] != exported.pred_classes[None, :]
    pair = (torch.cdist(a, b, p=float("inf")) + 1e6 * other_class).argmin(dim=1)
    assert torch.equal(pair.sort().values, torch.arange(len(eager)))
    assert torch.equal(exported.pred_classes[pair], eager.pred_classes)
    box = (b[pair] - a).abs().max().item()
    score = (exported.scores[pair] - eager.scores).abs().max().item()
    return box, score


def run_exported(fmt, path):
    if fmt == "torchscript":
        model = torch.jit.load(path)
        return lambda image: model(image)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda image: [torch.from_numpy(x) for x in session.run(None, {"image": image.numpy()})]


def build(name):
    config, overrides = ARCHITECTURES[name]
    torch.manual_seed(0)
    return build_model(load_cfg(config, [*SMALL_OVERRIDES, *overrides, *DETECT])).eval()


@pytest.mark.parametrize("name,fmt", EXPORTS)
def test_exported_model_gives_the_eager_detections_at_two_sizes(name, fmt, tmp_path):
    model = build(name)
    inputs = images()
    adapter = export.traceable_model(model, inputs[TRACED_HW])
    path = export.export_model(adapter, inputs[TRACED_HW], fmt, str(tmp_path))
    run = run_exported(fmt, path)
    box_tol, score_tol = TOLERANCE[fmt]
    for hw, image in inputs.items():
        with torch.no_grad():
            eager = adapter.inference_func(model, [{"image": image}])[0]["instances"]
        exported = adapter.outputs_schema(run(image))[0]["instances"]
        assert len(eager) > 0
        assert tuple(int(s) for s in exported.image_size) == eager.image_size == hw
        box, score = matched_differences(eager, exported)
        print(f"{name} {fmt} {hw[0]}x{hw[1]}: {len(eager)} detections, max |d box| {box:.2e} px, max |d score| {score:.2e}")
        assert box <= box_tol and score <= score_tol, (name, fmt, hw, box, score)


def test_command_loads_weights_and_exports_onnx(tiny_scenes, tmp_path, monkeypatch):
    """``python -m libra_rcnn.export`` on the tiny split: MODEL.WEIGHTS are the exported ones."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tiny_scenes))
    cfg = load_cfg(CONFIG, [*TINY, *DETECT])
    torch.manual_seed(5)
    trained = build_model(cfg).eval()
    with torch.no_grad():  # weights unlike a fresh model's: the non-local output conv is zero at init
        trained.backbone.refine.out.weight.normal_(std=0.05)
    DetectionCheckpointer(trained, save_dir=str(tmp_path)).save("weights")
    argv = ["--config-file", str(REPO / CONFIG), "--format", "onnx", "--output", str(tmp_path / "out"), *TINY, *DETECT]
    argv += ["MODEL.WEIGHTS", str(tmp_path / "weights.pth")]
    assert export.main(argv) == 0
    path = str(tmp_path / "out" / "model.onnx")
    # The sample input was the first DATASETS.TEST image at test size: 128 x 128.
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [d.shape for d in session.get_inputs()] == [[3, "height", "width"]]
    image = export.sample_image(cfg)
    assert tuple(image.shape) == (3, 128, 128)
    adapter = export.traceable_model(trained, image)
    with torch.no_grad():
        adapter(image)  # records outputs_schema, which rebuilds Instances from the outputs
    outputs = [torch.from_numpy(x) for x in session.run(None, {"image": image.numpy()})]
    exported = adapter.outputs_schema(outputs)[0]["instances"]
    with torch.no_grad():
        eager = adapter.inference_func(trained, [{"image": image}])[0]["instances"]
    assert len(eager) > 0
    box, score = matched_differences(eager, exported)
    assert box <= 5e-3 and score <= 1e-5


def test_sample_image_is_resized_as_at_test_time(tmp_path):
    from PIL import Image

    cfg = load_cfg(CONFIG, [*SMALL_OVERRIDES, "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "100"])
    rgb = np.zeros((40, 80, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB; the model reads BGR (INPUT.FORMAT)
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    image = export.sample_image(cfg, str(tmp_path / "wide.png"))
    # Shorter side 40 -> 64 would make the longer 128 > 100: scaled to 50 x 100 instead.
    assert tuple(image.shape) == (3, 50, 100) and image.dtype == torch.float32
    assert image[2].min() == 200 and image[:2].max() == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sample-image", "missing.jpg"], "--sample-image missing.jpg: cannot read the image"),
        (["MODEL.WEIGHTS", "missing.pth"], "MODEL.WEIGHTS file missing.pth not found"),
        (["DATASETS.TEST", "()"], "DATASETS.TEST is empty"),
        (["MODEL.LIBRA.BFP.NO_SUCH_KEY", "1"], "Non-existent key: MODEL.LIBRA.BFP.NO_SUCH_KEY"),
    ],
)
def test_command_refuses_bad_input_in_one_line(extra, message, tmp_path, capsys):
    argv = ["--config-file", str(REPO / CONFIG), "--format", "torchscript", "--output", str(tmp_path)]
    assert export.main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m libra_rcnn.export: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "model.ts").exists()
