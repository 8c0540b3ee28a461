"""Contrastive auxiliary loss (NT-Xent, supervised variant), pooled features and the two-view transform."""
import math
import random

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torchvision import transforms as T

from spl_losses.losses.contrastive import ContrastiveAuxiliary, nt_xent_loss, pooled_features
from spl_losses.models import BoostLU
from spl_losses.transforms import TwoViewTransform, contrastive_view_transform, create_two_view_transform


def _unit(angle_deg):
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)]


def _hand_loss(embeddings, positives_of, temperature):
    """Per-anchor -mean_{p in P(i)} log( exp(s_ip/t) / sum_{k != i} exp(s_ik/t) ), then the mean, in plain Python."""
    n = len(embeddings)
    total = 0.0
    for i in range(n):
        sims = [sum(a * b for a, b in zip(embeddings[i], embeddings[k])) / temperature for k in range(n)]
        denom = sum(math.exp(sims[k]) for k in range(n) if k != i)
        total += -sum(sims[p] - math.log(denom) for p in positives_of[i]) / len(positives_of[i])
    return total / n


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.07])
def test_identical_views_closed_form(temperature):
    # Two images 60 degrees apart, both views identical: for every anchor the positive has
    # similarity 1 and the two negatives 0.5, so the loss is log(1 + 2 exp(-0.5 / t)).
    z = torch.tensor([_unit(0), _unit(60)], dtype=torch.float64)
    expected = math.log(1 + 2 * math.exp(-0.5 / temperature))
    got = nt_xent_loss(z, z.clone(), temperature)
    assert got.dtype == torch.float32
    # float32 log-softmax of similarities of size 1/t (14 at t = 0.07): absolute error ~1e-6.
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=2e-6)


def test_distinct_views_against_hand_computation():
    z1 = [_unit(0), _unit(100), _unit(200)]
    z2 = [_unit(30), _unit(90), _unit(260)]
    embeddings = z1 + z2
    positives = {i: [(i + 3) % 6] for i in range(6)}
    expected = _hand_loss(embeddings, positives, 0.5)
    got = nt_xent_loss(torch.tensor(z1), torch.tensor(z2), temperature=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_embeddings_are_normalised_inside():
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    scales = torch.tensor([[0.5], [2.0], [3.0], [10.0]])
    torch.testing.assert_close(nt_xent_loss(z1 * scales, z2, 0.2), nt_xent_loss(z1, z2 / scales, 0.2))


def test_supervised_against_hand_computation():
    # Images 0 and 1 share class 0, image 2 has class 1, image 3 has no observed positive
    # (falls back to its own other view); the -1 entry is an observed negative, not a positive.
    targets = torch.tensor([[1, 0, 0], [1, -1, 0], [0, 1, 0], [0, 0, 0]])
    z1 = [_unit(0), _unit(40), _unit(130), _unit(250)]
    z2 = [_unit(20), _unit(70), _unit(170), _unit(300)]
    b = 4
    positives = {0: [4, 1, 5], 1: [5, 0, 4], 2: [6], 3: [7]}
    positives.update({i + b: sorted({p % b for p in positives[i]} | {p % b + b for p in positives[i]} - {i + b})
                      for i in range(b)})
    assert positives[4] == [0, 1, 5] and positives[7] == [3]
    expected = _hand_loss(z1 + z2, positives, 0.3)
    got = nt_xent_loss(torch.tensor(z1), torch.tensor(z2), 0.3, targets=targets)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_supervised_with_distinct_classes_equals_unsupervised():
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(nt_xent_loss(z1, z2, 0.07, targets=targets), nt_xent_loss(z1, z2, 0.07))


def test_nt_xent_errors():
    z = torch.randn(2, 4)
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(z, torch.randn(3, 4))
    with pytest.raises(ValueError, match="2-D"):
        nt_xent_loss(z[0], z[0])
    with pytest.raises(TypeError, match="torch.Tensor"):
        nt_xent_loss(z.tolist(), z)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="shape"):
        nt_xent_loss(z, z, targets=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="-1, 0, 1"):
        nt_xent_loss(z, z, targets=torch.tensor([[2.0, 0.0], [1.0, 0.0]]))


