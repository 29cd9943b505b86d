import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FUNDUS, XRAY
from medcls.cli import main
from medcls.data.images import load_image
from medcls.explain.gradcam import Explainer, ExplainError, last_feature_map_layer
from medcls.explain.shortcut import outside_fraction, region_mask, summarize
from medcls.inference.predictor import Predictor
from medcls.models import ARCHS, build_model
from medcls.models.checkpoint import ModelInfo

pytestmark = pytest.mark.data  # reads the real data sets directly

XRAY_PAIR = [XRAY / "test" / "NORMAL" / "IM-0001-0001.jpeg", XRAY / "test" / "PNEUMONIA" / "person1_virus_6.jpeg"]


def _odd_sized_copy(source, target, size=(300, 190)):
    """A real image saved at a non-square size of its own, unlike the model's input."""
    Image.open(source).resize(size).save(target)
    return target


@pytest.mark.parametrize("arch", ARCHS.names())
def test_every_architecture_gets_a_feature_map_layer_and_maps(arch):
    """Untrained single-logit models of every registered architecture (5 logits for one)."""
    kwargs = {"padding": "same"} if arch == "seed-cnn" else {}
    k = 5 if arch == "resnet18" else 2
    torch.manual_seed(0)  # untrained weights: fixed, so the check is deterministic
    info = ModelInfo(arch, kwargs, [f"c{i}" for i in range(k)], 64, "grayscale", [0.5], [0.25])
    net = build_model(arch, 1, k, 64, **kwargs)
    explainer = Explainer(Predictor(net, info), method="gradcam++")
    assert explainer.layer == last_feature_map_layer(net, 1, 64)
    maps = explainer.maps(np.stack([load_image(XRAY_PAIR[1], "grayscale", 64)]))
    assert maps.shape == (1, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    assert maps.std() > 1e-3


def test_layer_choice_prefers_the_map_before_final_pooling():
    net = build_model("seed-cnn", 1, 2, 64, padding="same")
    assert last_feature_map_layer(net, 1, 64) == "backbone.13"  # the last ReLU, not the 2x2 max-pool after it
    assert last_feature_map_layer(build_model("resnet18", 1, 2, 64), 1, 64) == "backbone.layer4"


def test_binary_maps_have_the_image_size_and_depend_on_the_input(trained_run, tmp_path):
    explainer = Explainer.from_checkpoint(trained_run)  # Grad-CAM++, the predicted class
    odd = _odd_sized_copy(XRAY_PAIR[0], tmp_path / "odd.png")
    a, b, c = explainer.explain([odd, *XRAY_PAIR])
    assert a.cam.shape == (190, 300) and a.image.shape == (190, 300, 3)
    assert b.cam.shape == load_image(XRAY_PAIR[0], "rgb").shape[:2]
    for ex in (a, b, c):
        assert ex.cam.std() > 0.01 and 0 <= ex.cam.min() and ex.cam.max() <= 1
        assert ex.class_name in ("NORMAL", "PNEUMONIA") and 0 <= ex.probability <= 1
    assert np.abs(b.cam - c.cam).mean() > 0.02  # a normal and a pneumonia film: different maps
    saved = a.save(tmp_path / "a.png")
    assert Image.open(saved).size == (300, 190)


def test_plain_gradcam_splits_a_single_logit_between_the_classes(trained_run, tmp_path):
    """With one logit, Grad-CAM of class 0 is the negated map of class 1: on the feature map their
    supports are disjoint; resized to the image (bilinear) they meet only where they fade, so no
    pixel is strong in both and two non-empty maps are anti-correlated; together they cover the evidence
    of both sides."""
    explainer = Explainer.from_checkpoint(trained_run, method="gradcam")
    sources = [_odd_sized_copy(XRAY_PAIR[0], tmp_path / "odd.png"), XRAY_PAIR[1]]
    negative, positive = (explainer.explain(sources, classes=[k, k]) for k in (0, 1))
    assert negative[0].cam.shape == positive[0].cam.shape == (190, 300)
    both = [n.cam + p.cam for n, p in zip(negative, positive)]
    for n, p, union in zip(negative, positive, both):
        assert not ((n.cam > 0.5) & (p.cam > 0.5)).any()
        if n.cam.std() > 0.01 and p.cam.std() > 0.01:  # (one map is empty where the logit's gradient has one sign)
            assert np.corrcoef(n.cam.ravel(), p.cam.ravel())[0, 1] < -0.3
        assert union.std() > 0.01
    small = [np.asarray(Image.fromarray(u).resize((64, 64))) for u in both]
    assert np.abs(small[0] - small[1]).mean() > 0.02


def test_binary_explains_the_asked_class(trained_run):
    explainer = Explainer.from_checkpoint(trained_run, method="gradcam++")
    images = np.stack([explainer.predictor.preprocess(XRAY_PAIR[1])] * 2)
    normal, pneumonia = explainer.maps(images, [0, 1])
    assert np.abs(normal - pneumonia).mean() > 0.02


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_multiclass_maps(fundus_run, tmp_path, method):
    explainer = Explainer.from_checkpoint(fundus_run, method=method)
    first, second = sorted((FUNDUS / "Healthy").iterdir())[0], sorted((FUNDUS / "Proliferate DR").iterdir())[0]
    odd = _odd_sized_copy(first, tmp_path / "fundus.png", (256, 200))
    a, b, c = explainer.explain([odd, first, second], classes=[4, 4, 4])
    assert a.cam.shape == (200, 256) and b.cam.shape == (256, 256)
    assert all(ex.cam.std() > 0.01 for ex in (a, b, c))
    assert np.abs(b.cam - c.cam).mean() > 0.02
    assert a.class_name == "Proliferate DR"


def test_layer_override_and_clear_errors(trained_run):
    default = Explainer.from_checkpoint(trained_run)
    earlier = Explainer.from_checkpoint(trained_run, layer="backbone.9")
    image = np.stack([default.predictor.preprocess(XRAY_PAIR[1])])
    assert np.abs(default.maps(image) - earlier.maps(image)).mean() > 0.01
    with pytest.raises(ExplainError, match="no layer named 'backbone.99'"):
        Explainer.from_checkpoint(trained_run, layer="backbone.99")
    with pytest.raises(ExplainError, match="unknown explanation method 'lime'"):
        Explainer.from_checkpoint(trained_run, method="lime")


def test_shortcut_fraction_of_energy_outside_the_region():
    for region in ("box", "ellipse"):
        mask = region_mask(64, 64, region)
        corner, centre, uniform, flat = np.zeros((4, 64, 64), np.float32)
        corner[:4, :4] = 1  # a laterality marker's place
        centre[28:36, 28:36] = 1
        uniform[:] = 1
        fractions = outside_fraction(np.stack([corner, centre, uniform, flat]), mask)
        assert fractions[0] == 1 and fractions[1] == 0 and np.isnan(fractions[3])
        assert fractions[2] == pytest.approx(1 - mask.mean())
        summary = summarize(fractions, np.array([0, 1, 0, 1]), ["a", "b"], mask, region)
        assert summary["flat_maps"] == 1 and summary["images"] == 4
        assert summary["flag"] and summary["share_mostly_outside"] == pytest.approx(1 / 3, abs=1e-3)
        diffuse = summarize(np.array([0.45, 0.3, 0.4, 0.2]), np.zeros(4, int), ["a", "b"], mask, region)
        assert not diffuse["flag"] and diffuse["mean_outside"] == pytest.approx(0.3375, abs=1e-4)
    assert 0.3 < 1 - region_mask(64, 64, "box").mean() < 0.4
    assert 1 - region_mask(100, 100, "ellipse").mean() == pytest.approx(1 - np.pi / 4, abs=0.01)


def test_predict_cli_writes_one_overlay_per_image(trained_run, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    odd = _odd_sized_copy(XRAY_PAIR[1], tmp_path / "in" / "person1_virus_6.png")  # same stem, other folder
    args = ["predict", str(XRAY_PAIR[1]), str(odd), "-m", str(trained_run), "--explain", str(tmp_path / "maps")]
    assert main(args) == 0
    assert "2 heat-map overlay(s) written" in capsys.readouterr().out
    written = sorted((tmp_path / "maps").iterdir())
    assert [p.name for p in written] == ["person1_virus_6-1.gradcampp.png", "person1_virus_6.gradcampp.png"]
    # each PNG: the overlay at the image's own size (top left), a colour bar right, a caption band below
    explained = Explainer.from_checkpoint(trained_run).explain([odd, XRAY_PAIR[1]])
    for png, ex in zip(written, explained):
        picture = np.asarray(Image.open(png).convert("RGB"))
        h, w = ex.image.shape[:2]
        assert picture.shape[0] > h and picture.shape[1] > w
        assert np.abs(picture[:h, :w].astype(int) - ex.overlay()).max() <= 1
        assert picture[h:, :w].min() < 100  # the caption's dark text on the white band
    bar = picture[: ex.image.shape[0], ex.image.shape[1]:]
    assert bar[..., 0].max() > 200 and bar[..., 2].max() > 200  # red (high) and blue (low) ends of the scale


def test_a_labelled_picture_names_method_class_and_probability(tmp_path):
    from medcls.explain.picture import annotate

    overlay = np.full((120, 160, 3), 128, np.uint8)
    a = annotate(overlay, "Grad-CAM++: PNEUMONIA, p = 0.912")
    b = annotate(overlay, "Grad-CAM: NORMAL, p = 0.100")
    assert a.shape[:2] == b.shape[:2] and (a[:120, :160] == 128).all()
    assert (a[120:] != b[120:]).any()  # the caption is drawn, and differs with its text
