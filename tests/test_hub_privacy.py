"""What a push publishes: no credentials, no absolute local paths, and a model card whose body a hostile
dataset, class or model name cannot break (issue 22, items 1 and 17)."""
import json
import uuid

import yaml
from huggingface_hub import ModelCard

from test_hub import CONFIG, RESULTS, make_timm_run

from spl_losses.hub import build_model_card, mask_url_credentials, public_training_config, push_run_to_hub

SECRET = "s3cr3t-pa55"
HOME = "/home/alice-private"


def _leaky_config():
    return dict(CONFIG, dataset=f"{HOME}/datasets/my_photos", data_dir=f"{HOME}/raw", output_dir=f"{HOME}/runs/r1",
                cache_dir=f"{HOME}/.cache/hf", image_cache_dir=f"{HOME}/cache/images",
                config=f"{HOME}/configs/voc.yaml", teacher=f"model:{HOME}/runs/teacher",
                search_storage=f"postgresql://bob:{SECRET}@db.example.org:5432/studies",
                teacher_kwargs={"weights": f"{HOME}/clip.pt", "url": f"https://hub.example.org/x?token={SECRET}&a=1",
                                "hf_token": SECRET},
                dataset_option={"listing": f"{HOME}/datasets/my_photos/all.csv"},
                linear_phase_dir=f"journal:{HOME}/journal.log", search_db=f"sqlite:///{HOME}/runs/search.db")


def _assert_clean(text: str) -> None:
    assert SECRET not in text
    assert HOME not in text and "alice-private" not in text


def test_mask_url_credentials():
    assert mask_url_credentials("postgresql://user:password@host/db") == "postgresql://user:***@host/db"
    assert mask_url_credentials("mysql+pymysql://u:p%40ss@h:3306/d?charset=utf8") == \
        "mysql+pymysql://u:***@h:3306/d?charset=utf8"
    masked = mask_url_credentials("postgresql://host/db?user=u&password=pw&sslmode=require")
    assert "pw" not in masked and "password=***" in masked and "sslmode=require" in masked
    assert "xyzzy" not in mask_url_credentials("https://x.org/a?access_token=xyzzy")
    assert mask_url_credentials("sqlite:///search.db") == "sqlite:///search.db"
    assert mask_url_credentials("https://ghp_abc@github.com/o/r.git") == "https://***@github.com/o/r.git"
    assert mask_url_credentials("not a url") == "not a url"


def test_public_training_config_masks_secrets_and_local_paths():
    public = public_training_config(_leaky_config())
    text = yaml.safe_dump(public)
    _assert_clean(text)
    assert public["search_storage"] == "postgresql://bob:***@db.example.org:5432/studies"
    assert public["dataset"] == "<local>/my_photos" and public["output_dir"] == "<local>/r1"
    assert public["teacher"] == "model:<local>/teacher"
    assert public["teacher_kwargs"]["hf_token"] == "***"
    assert public["linear_phase_dir"] == "journal:<local>/journal.log"
    # what is not secret nor local is kept as it is
    assert public["loss"] == "role" and public["lr"] == CONFIG["lr"] and public["val_set_variant"] == "clean"
    assert public_training_config({"dataset": "org/name", "teacher": "clip:ViT-B-32@openai"}) == \
        {"dataset": "org/name", "teacher": "clip:ViT-B-32@openai"}
    assert public_training_config({"data_dir": f"{HOME}/My Photos/set 1"}) == {"data_dir": "<local>/set 1"}
    kept = {"label_names": ["/m/01g317", "cat"], "data_dir": "relative/folder", "lr": 0.1}
    assert public_training_config(kept) == kept