def _tiny_model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=3)


def test_gradient_reaches_projection_head_and_backbone():
    model = _tiny_model()
    aux = ContrastiveAuxiliary.from_model(model)
    assert aux.num_features == model.num_features
    gen = torch.Generator().manual_seed(2)
    view1, view2 = torch.randn(4, 3, 32, 32, generator=gen), torch.randn(4, 3, 32, 32, generator=gen)
    loss = aux(pooled_features(model, view1), pooled_features(model, view2))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for param in (aux.projection.fc1.weight, aux.projection.fc2.weight, model.conv1[0].weight):
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0
    assert model.fc.weight.grad is None  # the classifier is not part of the contrastive path


def test_projection_head_shape_and_float32_under_autocast():
    aux = ContrastiveAuxiliary(16)
    assert [aux.projection.fc1.in_features, aux.projection.fc1.out_features, aux.projection.fc2.out_features] == [16, 16, 128]
    assert isinstance(aux.projection.act, torch.nn.ReLU)
    features = torch.randn(3, 16, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = aux.embed(features)
        loss = aux(features, features)
    assert emb.dtype == torch.float32 and loss.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))


def test_combine_weights_the_contrastive_term():
    aux = ContrastiveAuxiliary(8, cl_coef=0.25, supervised=True)
    gen = torch.Generator().manual_seed(4)
    f1, f2 = torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen)
    targets = torch.tensor([[1, 0], [1, 0], [0, 1]])
    main = torch.tensor(2.0)
    contrastive = aux(f1, f2, targets)
    torch.testing.assert_close(aux.combine(main, f1, f2, targets), main + 0.25 * contrastive)
    with pytest.raises(ValueError, match="targets"):
        aux(f1, f2)


def test_contrastive_auxiliary_errors():
    with pytest.raises(ValueError, match="num_features"):
        ContrastiveAuxiliary(0)
    with pytest.raises(ValueError, match="cl_coef"):
        ContrastiveAuxiliary(8, cl_coef=-1)
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveAuxiliary(8, temperature=-0.1)
    with pytest.raises(ValueError, match=r"\(batch, 8\)"):
        ContrastiveAuxiliary(8)(torch.randn(2, 9), torch.randn(2, 9))
    with pytest.raises(TypeError, match="num_features"):
        ContrastiveAuxiliary.from_model(torch.nn.Linear(2, 2))


def test_pooled_features_of_boostlu_wrapper():
    model = _tiny_model().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(pooled_features(BoostLU(model), x), model.forward_features(x).mean(dim=(2, 3)))


