"""The image input pipeline: uint8 batches normalised on the device, the image cache, the worker rule,
decoding errors through workers, channels-last and compile (tiny generated images, CPU; CUDA checks
are marked ``cuda`` and skipped without a GPU)."""
import json
import os

import datasets
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from spl_losses.training import images
from spl_losses.training.flags import parse_args
from spl_losses.training.images import apply_device_options, contiguous_parameters
from spl_losses.training.images import CachedImages, image_cache_path
from spl_losses.training.images import (DeviceNormalize, collate_image_rows, decode_image, flip_images,
                                            protocol_transform, protocol_uint8_transform)
from spl_losses.training.images import ImagePipeline, default_workers, local_process_count, resolve_workers
from spl_losses.training.parallel import EpochPermutationSampler, epoch_flip_mask

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model(name="resnet10t"):
    import timm

    return timm.create_model(name, pretrained=False, num_classes=3)  # resnet10t: ImageNet mean/std, bicubic


def _image_split(folder, sizes, corrupt_row=None, fmt="JPEG"):
    """Images of the given (width, height) saved as files; row ``corrupt_row`` is not an image."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = os.path.join(folder, f"img{i}.{fmt.lower()}")
        if i == corrupt_row:
            with open(path, "wb") as f:
                f.write(b"\xff\xd8 truncated")
        else:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, format=fmt)
        paths.append(path)
    return datasets.Dataset.from_dict({"image": paths, "index": list(range(len(paths)))},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "index": datasets.Value("int64")}))


SIZES = [(40, 30), (25, 37), (64, 48), (33, 33), (50, 20), (31, 45), (48, 64)]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return _image_split(str(tmp_path_factory.mktemp("images")), SIZES)


# ------------------------------------------------------------------------------ normalisation on the device
def test_device_normalisation_equals_the_cpu_transform_bit_for_bit(split):
    model = _model()
    images = [decode_image(entry, i) for i, entry in enumerate(split.cast_column("image", datasets.Image(
        decode=False))["image"])]
    cpu = torch.stack([protocol_transform(model, 24)(img) for img in images])  # timm/torchvision: float on the CPU
    uint8 = torch.stack([protocol_uint8_transform(model, 24)(img) for img in images])
    assert uint8.dtype == torch.uint8 and uint8.shape == (len(SIZES), 3, 24, 24)
    normalize = DeviceNormalize.from_data_config(model.pretrained_cfg)
    assert torch.equal(normalize(uint8), cpu)
    # the same arithmetic written out in numpy float32: ((x / 255) - mean) / std, in this order
    mean = np.asarray(model.pretrained_cfg["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(model.pretrained_cfg["std"], dtype=np.float32).reshape(1, 3, 1, 1)
    expected = (uint8.numpy().astype(np.float32) / np.float32(255) - mean) / std
    assert np.array_equal(normalize(uint8).numpy(), expected)
    # timm's PrefetchLoader order, (x - 255 mean) / (255 std), rounds differently: why it is not reused
    prefetcher = (uint8.float() - torch.tensor(mean) * 255) / (torch.tensor(std) * 255)
    assert not torch.equal(prefetcher, cpu)
    torch.testing.assert_close(prefetcher, cpu, rtol=0, atol=1e-6)


def test_flipping_uint8_then_normalising_equals_normalising_then_flipping(split):
    uint8 = torch.randint(0, 256, (6, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([True, False, True, True, False, False])
    normalize = DeviceNormalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert torch.equal(normalize(flip_images(uint8, mask)), flip_images(normalize(uint8), mask))
    flipped = flip_images(uint8, mask)
    assert torch.equal(flipped[0], uint8[0].flip(-1)) and torch.equal(flipped[1], uint8[1])


def test_channels_last_batches_hold_the_same_values():
    uint8 = torch.randint(0, 256, (2, 3, 6, 5), dtype=torch.uint8)
    plain = DeviceNormalize((0.5,) * 3, (0.25,) * 3)(uint8)
    last = DeviceNormalize((0.5,) * 3, (0.25,) * 3, channels_last=True)(uint8)
    assert last.is_contiguous(memory_format=torch.channels_last) and not plain.is_contiguous(
        memory_format=torch.channels_last)
    assert torch.equal(plain, last)
    assert torch.equal(plain[0, 0, 0], (uint8[0, 0, 0].float() / 255 - 0.5) / 0.25)  # hand-checked formula


def test_decoded_images_are_stacked_without_reordering_and_normalise_to_the_same_batch(split):
    model = _model()
    transform = protocol_uint8_transform(model, 24)
    entries = split.cast_column("image", datasets.Image(decode=False))["image"]
    images = [transform(decode_image(entry, i)) for i, entry in enumerate(entries)]
    assert images[0].stride(0) == 1  # PIL's (H, W, 3) memory seen as (3, H, W): why the collation keeps it
    rows = [{"pixel_values": img, "index": i} for i, img in enumerate(images)]
    batch = collate_image_rows(rows)
    stacked = torch.stack([img.contiguous() for img in images])
    assert batch["pixel_values"].shape == stacked.shape == (len(SIZES), 3, 24, 24)
    assert batch["pixel_values"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch["pixel_values"], stacked) and batch["index"].tolist() == list(range(len(SIZES)))
    normalize = DeviceNormalize.from_data_config(model.pretrained_cfg)
    out = normalize(batch["pixel_values"])
    assert out.is_contiguous() and torch.equal(out, normalize(stacked))
    assert torch.equal(out, torch.stack([protocol_transform(model, 24)(decode_image(e, i))
                                         for i, e in enumerate(entries)]))
    # images held (3, H, W) (the image cache's rows) and mixed layouts: the default stacking, same values
    plain = collate_image_rows([{"pixel_values": img.contiguous(), "index": i} for i, img in enumerate(images)])
    assert plain["pixel_values"].is_contiguous() and torch.equal(plain["pixel_values"], stacked)
    mixed = collate_image_rows([{"pixel_values": images[0], "index": 0},
                                {"pixel_values": images[1].contiguous(), "index": 1}])
    assert torch.equal(mixed["pixel_values"], stacked[:2])
    # contrastive views travel alongside, stacked as they are
    views = collate_image_rows([dict(row, view1=torch.full((3, 2, 2), float(i))) for i, row in enumerate(rows[:3])])
    assert views["view1"].shape == (3, 3, 2, 2) and views["view1"][2].eq(2).all()
    assert torch.equal(views["pixel_values"], stacked[:3])


@pytest.mark.parametrize("bad", [torch.zeros(2, 3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.uint8),
                                 torch.zeros(2, 1, 4, 4, dtype=torch.uint8)])
def test_device_normalisation_refuses_what_is_not_a_uint8_rgb_batch(bad):
    with pytest.raises(TypeError, match=r"expected a \(B, 3, H, W\) uint8 batch"):
        DeviceNormalize((0.5,) * 3, (0.5,) * 3)(bad)
    with pytest.raises(ValueError, match="std must be non-zero"):
        DeviceNormalize((0.5,) * 3, (0.5, 0.0, 0.5))


# ------------------------------------------------------------------------------ the loaders and the image cache
def _batches(loader, normalize=None):
    out = []
    for batch in loader:
        images = batch["pixel_values"]
        out.append((batch["index"].clone(), normalize(images) if normalize else images.clone()))
    return out


def test_cached_images_give_the_decoded_batches(split, tmp_path):
    model = _model()
    decoding = ImagePipeline.for_model(model, 24, workers=0)
    caching = ImagePipeline.for_model(model, 24, workers=2, image_cache_dir=str(tmp_path / "cache"))
    sampler = EpochPermutationSampler(len(split), seed=3)
    sampler.set_epoch(1)
    want = _batches(decoding.loader(split, 3, sampler=sampler), decoding.normalize)
    got = _batches(caching.loader(split, 3, fingerprint="fp-1", sampler=sampler), caching.normalize)
    assert [i.tolist() for i, _ in got] == [i.tolist() for i, _ in want] != [[0, 1, 2], [3, 4, 5], [6]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, want))
    # and both equal timm's CPU transform of the decoded images, flipped per the epoch's mask
    reference = protocol_transform(model, 24)
    flips = epoch_flip_mask(len(split), 3, 1)
    for index, images in got:
        expected = torch.stack([reference(Image.open(split[int(i)]["image"].filename).convert("RGB")) for i in index])
        assert torch.equal(flip_images(images, flips[index]), flip_images(expected, flips[index]))
    # one file per (fingerprint, size, resize), named for them; read back, not rebuilt
    path = image_cache_path(str(tmp_path / "cache"), "fp-1", 24, "bicubic")
    assert sorted(os.listdir(tmp_path / "cache")) == [os.path.basename(path), f"{os.path.basename(path)}.json"] \
        and "24px-bicubic" in path  # the file and its manifest
    stamp = os.stat(path).st_mtime_ns
    again = _batches(caching.loader(split, 4, fingerprint="fp-1"))
    assert os.stat(path).st_mtime_ns == stamp and torch.cat([b for _, b in again]).shape == (7, 3, 24, 24)
    assert image_cache_path(str(tmp_path / "cache"), "fp-2", 24, "bicubic") != path
    assert image_cache_path(str(tmp_path / "cache"), "fp-1", 32, "bicubic") != path
    assert image_cache_path(str(tmp_path / "cache"), "fp-1", 24, "bilinear") != path


def test_a_cache_file_of_another_shape_is_rebuilt(split, tmp_path):
    model = _model()
    pipeline = ImagePipeline.for_model(model, 16, workers=0, image_cache_dir=str(tmp_path))
    path = image_cache_path(str(tmp_path), "fp", 16, "bicubic")
    np.save(path, np.zeros((3, 3, 16, 16), dtype=np.uint8))  # a stale file: 3 rows, not 7
    batch = next(iter(pipeline.loader(split, 7, fingerprint="fp")))
    assert CachedImages(path).shape == (7, 3, 16, 16)
    assert batch["pixel_values"].float().mean() > 0


def test_loaders_keep_workers_and_pin_memory_only_on_cuda(split):
    model = _model()
    cpu = ImagePipeline.for_model(model, 16, device="cpu", workers=2)
    loader = cpu.loader(split, 4)
    assert loader.num_workers == 2 and loader.persistent_workers and not loader.pin_memory
    assert ImagePipeline.for_model(model, 16, device="cpu", workers="auto").workers == 0  # the model uses the cores
    assert ImagePipeline.for_model(model, 16, device="cuda", workers=1).pin_memory  # (nothing runs on CUDA here)
    assert not ImagePipeline.for_model(model, 16, workers=0).loader(split, 4).persistent_workers


# ------------------------------------------------------------------------------ --workers auto
@pytest.mark.parametrize("cpus,procs,accelerator,expected", [
    (16, 1, True, 16), (16, 8, True, 2), (12, 8, True, 1), (2, 4, True, 1), (2, 1, True, 2),
    (64, 1, True, 16),  # at most 16
    (128, 8, True, 16), (96, 8, True, 12), (16, 1, False, 0), (2, 1, False, 0),
])
def test_default_worker_count(cpus, procs, accelerator, expected):
    assert default_workers(cpus, procs, accelerator) == expected


def test_processes_per_machine_and_auto_from_the_environment(monkeypatch):
    for name in images.LOCAL_PROCESS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert local_process_count() == 1
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    assert local_process_count() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun / accelerate launch win
    assert local_process_count() == 4
    monkeypatch.setattr(images, "available_cpus", lambda: 32)
    assert resolve_workers("auto", "cuda") == 8 and resolve_workers("auto", torch.device("cuda", 1)) == 8
    assert resolve_workers("auto", "cpu") == 0 and resolve_workers(3, "cpu") == 3
    with pytest.raises(ValueError, match="'auto' or an integer >= 0, got -1"):
        resolve_workers(-1, "cuda")


def test_workers_flag_reads_auto_or_a_count(tmp_path):
    assert parse_args([])[0].workers == "auto"
    assert parse_args(["--workers", "3"])[0].workers == 3
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"workers": 2, "image_cache": True, "channels_last": True, "compile": True,
                                      "compile_mode": "max-autotune"}))
    args = parse_args(["-c", str(config)])[0]
    assert (args.workers, args.image_cache, args.channels_last, args.compile, args.compile_mode) == \
        (2, True, True, True, "max-autotune")
    for bad in ("some", "-2", "1.5"):
        config.write_text(yaml.safe_dump({"workers": bad}))
        with pytest.raises(ValueError, match="workers: expected 'auto' or an integer >= 0"):
            parse_args(["-c", str(config)])
    config.write_text(yaml.safe_dump({"compile_mode": "fastest"}))
    with pytest.raises(ValueError, match="compile_mode: expected one of"):
        parse_args(["-c", str(config)])


# ------------------------------------------------------------------------------ decoding errors name row and file
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("cache", [False, True])
def test_a_corrupt_image_names_its_row_and_file(tmp_path, workers, cache):
    bad = _image_split(str(tmp_path / "images"), SIZES[:5], corrupt_row=3)
    pipeline = ImagePipeline.for_model(_model(), 16, workers=workers,
                                       image_cache_dir=str(tmp_path / "cache") if cache else None)
    bad_file = os.path.join(str(tmp_path / "images"), "img3.jpeg")
    with pytest.raises(ValueError, match=f"validation row 3: the image \\(file '{bad_file}'\\) cannot be decoded"):
        for _ in pipeline.loader(bad, 2, fingerprint="fp", split_name="validation"):
            pass
    if cache:  # nothing half-written is left behind
        assert not os.path.exists(tmp_path / "cache") or os.listdir(tmp_path / "cache") == []


# ------------------------------------------------------------------------------ the recipe with the new flags
def _recipe_run(tmp_path, data_cache, name, *extra):
    from accelerate.state import AcceleratorState
    from test_recipe import recipe, tiny_flags

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        results = recipe.main(tiny_flags(data_cache, tmp_path / name, "--loss", "an", *extra))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    losses = [json.loads(line)["train_loss"] for line in open(tmp_path / name / "metrics.jsonl")]
    return results, losses



def test_image_cache_and_workers_leave_the_run_bit_identical(tmp_path, data_cache):
    torch.set_num_threads(1)
    plain, plain_losses = _recipe_run(tmp_path, data_cache, "plain", "--workers", "0")
    cached, cached_losses = _recipe_run(tmp_path, data_cache, "cached", "--workers", "2", "--image-cache",
                                           "--image-cache-dir", str(tmp_path / "images"))
    assert cached_losses == plain_losses
    for key in ("val_map", "test_map", "best_epoch"):
        assert cached[key] == plain[key], key
    assert len([n for n in os.listdir(tmp_path / "images") if n.endswith(".npy")]) == 3  # train, validation, test


def test_channels_last_run_exports_a_plain_timm_model(tmp_path, data_cache):
    import timm

    results, losses = _recipe_run(tmp_path, data_cache, "last", "--channels-last", "--train-mode", "linear_init",
                                     "--linear-epochs", "1")
    assert np.isfinite(losses).all() and results["best_epoch"] in (1, 2)
    model = timm.create_model(f"local-dir:{tmp_path / 'last' / 'model'}", pretrained=True).eval()  # safetensors
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 10)


def test_compile_flag_compiles_the_network_call_keeping_its_names(tmp_path, data_cache, monkeypatch):
    # Inductor's code generation takes minutes on 2 CPU cores: the recipe's --compile runs here through
    # torch.compile with the "eager" backend (Dynamo traces the model; no kernels are generated)
    compiled = []
    real_compile = torch.compile

    def eager_compile(fn, *args, **kwargs):
        compiled.append(kwargs.get("mode"))
        return real_compile(fn, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    model = _model("test_resnet").eval()
    names = list(model.state_dict())
    apply_device_options(model, compile=True, compile_mode="reduce-overhead")
    assert compiled == ["reduce-overhead"] and list(model.state_dict()) == names  # no _orig_mod. prefix
    torch.testing.assert_close(model(torch.ones(2, 3, 16, 16)), model.forward(torch.ones(2, 3, 16, 16)))
    compiled.clear()
    results, losses = _recipe_run(tmp_path, data_cache, "compiled", "--compile", "--epochs", "1")
    assert compiled == [None] and np.isfinite(losses).all()
    with pytest.raises(ValueError, match="compile mode must be one of"):
        apply_device_options(model, compile=True, compile_mode="fastest")
    assert contiguous_parameters(apply_device_options(_model(), channels_last=True)).conv1[0].weight.is_contiguous()


# ------------------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_normalisation_is_bit_identical_to_the_cpu_transform(split, channels_last):
    model = _model()
    pipeline = ImagePipeline.for_model(model, 32, device="cuda", workers=2, channels_last=channels_last)
    loader = pipeline.loader(split, 4)
    assert loader.pin_memory
    reference = protocol_transform(model, 32)
    for batch in loader:
        assert batch["pixel_values"].is_pinned()
        on_device = pipeline.normalize(batch["pixel_values"].to("cuda", non_blocking=True))
        expected = torch.stack([reference(Image.open(split[int(i)]["image"].filename).convert("RGB"))
                                for i in batch["index"]])
        assert torch.equal(on_device.cpu(), expected)  # CUDA's division is IEEE-rounded when both operands are tensors



@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("precision,extra", [("fp16", ()), ("bf16", ()), ("bf16", ("--channels-last",))])
def test_cuda_end_to_end_runs(tmp_path, data_cache, precision, extra, monkeypatch):
    from accelerate import Accelerator

    scalers = []
    real_init = Accelerator.__init__

    def record(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        scalers.append(self.scaler)

    monkeypatch.setattr(Accelerator, "__init__", record)
    results, losses = _recipe_run(tmp_path, data_cache, f"{precision}{len(extra)}", "--mixed-precision", precision,
                                     "--workers", "auto", *extra)
    assert np.isfinite(losses).all() and results["num_processes"] == 1
    # fp16 trains with a GradScaler (accelerate's), bf16 without
    assert (scalers[-1] is not None) == (precision == "fp16")

