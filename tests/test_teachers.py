"""Teachers: a tiny random CLIP (no download), the score cache, view fusion, the kNN and model teachers."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, Features, Image, List, Value
from PIL import Image as PILImage

from spl_losses import LinearProbe
from spl_losses.teachers import (CLIPTeacher, KNNTeacher, ModelTeacher, ThresholdRule, create_teacher,
                                 export_teacher_scores, fuse_views, grid_boxes, observed_label_matrix, propagate_labels,
                                 teacher_scores)

NAMES = ["cat", "dog", "tree"]
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPL_LOSSES_CACHE", str(tmp_path / "cache"))


def tiny_clip_dir(path, seed=0):
    """A random CLIP in the ``local-dir:`` layout of open_clip (config + safetensors weights)."""
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3,
                                                              "interpolation": "bicubic"}}, f)
    save_file(model.state_dict(), os.path.join(path, "open_clip_model.safetensors"))
    return f"local-dir:{path}"


def image_split(n=4, size=32, observed=None, seed=0):
    rng = np.random.RandomState(seed)
    images = [PILImage.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    observed = observed or [[i % 3] for i in range(n)]
    features = Features({"image": Image(), "labels": List(ClassLabel(names=NAMES)),
                         "observed_labels": List(ClassLabel(names=NAMES)), "index": Value("int64")})
    return Dataset.from_dict({"image": images, "labels": observed, "observed_labels": observed,
                              "index": list(range(n))}, features=features)


def feature_split(features, observed):
    feats = Features({"features": List(Value("float32")), "labels": List(ClassLabel(names=NAMES)),
                      "observed_labels": List(ClassLabel(names=NAMES)), "index": Value("int64")})
    return Dataset.from_dict({"features": [list(map(float, row)) for row in features], "labels": observed,
                              "observed_labels": observed, "index": list(range(len(observed)))}, features=feats)


class Counting:
    """Wraps a teacher's compute_raw to count the expensive passes."""

    def __init__(self, teacher):
        self.calls = 0
        original = teacher.compute_raw

        def counted(split):
            self.calls += 1
            return original(split)

        teacher.compute_raw = counted


# ------------------------------------------------------------------------------------------------ CLIP
def test_clip_raw_output_is_the_cosine_of_image_and_mean_prompt_embeddings(tmp_path):
    import open_clip

    name = tiny_clip_dir(str(tmp_path / "clip"))
    split = image_split(3)
    templates = ["a photo of a {}.", "a {}"]
    teacher = CLIPTeacher(name, templates=templates, device="cpu")
    raw = teacher.compute_raw(split)
    assert raw.shape == (3, 1, 3)
    model, _, preprocess = open_clip.create_model_and_transforms(name, image_resize_mode="squash")
    tokenizer = open_clip.get_tokenizer(name)
    with torch.no_grad():
        text = []
        for cls in NAMES:
            emb = F.normalize(model.encode_text(tokenizer([t.format(cls) for t in templates])), dim=-1).mean(0)
            text.append(F.normalize(emb, dim=0))
        text = torch.stack(text)
        images = torch.stack([preprocess(img.convert("RGB")) for img in split["image"]])
        expected = F.normalize(model.encode_image(images), dim=-1) @ text.T
    torch.testing.assert_close(raw[:, 0], expected, rtol=1e-4, atol=1e-5)


def test_vlpl_rule_on_a_hand_made_similarity_matrix():
    teacher = CLIPTeacher.__new__(CLIPTeacher)  # scores_from_raw needs only the options
    teacher.temperature, teacher.fusion, teacher.gate = 0.01, "weighted", 0.0
    cos = torch.tensor([[[0.30, 0.29, 0.20]], [[0.25, 0.25, 0.25]]])
    scores = teacher.scores_from_raw(cos)
    e = [math.exp(30.0), math.exp(29.0), math.exp(20.0)]
    first = [v / sum(e) for v in e]  # softmax(cos / 0.01): 0.731, 0.269, 3e-5
    assert scores[0].tolist() == pytest.approx(first, rel=1e-5)
    assert scores[1].tolist() == pytest.approx([1 / 3] * 3, rel=1e-5)
    pseudo = ThresholdRule(0.3)(scores, torch.tensor([[0, 0, 1], [1, 0, 0]]))
    # row 0: 0.731 > 0.3 -> positive, 0.269 no; row 1: 1/3 > 0.3 everywhere but the observed entry
    assert pseudo.tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]
    vlpl_negatives = ThresholdRule(0.3, negative_fraction=0.34)(scores)  # floor(0.34 * 3) = 1 lowest per row
    assert vlpl_negatives[0].tolist() == [1.0, 0.0, -1.0]