# ---------------------------------------------------------------------------- two-view transform
def _image(size=40):
    pixels = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _seed(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def test_two_views_differ_and_have_the_right_shape():
    two_views = create_two_view_transform(input_size=24)
    _seed(0)
    view1, view2 = two_views(_image())
    assert view1.shape == view2.shape == (3, 24, 24)
    assert view1.dtype == torch.float32
    assert not torch.equal(view1, view2)


def test_two_views_are_deterministic_under_a_seed():
    two_views = create_two_view_transform(input_size=(20, 28))
    image = _image()
    _seed(7)
    first = two_views(image)
    _seed(7)
    second = two_views(image)
    for a, b in zip(first, second):
        assert a.shape == (3, 20, 28)
        torch.testing.assert_close(a, b)


def test_plain_view_is_returned_first():
    plain = T.Compose([T.Resize((24, 24)), T.ToTensor()])
    _seed(0)
    out = create_two_view_transform(input_size=24, plain_transform=plain)(_image())
    assert len(out) == 3
    torch.testing.assert_close(out[0], plain(_image()))


def test_view_transform_has_the_spec_augmentations():
    steps = contrastive_view_transform(32).transforms
    crop = steps[0]
    assert tuple(crop.scale) == (0.2, 1.0) and tuple(crop.size) == (32, 32)
    flips = [t for t in steps if isinstance(t, T.RandomHorizontalFlip)]
    assert len(flips) == 1 and flips[0].p == 0.5
    applied = {type(t.transforms[0]): t.p for t in steps if isinstance(t, T.RandomApply)}
    assert applied == {T.ColorJitter: 0.8, T.GaussianBlur: 0.5}
    jitter = next(t.transforms[0] for t in steps if isinstance(t, T.RandomApply) and isinstance(t.transforms[0], T.ColorJitter))
    assert jitter.brightness == (0.6, 1.4) and jitter.saturation == (0.6, 1.4) and jitter.hue == (-0.1, 0.1)
    grays = [t for t in steps if isinstance(t, T.RandomGrayscale)]
    assert len(grays) == 1 and grays[0].p == 0.2


def test_mean_and_std_come_from_the_model_data_config():
    model = _tiny_model()
    config = timm.data.resolve_data_config(model=model)
    assert tuple(config["mean"]) == (0.5, 0.5, 0.5)
    two_views = create_two_view_transform(config, input_size=16)
    normalize = next(t for t in two_views.view_transform.transforms if isinstance(t, T.Normalize))
    assert normalize.mean.tolist() == [0.5, 0.5, 0.5] and normalize.std.tolist() == [0.5, 0.5, 0.5]
    assert isinstance(two_views, TwoViewTransform)


def test_transform_errors():
    with pytest.raises(ValueError, match="input_size"):
        contrastive_view_transform(0)
    with pytest.raises(ValueError, match="mean and std"):
        contrastive_view_transform(16, mean=(0.5, 0.5))
    with pytest.raises(TypeError, match="callable"):
        TwoViewTransform("flip")


def test_train_step_runs_both_views_through_the_backbone_as_one_batch():
    """The seed fork's forward: the two views go through the backbone as ONE concatenated batch of 2B, so a
    train-mode BatchNorm normalises them together; expected value by an explicit port (SimCLR NT-Xent on
    the projection of the concatenated features), which two separate forwards do not give."""
    import timm

    import spl_losses
    from spl_losses.losses import ContrastiveAuxiliary
    from spl_losses.training.parallel import TrainStep

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3, pretrained=False).train()
    aux = ContrastiveAuxiliary.from_model(model, cl_coef=1.0)
    step = TrainStep(model, spl_losses.create_loss("an"), aux).train()
    images, view1, view2 = (torch.randn(4, 3, 16, 16) for _ in range(3))
    targets = torch.zeros(4, 3)
    targets[torch.arange(4), torch.tensor([0, 1, 2, 0])] = 1
    state = {k: v.clone() for k, v in model.state_dict().items()}
    total = step(images, targets, torch.arange(4), view1, view2)

    model.load_state_dict(state)  # BatchNorm running statistics as before the step
    with torch.no_grad():
        main = spl_losses.create_loss("an")(model(images), targets)
        feats = model.forward_head(model.forward_features(torch.cat([view1, view2])), pre_logits=True)
        z = torch.nn.functional.normalize(aux.projection(feats).double(), dim=1)
        sim = z @ z.t() / 0.07
        n = sim.shape[0]
        expected_cl = 0.0
        for a in range(n):
            positive = (a + n // 2) % n
            others = [j for j in range(n) if j != a]
            expected_cl += -(sim[a, positive] - torch.logsumexp(sim[a, others], dim=0))
        expected_cl /= n
        separate = torch.cat([model.forward_head(model.forward_features(v), pre_logits=True) for v in (view1, view2)])
        z_sep = torch.nn.functional.normalize(aux.projection(separate).double(), dim=1)
    assert total.item() == pytest.approx((main + expected_cl).item(), rel=1e-5)
    assert not torch.allclose(z, z_sep, atol=1e-3)  # one batch of 2B differs from two batches of B