def test_pushed_card_and_training_config_hold_no_secret_nor_local_path(hub, tmp_path):
    run = tmp_path / "run"
    make_timm_run(run)
    (run / "config.yaml").write_text(yaml.safe_dump(_leaky_config()), encoding="utf-8")
    (run / "results.json").write_text(json.dumps(dict(RESULTS, dataset=f"{HOME}/datasets/my_photos")),
                                      encoding="utf-8")
    repo_id = f"org/privacy-{uuid.uuid4().hex[:8]}"
    push_run_to_hub(run, repo_id)
    files = hub.repo_files(repo_id)
    for name in ("README.md", "training_config.yaml", "training_results.json"):
        _assert_clean(files[name].decode())
    assert yaml.safe_load(files["training_config.yaml"])["loss"] == "role"
    card = ModelCard(files["README.md"].decode())
    assert "<local>" not in (card.data.to_dict().get("datasets") or [])  # a local folder is no Hub dataset id
    # the run folder itself keeps its own config untouched
    assert SECRET in (run / "config.yaml").read_text()


HOSTILE = "evil|name`\n```\n<script>alert(1)</script>"


def _body_without_code(text: str):
    """The card body's lines outside fenced code blocks (fences of any length)."""
    out, fence = [], None
    for line in text.split("\n"):
        stripped = line.lstrip()
        if fence is None and stripped.startswith("```"):
            fence = stripped[:len(stripped) - len(stripped.lstrip("`"))]
            continue
        if fence is not None:
            if stripped.startswith(fence) and not stripped.strip("`"):
                fence = None
            continue
        out.append(line)
    return out, fence


def test_model_card_body_escapes_hostile_names():
    config = dict(CONFIG, dataset=HOSTILE, model=HOSTILE, val_set_variant=HOSTILE)
    results = dict(RESULTS, dataset=HOSTILE, model=HOSTILE, label_names=[HOSTILE, "b"],
                   test_metrics={"map": 1.0, HOSTILE: 50.0})
    card = build_model_card(config, results, "org/x", model_config={"architecture": "resnet50",
                                                                   "label_names": [HOSTILE, "b"]})
    text = card.text
    outside, open_fence = _body_without_code(text)
    assert open_fence is None, "a code fence is left open"
    assert "<script>" not in "\n".join(outside)  # no raw HTML outside code
    training = text.split("## Training", 1)[1].split("All resolved training arguments:", 1)[0].strip().split("\n")
    for line in training:  # every row of the table is one line of exactly two cells
        assert line.startswith("|") and line.endswith("|"), line
        assert line.replace("\\|", "").count("|") == 3, line
    # the YAML of the resolved arguments still reads back the hostile value
    after = text.split("All resolved training arguments:", 1)[1].lstrip("\n")
    fence, rest = after.split("\n", 1)
    assert fence.endswith("yaml") and set(fence[:-len("yaml")]) == {"`"} and len(fence) > len("```yaml")
    fence = fence[:-len("yaml")]
    assert yaml.safe_load(rest.split("\n" + fence + "\n", 1)[0])["model"] == HOSTILE
    metrics = [line for line in outside if line.startswith("Other test metrics")]
    assert len(metrics) == 1 and "<script>" not in metrics[0]


def test_dataset_card_escapes_hostile_class_names():
    import datasets

    from spl_losses.data.card import make_dataset_card

    names = [HOSTILE, "b|c", "plain_name"]
    labels = datasets.List(datasets.ClassLabel(names=names))
    split = datasets.Dataset.from_dict({"features": [[0.0, 1.0]], "labels": [[0, 1]], "observed_labels": [[0]],
                                        "index": [0]},
                                       features=datasets.Features({"features": datasets.List(datasets.Value("float32")),
                                                                   "labels": labels, "observed_labels": labels,
                                                                   "index": datasets.Value("int64")}))
    card = make_dataset_card(datasets.DatasetDict(train=split, test=split), pretty_name=HOSTILE,
                             local_load='datasets.load_from_disk("/data/```/x")')
    outside, open_fence = _body_without_code(card.text)
    assert open_fence is None
    assert "<script>" not in "\n".join(outside)
    assert "`plain_name`" in card.text and "b\\|c" in card.text