def test_multi_crop_views_are_the_grid_crops(tmp_path):
    import open_clip

    name = tiny_clip_dir(str(tmp_path / "clip"))
    split = image_split(2, size=32)
    raw = CLIPTeacher(name, grid=2, device="cpu").compute_raw(split)
    assert raw.shape == (2, 5, 3)
    assert grid_boxes(32, 32, 2) == [(0, 0, 16, 16), (16, 0, 32, 16), (0, 16, 16, 32), (16, 16, 32, 32)]
    assert grid_boxes(10, 10, 3) == [(0, 0, 3, 3), (3, 0, 7, 3), (7, 0, 10, 3), (0, 3, 3, 7), (3, 3, 7, 7),
                                     (7, 3, 10, 7), (0, 7, 3, 10), (3, 7, 7, 10), (7, 7, 10, 10)]
    model, _, preprocess = open_clip.create_model_and_transforms(name, image_resize_mode="squash")
    with torch.no_grad():
        text = F.normalize(model.encode_text(open_clip.get_tokenizer(name)([f"a photo of a {c}." for c in NAMES])), dim=-1)
        image = split[1]["image"]
        crop = preprocess(image.crop((16, 0, 32, 16)).convert("RGB")).unsqueeze(0)  # top-right: view 2
        expected = F.normalize(model.encode_image(crop), dim=-1) @ text.T
    torch.testing.assert_close(raw[1, 2], expected[0], rtol=1e-4, atol=1e-5)


