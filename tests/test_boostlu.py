"""BoostLU: the boosted class-activation-map wrapper around timm CNNs."""
import pytest
import timm
import torch
from torch import nn

from spl_losses.models import BoostLU, create_boostlu_model

NUM_CLASSES = 4


def _model(name="test_resnet", seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("num_classes", NUM_CLASSES)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def _images(batch=2, size=64, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _hand_cam(features, weight, bias):
    """CAM[b, c, h, w] = sum_d W[c, d] f[b, d, h, w] + bias[c], written out with broadcasting."""
    return (weight[None, :, :, None, None] * features[:, None]).sum(dim=2) + bias[None, :, None, None]


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_alpha_one_equals_plain_model(name):
    model = _model(name)
    x = _images()
    with torch.no_grad():
        plain = model(x)
        boosted = BoostLU(model, alpha=1.0)(x)
    assert boosted.shape == (2, NUM_CLASSES)
    torch.testing.assert_close(boosted, plain, rtol=1e-5, atol=1e-5)


def test_alpha_matches_hand_computed_cam():
    model = _model()
    x = _images(size=96)
    wrapper = BoostLU(model, alpha=5.0)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape[-2:] == (3, 3)
        cam = _hand_cam(features, model.fc.weight, model.fc.bias)
        expected = torch.where(cam > 0, 5.0 * cam, cam).mean(dim=(2, 3))
        got = wrapper(x)
        plain_cam = wrapper.class_activation_map(features, boosted=False)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert plain_cam.shape == (2, NUM_CLASSES, 3, 3)
    torch.testing.assert_close(plain_cam, cam, rtol=1e-5, atol=1e-5)


def test_alpha_changes_only_classes_with_positive_activation():
    model = _model()
    x = _images(size=96)
    with torch.no_grad():
        # Features after the final ReLU are >= 0: a class with weights <= 0 and a negative bias has
        # CAM < 0 everywhere; one with weights >= 0 and a positive bias has CAM > 0 everywhere.
        model.fc.weight[0] = -model.fc.weight[0].abs()
        model.fc.bias[0] = -0.1
        model.fc.weight[1] = model.fc.weight[1].abs()
        model.fc.bias[1] = 0.1
        features = model.forward_features(x)
        assert features.min() >= 0
        plain = model(x)
        boosted = BoostLU(model, alpha=3.0)(x)
        cam = _hand_cam(features, model.fc.weight, model.fc.bias)
    assert (cam[:, 0] < 0).all() and (cam[:, 1] > 0).all()
    torch.testing.assert_close(boosted[:, 0], plain[:, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(boosted[:, 1], 3.0 * plain[:, 1], rtol=1e-5, atol=1e-6)
    # Boosting never lowers a logit: the positive part only grows.
    assert (boosted >= plain - 1e-6).all()


def test_gradient_reaches_backbone_and_classifier():
    model = _model()
    wrapper = BoostLU(model, alpha=5.0).train()
    wrapper(_images()).sum().backward()
    assert model.fc.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0
    stem = model.conv1[0].weight.grad
    assert stem is not None and torch.isfinite(stem).all() and stem.abs().sum() > 0


def test_bf16_autocast_on_cpu():
    model = _model()
    wrapper = BoostLU(model, alpha=5.0)
    x = _images()
    with torch.no_grad():
        reference = wrapper(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = wrapper(x)
    assert low.dtype == torch.float32
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low, reference, rtol=0.05, atol=0.05 * float(reference.abs().max()))


def test_head_dropout_applies_only_in_training():
    model = _model(drop_rate=0.5)
    x = _images()
    wrapper = BoostLU(model, alpha=1.0)
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x), model(x), rtol=1e-5, atol=1e-5)
        wrapper.train()
        model.apply(lambda m: m.eval() if isinstance(m, nn.BatchNorm2d) else None)
        torch.manual_seed(3)
        dropped = wrapper(x)
    assert not torch.allclose(dropped, model.eval()(x))


def test_timm_passthrough_and_export():
    model = _model()
    wrapper = BoostLU(model, alpha=2.0)
    assert wrapper.model is model
    assert wrapper.get_classifier() is model.fc
    assert wrapper.num_classes == NUM_CLASSES
    assert wrapper.num_features == model.num_features
    assert wrapper.pretrained_cfg == model.pretrained_cfg and wrapper.default_cfg == model.pretrained_cfg
    x = _images()
    with torch.no_grad():
        features = wrapper.forward_features(x)
        torch.testing.assert_close(wrapper.forward_head(features, pre_logits=True), features.mean(dim=(2, 3)))
    # The inner model's weights load into a fresh plain model.
    inner = {k[len("model."):]: v for k, v in wrapper.state_dict().items()}
    assert set(inner) == set(model.state_dict())
    fresh = _model(seed=5)
    fresh.load_state_dict(inner)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
    wrapper.reset_classifier(7)
    assert wrapper.num_classes == 7 and wrapper(x).shape == (2, 7)


def test_create_boostlu_model():
    torch.manual_seed(0)
    wrapper = create_boostlu_model("test_resnet", alpha=4.0, pretrained=False, num_classes=3)
    assert isinstance(wrapper, BoostLU) and wrapper.alpha == 4.0 and wrapper.num_classes == 3


@pytest.mark.parametrize("name, kwargs, match", [
    ("test_resnet", dict(global_pool="max"), "average pooling"),
    ("test_resnet", dict(global_pool="avgmax"), "average pooling"),
    ("test_resnet", dict(num_classes=0), "num_classes=0"),
    ("test_convnext", dict(), "average pool \\+ linear"),
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=1), "average pooling"),
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=1, global_pool="avg"), "forward_head"),
])
def test_rejects_models_where_it_does_not_apply(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        BoostLU(_model(name, **kwargs))


def test_type_errors():
    with pytest.raises(TypeError, match="nn.Module"):
        BoostLU("resnet50")
    with pytest.raises(TypeError, match="forward_features"):
        BoostLU(nn.Linear(3, 3))
    model = _model()
    model.fc = nn.Sequential(nn.Linear(model.num_features, 8), nn.ReLU(), nn.Linear(8, NUM_CLASSES))
    with pytest.raises(TypeError, match="linear classifier"):
        BoostLU(model)


@pytest.mark.parametrize("alpha", [0, -1.0, True, "5"])
def test_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        BoostLU(_model(), alpha=alpha)


def test_rejects_bad_feature_maps():
    model = _model()
    wrapper = BoostLU(model)
    features = torch.randn(2, model.num_features, 2, 2)
    with pytest.raises(ValueError, match="NHWC"):
        wrapper.forward_head(features.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="4-D"):
        wrapper.forward_head(features.mean(dim=(2, 3)))