def test_multi_crop_fusion_by_hand():
    probs = torch.tensor([[[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # global, crop 1, crop 2
    # local = max over crops = [0.2, 0.8, 0.6]
    weighted = fuse_views(probs, "weighted", gate=0.3)
    assert weighted[0].tolist() == pytest.approx([0.7 * 0.6 + 0.3 * 0.2, 0.7 * 0.3 + 0.3 * 0.8, 0.7 * 0.1 + 0.3 * 0.6])
    assert fuse_views(probs, "weighted", gate=0.0)[0].tolist() == pytest.approx([0.6, 0.3, 0.1])
    # max: crop scores below the gate 0.7 count as 0 -> local = [0, 0.8, 0]
    assert fuse_views(probs, "max", gate=0.7)[0].tolist() == pytest.approx([0.6, 0.8, 0.1])
    assert fuse_views(probs, "max", gate=0.0)[0].tolist() == pytest.approx([0.6, 0.8, 0.6])
    with pytest.raises(ValueError, match="fusion"):
        fuse_views(probs, "mean")
    with pytest.raises(ValueError, match="gate"):
        fuse_views(probs, "max", gate=1.5)


def test_cache_hit_and_misses(tmp_path):
    name = tiny_clip_dir(str(tmp_path / "clip"))
    other = tiny_clip_dir(str(tmp_path / "clip_other"), seed=1)
    cache_dir = str(tmp_path / "scores")
    split = image_split(4)
    teacher = create_teacher(f"clip:{name}", device="cpu")
    counter = Counting(teacher)
    first = teacher_scores(teacher, split, cache_dir=cache_dir)
    second = teacher_scores(teacher, split, cache_dir=cache_dir)
    assert counter.calls == 1 and torch.equal(first, second)
    assert first.shape == (4, 3) and torch.allclose(first.sum(dim=1), torch.ones(4))
    # options applied after the cache (temperature) do not recompute
    hot = create_teacher(f"clip:{name}", device="cpu", temperature=1.0)
    hot_counter = Counting(hot)
    assert not torch.allclose(teacher_scores(hot, split, cache_dir=cache_dir), first)
    assert hot_counter.calls == 0
    # another dataset (one observed label differs) and another model miss
    changed = image_split(4, observed=[[1], [1], [2], [0]])
    teacher_scores(teacher, changed, cache_dir=cache_dir)
    assert counter.calls == 2
    other_teacher = create_teacher(f"clip:{other}", device="cpu")
    other_counter = Counting(other_teacher)
    teacher_scores(other_teacher, split, cache_dir=cache_dir)
    assert other_counter.calls == 1
    # grid crops are part of the key
    grid_teacher = create_teacher(f"clip:{name}", device="cpu", grid=2)
    grid_counter = Counting(grid_teacher)
    teacher_scores(grid_teacher, split, cache_dir=cache_dir)
    assert grid_counter.calls == 1
    assert len(os.listdir(cache_dir)) == 4


def test_scores_travel_with_a_saved_dataset(tmp_path):
    from datasets import DatasetDict, load_from_disk

    name = tiny_clip_dir(str(tmp_path / "clip"))
    folder = str(tmp_path / "dataset")
    DatasetDict(train=image_split(4)).save_to_disk(folder)
    train = load_from_disk(folder)["train"]
    teacher = create_teacher(f"clip:{name}", device="cpu")
    exported = export_teacher_scores(teacher, train, folder, cache_dir=str(tmp_path / "machine_a"))
    assert os.path.dirname(exported) == os.path.join(folder, "teacher_scores")
    assert os.listdir(str(tmp_path / "machine_a")) == [os.path.basename(exported)]
    assert set(load_from_disk(folder)) == {"train"}  # the extra folder does not disturb datasets
    fresh = create_teacher(f"clip:{name}", device="cpu")
    counter = Counting(fresh)
    scores = teacher_scores(fresh, train, cache_dir=str(tmp_path / "machine_b"), dataset_source=folder)
    assert counter.calls == 0
    torch.testing.assert_close(scores, teacher_scores(teacher, train, cache_dir=str(tmp_path / "machine_a")))


def test_scores_travel_with_a_hub_dataset(hub, tmp_path):
    """Scores computed on the local dataset, uploaded beside it, are found from the Hub copy elsewhere."""
    import datasets

    from spl_losses.data import load_spml_dataset

    name = tiny_clip_dir(str(tmp_path / "clip"))
    repo = "tester/teacher-scores-demo"
    local = datasets.DatasetDict(train=image_split(3), validation=image_split(2), test=image_split(2))
    local.push_to_hub(repo)
    teacher = create_teacher(f"clip:{name}", device="cpu")
    exported = export_teacher_scores(teacher, local["train"], f"hf-hub:{repo}", cache_dir=str(tmp_path / "machine_a"))
    assert exported.startswith(f"hf-hub:{repo}/teacher_scores/clip-")
    train = load_spml_dataset(repo)["train"]  # the same rows, so the same fingerprint and file name
    fresh = create_teacher(f"clip:{name}", device="cpu")
    counter = Counting(fresh)
    scores = teacher_scores(fresh, train, cache_dir=str(tmp_path / "machine_b"), dataset_source=f"hf-hub:{repo}")
    assert counter.calls == 0
    torch.testing.assert_close(scores, teacher_scores(teacher, local["train"], cache_dir=str(tmp_path / "machine_a")))
    # a repo without the file: computed locally
    teacher_scores(fresh, train, cache_dir=str(tmp_path / "machine_c"), dataset_source="tester/no-such-dataset")
    assert counter.calls == 1


def test_teacher_strings_and_checks(tmp_path):
    with pytest.raises(ValueError, match="unknown teacher"):
        create_teacher("vlm:foo")
    with pytest.raises(ValueError, match="templates"):
        CLIPTeacher("ViT-B-32", templates=["no placeholder"])
    with pytest.raises(ValueError, match="grid"):
        CLIPTeacher("ViT-B-32", grid=-1)
    teacher = create_teacher("clip:ViT-B-16@openai", temperature=0.1)
    assert (teacher.model_name, teacher.pretrained, teacher.temperature) == ("ViT-B-16", "openai", 0.1)
    assert create_teacher("clip:hf-hub:timm/ViT-B-16-SigLIP").model_name == "hf-hub:timm/ViT-B-16-SigLIP"


# ------------------------------------------------------------------------------------------------ kNN
def test_knn_label_propagation_by_hand():
    # 4 points on the unit circle; with k = 1 each links to its nearest neighbour
    angles = [0.0, 0.3, 1.5, 1.9]
    x = torch.tensor([[math.cos(a), math.sin(a)] for a in angles])
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    # neighbours: 0->1, 1->0, 2->3, 3->2 with weights cos(0.3)^2 and cos(0.4)^2 (gamma 2); W = A + A^T doubles them
    a, b = 2 * math.cos(0.3) ** 2, 2 * math.cos(0.4) ** 2
    # each node has one neighbour, so S = D^-1/2 W D^-1/2 has entries a / a = 1 and b / b = 1
    s = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=float)
    assert a > 0 and b > 0
    alpha = 0.5
    f = y.numpy().astype(float)
    for _ in range(3):
        f = alpha * s @ f + y.numpy()
    out = propagate_labels(x, y, num_neighbors=1, alpha=alpha, gamma=2.0, iterations=3)
    np.testing.assert_allclose(out.numpy(), f, rtol=1e-6)
    # by hand: node 0 gets 1 + 0.5*(0.5*(1 + 0.5*1)) ... ; node 1 = 0.5 + 0.125 after 3 steps
    assert out[1, 0].item() == pytest.approx(0.5 + 0.5 ** 3)
    assert out[0, 0].item() == pytest.approx(1 + 0.5 ** 2)
    # the teacher on a split of these points (3 classes, the third never observed), then a rule:
    # rows are divided by their maximum -> node 1 scores (1, 0, 0), node 3 (0, 1, 0)
    split = feature_split(x.numpy(), [[0], [], [1], []])
    teacher = KNNTeacher(num_neighbors=1, alpha=alpha, gamma=2.0, iterations=3)
    scores = teacher_scores(teacher, split)
    assert scores.tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]]
    pseudo = ThresholdRule(0.5)(scores, observed_label_matrix(split))
    assert pseudo.tolist() == [[0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]]


def test_knn_teacher_scores_and_limit():
    torch.manual_seed(0)
    x = torch.randn(12, 5)
    observed = [[i % 3] for i in range(12)]
    split = feature_split(x.numpy(), observed)
    y = observed_label_matrix(split)
    teacher = KNNTeacher(num_neighbors=3, alpha=0.5, gamma=1.0, iterations=200)
    raw = teacher.compute_raw(split)
    # limit of the iteration: (I - alpha S)^-1 Y, with S built here from the definition
    xn = F.normalize(x, dim=1)
    sims = xn @ xn.T
    sims.fill_diagonal_(-float("inf"))
    top, idx = sims.topk(3, dim=1)
    w = torch.zeros(12, 12).scatter_(1, idx, top.clamp_min(0))
    w = w + w.T
    d = w.sum(1).rsqrt()
    s = d[:, None] * w * d[None, :]
    torch.testing.assert_close(raw, torch.linalg.solve(torch.eye(12) - 0.5 * s, y), rtol=1e-4, atol=1e-5)
    scores = teacher.scores_from_raw(raw)
    assert torch.allclose(scores.amax(dim=1), torch.ones(12))
    assert teacher.describe()["features"] == "column:features"


# ------------------------------------------------------------------------------------------------ model
def test_model_teacher_on_features_and_its_cache(tmp_path):
    torch.manual_seed(0)
    probe = LinearProbe(4, 3, label_names=NAMES)
    x = torch.randn(5, 4)
    split = feature_split(x.numpy(), [[0], [1], [2], [0], [1]])
    probe.save_pretrained(str(tmp_path / "run1" / "model"))
    teacher = create_teacher(f"model:{tmp_path / 'run1'}", device="cpu")
    scores = teacher_scores(teacher, split, cache_dir=str(tmp_path / "scores"))
    expected = torch.sigmoid(x @ probe.fc.weight.T + probe.fc.bias).detach()
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    # another round's weights miss the cache
    with torch.no_grad():
        probe.fc.bias.add_(1.0)
    second = ModelTeacher(probe, device="cpu")
    counter = Counting(second)
    teacher_scores(second, split, cache_dir=str(tmp_path / "scores"))
    assert counter.calls == 1
    softmax = ModelTeacher(probe, activation="softmax", temperature=0.5, device="cpu")
    torch.testing.assert_close(softmax.scores_from_raw(softmax.compute_raw(split)),
                               torch.softmax((x @ probe.fc.weight.T + probe.fc.bias).detach() / 0.5, dim=1))


def test_model_teacher_on_images_with_crops():
    class MeanColour(torch.nn.Module):  # logits = mean of each channel: easy to recompute per crop
        def forward(self, x):
            return x.mean(dim=(2, 3))

    def to_8px(img):  # crops are 4 px: nearest upscaling keeps every channel mean
        img = img.resize((8, 8), PILImage.NEAREST)
        return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)

    split = image_split(2, size=8)
    teacher = ModelTeacher(MeanColour(), transform=to_8px, grid=2, device="cpu")
    raw = teacher.compute_raw(split)
    pixels = np.asarray(split[0]["image"], dtype=np.float32)
    assert raw[0, 0].tolist() == pytest.approx(pixels.mean(axis=(0, 1)).tolist(), rel=1e-5)
    assert raw[0, 4].tolist() == pytest.approx(pixels[4:, 4:].mean(axis=(0, 1)).tolist(), rel=1e-5)  # bottom-right
