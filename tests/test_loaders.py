"""The real-data loaders on small files in the published formats (written here), including malformed ones:
every problem is a ConfigError naming the parameter and the file, never a traceback."""

import json
import os

import numpy as np
import pytest
import torch

import harness
from harness.errors import ConfigError
from harness.sources import ImageFiles, square_geometry
from harness.validation import prepare

import real_formats as rf


def create(name, **params):
    return harness.create("dataset", name, **params)


def error_of(name, **params) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        create(name, **params).split("train")
    return info.value


# --- karpathy ------------------------------------------------------------------------------------------

def test_karpathy_coco_splits_with_restval_in_train_and_caps(tmp_path):
    ann = rf.karpathy_file(tmp_path, {"train": 5, "restval": 2, "val": 3, "test": 4})
    data = create("karpathy", annotations=str(ann), images=str(tmp_path / "images"), image_size=24)
    train, val, test = (data.split(n) for n in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (7, 3, 4)
    assert len(test.texts) == 20 and test.texts_of_image()[0].tolist() == [0, 1, 2, 3, 4]
    assert isinstance(train.images, ImageFiles) and train.images[np.arange(2)].shape == (2, 3, 24, 24)
    assert train.images.paths[0].endswith(os.path.join("images", "train2014", "COCO_train2014_000000000000.jpg"))
    assert test.extras["image_id"].tolist() == [100010, 100011, 100012, 100013]
    assert data.info.image_shape == (3, 24, 24) and "dog" in data.info.vocab
    doc = json.loads(ann.read_text())
    assert test.texts[0] == doc["images"][10]["sentences"][0]["raw"].strip()
    no_restval = create("karpathy", annotations=str(ann), images=str(tmp_path / "images"), restval=False,
                        test_size=2)
    assert len(no_restval.split("train")) == 5 and len(no_restval.split("test")) == 2


def test_karpathy_keeps_each_images_first_five_captions_as_the_retrieval_protocol(tmp_path):
    """Some COCO images have 6 or 7 sentences; the published protocol scores 5 per image (the first
    five): ``captions_per_image`` (default 5) keeps those, null keeps them all."""
    annotations = rf.karpathy_file(tmp_path, {"train": 2, "test": 3}, captions=7)
    raw = json.loads(annotations.read_text())["images"]
    data = create("karpathy", annotations=str(annotations), images=str(tmp_path / "images"), image_size=16)
    test = data.split("test")
    assert len(test.texts) == 15 and np.bincount(test.text_to_image).tolist() == [5, 5, 5]
    first = next(e for e in raw if e["split"] == "test")
    assert test.texts[:5] == [s["raw"].strip() for s in first["sentences"][:5]]
    every = create("karpathy", annotations=str(annotations), images=str(tmp_path / "images"), image_size=16,
                   captions_per_image=None)
    assert len(every.split("test").texts) == 21
    assert error_of("karpathy", annotations=str(annotations), images=str(tmp_path / "images"),
                    captions_per_image=0).field == "captions_per_image"


def test_karpathy_flickr_files_have_no_filepath(tmp_path):
    ann = rf.karpathy_file(tmp_path, {"train": 3, "val": 1, "test": 2}, coco=False)
    data = create("karpathy", annotations=str(ann), images=str(tmp_path / "images"), image_size=8)
    assert data.split("test").images.paths[0] == os.path.join(str(tmp_path / "images"), "1004.jpg")
    assert data.split("test").extras["image_id"].tolist() == [4, 5]  # imgid without cocoid


def test_karpathy_errors_name_the_field_and_the_file(tmp_path):
    images = str(tmp_path / "images")
    err = error_of("karpathy", annotations=str(tmp_path / "nope.json"), images=images)
    assert err.field == "annotations" and "file not found" in err.message and "nope.json" in err.message
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    err = error_of("karpathy", annotations=str(bad), images=images)
    assert err.field == "annotations" and "bad.json is not valid JSON" in err.message
    ann = rf.karpathy_file(tmp_path, {"train": 2, "val": 1, "test": 1})
    doc = json.loads(ann.read_text())
    for mutate, expected in [
        (lambda d: d.pop("images"), "no 'images' list"),
        (lambda d: d["images"][1].pop("filename"), "images[1]: no 'filename'"),
        (lambda d: d["images"][0].update(split="dev"), "images[0].split: expected one of train, val, test, "
                                                       "restval, got 'dev'"),
        (lambda d: d["images"][2]["sentences"][0].update(raw=7), "images[2].sentences[0].raw: expected a string"),
        (lambda d: d["images"][3].update(sentences="x"), "images[3].sentences: expected a list"),
    ]:
        broken = json.loads(json.dumps(doc))
        mutate(broken)
        path = tmp_path / "broken.json"
        path.write_text(json.dumps(broken))
        err = error_of("karpathy", annotations=str(path), images=images)
        assert err.field == "annotations" and str(path) in err.message and expected in err.message, err.message
    (tmp_path / "images" / "val2014" / doc["images"][2]["filename"]).unlink()
    err = error_of("karpathy", annotations=str(ann), images=images)
    assert err.field == "images" and "1 of 1 images named in" in err.message
    err = error_of("karpathy", annotations=str(ann), images=str(tmp_path / "elsewhere"))
    assert err.field == "images" and "folder not found" in err.message
    with pytest.raises(ConfigError, match="expected an integer, got 'big'") as info:
        create("karpathy", annotations=str(ann), images=images, image_size="big")
    assert info.value.field == "image_size"


def test_karpathy_empty_and_unknown_splits_are_clear_errors(tmp_path):
    ann = rf.karpathy_file(tmp_path, {"train": 2, "test": 1})
    data = create("karpathy", annotations=str(ann), images=str(tmp_path / "images"))
    with pytest.raises(ConfigError, match="split 'val' is empty: no image of .* has split 'val'") as info:
        data.split("val")
    assert info.value.field == "annotations"
    with pytest.raises(ValueError, match="has splits train, val, test; not 'dev'"):
        data.split("dev")
    assert data.fingerprint()  # an empty split does not stop the fingerprint


def test_validate_names_the_dataset_field_of_the_benchmark_file(tmp_path):
    config = {"name": "k", "dataset": {"name": "karpathy", "annotations": str(tmp_path / "dataset_coco.json"),
                                       "images": str(tmp_path)},
              "defaults": {"encoders": {"image": {"name": "small-cnn"}, "text": {"name": "gru"}}},
              "methods": [{"name": "infonce", "loss": {"name": "infonce"}}]}
    with pytest.raises(ConfigError) as info:
        prepare(config)
    assert info.value.field == "dataset.annotations" and "file not found" in str(info.value)


# --- coco-captions -------------------------------------------------------------------------------------

def test_coco_captions_train_val_and_a_test_carved_from_val(tmp_path):
    files = rf.coco_files(tmp_path, train=4, val=6)
    params = dict(train_annotations=str(files["train"]), val_annotations=str(files["val"]),
                  train_images=str(tmp_path / "train2014"), val_images=str(tmp_path / "val2014"), image_size=16)
    data = create("coco-captions", test_size=2, **params)
    train, val, test = (data.split(n) for n in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (4, 4, 2) and len(train.texts) == 20
    assert sorted(val.extras["image_id"].tolist() + test.extras["image_id"].tolist()) == \
        [100000 + 7 * k for k in range(6)]
    assert list(val.extras["image_id"]) == sorted(val.extras["image_id"])  # id order
    doc = json.loads(files["train"].read_text())
    assert train.texts[:5] == [a["caption"].strip() for a in doc["annotations"][:5]]
    same = create("coco-captions", test_size=2, **params)
    assert same.split("test").extras["image_id"].tolist() == test.extras["image_id"].tolist()
    ids = tmp_path / "test_ids.txt"
    ids.write_text("100007\n100021, 100035")
    by_ids = create("coco-captions", test_ids=str(ids), **params)
    assert by_ids.split("test").extras["image_id"].tolist() == [100007, 100021, 100035]
    assert len(by_ids.split("val")) == 3
    with pytest.raises(ConfigError, match="set test_size .* or test_ids") as info:
        create("coco-captions", **params).split("test")
    assert info.value.field == "val_annotations"


def test_coco_captions_errors(tmp_path):
    files = rf.coco_files(tmp_path, train=2, val=3)
    params = dict(train_annotations=str(files["train"]), val_annotations=str(files["val"]),
                  train_images=str(tmp_path / "train2014"), val_images=str(tmp_path / "val2014"))
    doc = json.loads(files["val"].read_text())
    doc["annotations"].append({"image_id": 5, "id": 99, "caption": "a ghost"})
    files["val"].write_text(json.dumps(doc))
    err = error_of("coco-captions", test_size=1, **params)
    assert err.field == "val_annotations" and "image_id 5 is not in the file's images list (1 caption(s) name " \
        "absent images)" in err.message and "captions_val2014.json" in err.message
    doc["annotations"].pop()
    doc["images"][0].pop("file_name")
    files["val"].write_text(json.dumps(doc))
    err = error_of("coco-captions", test_size=1, **params)
    assert "images[0].file_name: expected a string, got None" in err.message
    files = rf.coco_files(tmp_path, train=2, val=3)
    params["val_annotations"] = str(files["val"])
    ids = tmp_path / "ids.json"
    ids.write_text("[100000, 42]")
    assert error_of("coco-captions", test_ids=str(ids), **params).field == "test_ids"
    assert "both" in error_of("coco-captions", test_ids=str(ids), test_size=1, **params).message
    assert error_of("coco-captions", test_size=3, **params).field == "test_size"


# --- image-text-files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_image_text_files_group_rows_into_images_per_split(tmp_path, fmt):
    path = rf.image_text_folder(tmp_path, 10, fmt)
    data = create("image-text-files", path=str(path), images=str(tmp_path / "images"), image_size=16)
    train = data.split("train")
    assert (len(train), len(data.split("val")), len(data.split("test"))) == (6, 2, 2)
    rows = [r for r in rf.rows(10) if r["split"] == "train"]
    assert train.texts == [r["caption"] for r in rows]
    assert train.text_to_image.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert train.images[np.array([5])].shape == (1, 3, 16, 16)


def test_image_text_files_errors_name_line_and_column(tmp_path):
    path = rf.image_text_folder(tmp_path, 5, "jsonl")
    lines = path.read_text().splitlines()
    images = str(tmp_path / "images")
    for replacement, field, expected in [
        ("{not json", "path", "line 3: not valid JSON"),
        ('{"image": "photos/00001.jpg", "caption": "x", "split": "dev"}', "path",
         "line 3, split: expected one of train, val, test, got 'dev'"),
        ('{"image": "photos/00001.jpg", "split": "train"}', "path", "line 3: no 'caption' column"),
        ('{"image": "photos/00001.jpg", "caption": "", "split": "train"}', "path",
         "caption: expected a non-empty"),
        ('{"image": "photos/00001.jpg", "caption": "x", "split": "test"}', "path",
         "line 4: image 'photos/00001.jpg' is in split 'test' and 'train'"),
    ]:
        broken = tmp_path / "broken.jsonl"
        broken.write_text("\n".join(lines[:2] + [replacement] + lines[3:]))
        err = error_of("image-text-files", path=str(broken), images=images)
        assert err.field == field and str(broken) in err.message and expected in err.message, err.message
    err = error_of("image-text-files", path=str(path), images=images, caption_column="text")
    assert err.field == "caption_column" and "no 'text' column" in err.message
    (tmp_path / "images" / "photos" / "00000.jpg").unlink()
    err = error_of("image-text-files", path=str(path), images=images)
    assert err.field == "images" and "photos/00000.jpg" in err.message
    other = tmp_path / "pairs.txt"
    other.write_text("")
    assert error_of("image-text-files", path=str(other), images=images).field == "format"
    only_train = tmp_path / "train.jsonl"
    only_train.write_text(lines[2] + "\n")  # image 1 (image 0 was deleted above)
    with pytest.raises(ConfigError, match="split 'test' is empty: no row of .* has split 'test'"):
        create("image-text-files", path=str(only_train), images=images).split("test")


def test_a_corrupt_image_names_its_file_when_it_is_read(tmp_path):
    path = rf.image_text_folder(tmp_path, 5, "jsonl")
    (tmp_path / "images" / "photos" / "00001.jpg").write_bytes(b"not a jpeg")
    data = create("image-text-files", path=str(path), images=str(tmp_path / "images"))
    with pytest.raises(ValueError, match="cannot decode image .*00001.jpg"):
        data.split("train").images[1]


# --- idx-images ----------------------------------------------------------------------------------------

def test_idx_images_caption_class_names_and_hold_out_classes(tmp_path):
    folder = rf.idx_folder(tmp_path / "fm", train=60, test=20)
    data = create("idx-images", directory=str(folder), val_size=10, holdout=["sneaker"],
                  templates=["a photo of a {}.", "a {}"])
    train, val, test = (data.split(n) for n in ("train", "val", "test"))
    every = create("idx-images", directory=str(folder), val_size=10).split("train")
    assert len(val) == 10 and len(test) == 20 and len(train) == (every.labels != 7).sum() < 50
    assert 7 not in train.labels and 7 in test.labels and test.extras["is_holdout"].sum() == 2
    assert test.texts[:2] == ["a photo of a t-shirt.", "a t-shirt"]
    assert test.text_to_image[:4].tolist() == [0, 0, 1, 1]
    assert isinstance(test.images, np.ndarray) and test.images.shape == (20, 1, 28, 28)
    assert data.info.class_names[9] == "ankle boot" and data.info.image_shape == (1, 28, 28)
    larger = create("idx-images", directory=str(folder), val_size=10, image_size=56)
    assert larger.split("test").images[np.arange(2)].shape == (2, 1, 56, 56)
    import gzip
    raw = np.frombuffer(gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8)
    assert np.array_equal(test.images[:, 0].reshape(-1), raw)


def test_idx_images_errors(tmp_path):
    folder = rf.idx_folder(tmp_path / "fm")
    err = error_of("idx-images", directory=str(tmp_path / "none"))
    assert err.field == "directory" and "folder not found" in err.message
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    err = error_of("idx-images", directory=str(folder))
    assert err.field == "directory" and "no t10k-labels-idx1-ubyte[.gz]" in err.message
    rf.write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(5))  # 5 labels for 20 images
    assert "expected [N, H, W] images and N labels" in error_of("idx-images", directory=str(folder)).message
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    assert "the header says (9,)" in error_of("idx-images", directory=str(folder)).message
    rf.write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(20) % 10)
    assert error_of("idx-images", directory=str(folder), classes="cifar").field == "classes"
    assert error_of("idx-images", directory=str(folder), holdout=["yeti"]).field == "holdout"
    assert error_of("idx-images", directory=str(folder), templates=["a photo"]).field == "templates"
    assert error_of("idx-images", directory=str(folder), val_size=60).field == "val_size"


def test_the_default_fashion_mnist_folder_loads_the_real_files_or_says_how_to_install_them():
    """Debian's dataset-fashion-mnist (``.ci/run`` installs it): the published files read as 60,000 + 10,000
    images of 10 classes, the test file starting with an ankle boot and a pullover as published;
    without the package, the error says how to install it."""
    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        err = error_of("idx-images")
        assert err.field == "directory" and "apt-get install dataset-fashion-mnist" in err.message
        return
    data = create("idx-images", image_size=28, val_size=0)
    train, test = data.split("train"), data.split("test")
    assert (len(train), len(test)) == (60000, 10000) and len(data.info.class_names) == 10
    assert test.texts[:2] == ["a photo of a ankle boot.", "a photo of a pullover."]
    assert tuple(train.images[0].shape) == (1, 28, 28) and str(train.images[0].dtype).endswith("uint8")


# --- hf-dataset ----------------------------------------------------------------------------------------

def _saved_hf(path, rng):
    import datasets
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64"),
                                  "caption": datasets.Sequence(datasets.Value("string"))})

    def part(n):
        images = [Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)) for _ in range(n)]
        return datasets.Dataset.from_dict({"image": images, "caption": [[f"a dog {i}", f"a cat {i}"]
                                                                          for i in range(n)],
                                           "label": list(range(n))}, features=features)

    datasets.DatasetDict({"train": part(5), "validation": part(3), "test": part(2)}).save_to_disk(str(path))
    return path


def test_hf_dataset_reads_a_saved_dataset_dict(tmp_path):
    import datasets
    from PIL import Image

    path = _saved_hf(tmp_path / "saved", np.random.default_rng(0))
    data = create("hf-dataset", path=str(path), image_size=16)
    train = data.split("train")
    assert (len(train), len(data.split("val")), len(data.split("test"))) == (5, 3, 2)
    assert train.texts[:3] == ["a dog 0", "a cat 0", "a dog 1"] and train.text_to_image[:3].tolist() == [0, 0, 1]
    original = datasets.load_from_disk(str(path))["train"][3]["image"]
    from torchvision.transforms import v2
    expected = v2.Compose([v2.Resize(16), v2.CenterCrop(16), v2.PILToTensor()])(original.convert("RGB"))
    assert torch.equal(train.images[3], expected) and isinstance(original, Image.Image)
    swapped = create("hf-dataset", path=str(path), splits={"train": "train", "test": "validation"})
    assert len(swapped.split("test")) == 3
    with pytest.raises(ConfigError, match="split 'val' is empty"):
        swapped.split("val")


def test_hf_dataset_errors(tmp_path):
    path = _saved_hf(tmp_path / "saved", np.random.default_rng(0))
    err = error_of("hf-dataset", path=str(path), splits={"train": "training"})
    assert err.field == "splits" and "has splits train, validation, test; not 'training'" in err.message
    assert error_of("hf-dataset", path=str(path), caption_column="text").field == "caption_column"
    assert error_of("hf-dataset", path=str(path), image_column="img").field == "image_column"
    assert error_of("hf-dataset", path=str(tmp_path)).field == "path"  # not a saved dataset
    assert "folder not found" in error_of("hf-dataset", path=str(tmp_path / "nope")).message


def test_hf_dataset_with_image_paths_checks_the_files_exist(tmp_path):
    """An image column of path strings (relative to ``images``): read from the files; a path naming no
    file is a config error at ``images`` naming the split and column, before anything trains."""
    import datasets

    rng = np.random.default_rng(0)
    for k in range(3):
        rf.write_image(tmp_path / "imgs" / f"{k}.jpg", rng)
    table = datasets.Dataset.from_dict({"path": [f"{k}.jpg" for k in range(3)], "caption": ["a", "b", "c"]})
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "saved"))
    data = create("hf-dataset", path=str(tmp_path / "saved"), image_column="path", images=str(tmp_path / "imgs"),
                  image_size=16)
    assert data.split("train").images[2].shape == (3, 16, 16)
    (tmp_path / "imgs" / "1.jpg").unlink()
    err = error_of("hf-dataset", path=str(tmp_path / "saved"), image_column="path", images=str(tmp_path / "imgs"))
    assert err.field == "images" and "1 of 3 images named in" in err.message and "column 'path'" in err.message
    err = error_of("hf-dataset", path=str(tmp_path / "saved"), image_column="path")  # relative, no root
    assert err.field == "image_column" and "3 of 3 images named in" in err.message


def test_coco_test_ids_file_that_is_not_text_is_a_config_error(tmp_path):
    files = rf.coco_files(tmp_path, train=2, val=3)
    ids = tmp_path / "ids.bin"
    ids.write_bytes(b"\xff\xfe\x00\x81 binary")
    err = error_of("coco-captions", train_annotations=str(files["train"]), val_annotations=str(files["val"]),
                   train_images=str(tmp_path / "train2014"), val_images=str(tmp_path / "val2014"), test_ids=str(ids))
    assert err.field == "test_ids" and "not a text file of image ids" in err.message


# --- visual-genome -------------------------------------------------------------------------------------

def test_visual_genome_objects_and_relations_in_the_relation_modules_layout(tmp_path):
    files = rf.visual_genome_files(tmp_path, n_images=12)
    data = create("visual-genome", image_data=str(files["image_data"]), relationships=str(files["relationships"]),
                  objects=str(files["objects"]), images=str(tmp_path), val_size=2, test_size=2, image_size=32,
                  max_objects=5)
    train = data.split("train")
    assert len(train) == 8 and len(data.split("val")) == 2 and len(data.split("test")) == 2
    # "ON" and "on" are one predicate; most frequent first
    assert sorted(data.info.predicates) == ["has", "next to", "on", "wearing"] and data.info.predicates[0] == "on"
    ex = train.extras
    assert ex["relations"].shape == (8, 5, 5) and ex["obj_bbox"].shape == (8, 5, 4)
    assert ex["n_objects"].tolist() == [4] * 8
    # image 1: man on horse, horse wearing shirt, shirt next to street (4 objects, slots in that order)
    rel = json.loads(files["relationships"].read_text())
    image_id = int(ex["image_id"][0])
    rels = rel[image_id - 1]["relationships"]
    names = [r["subject"]["name"] for r in rels] + [rels[-1]["object"]["names"][0]]
    assert [data.info.object_names[i] for i in ex["obj_name"][0][:4]] == names
    p = {name: i for i, name in enumerate(data.info.predicates)}
    for j, r in enumerate(rels):
        assert ex["relations"][0, j, j + 1] == p[r["predicate"].lower()]
    assert (ex["relations"][0] >= 0).sum() == 3
    assert train.texts[:3] == [f"{names[j]} {rels[j]['predicate'].lower()} {names[j + 1]}" for j in range(3)]
    # boxes in the crop's pixels: scale by the shorter side, minus the centre-crop offset
    sx, sy, left, top = square_geometry(80, 60, 32)
    s = rels[0]["subject"]
    assert ex["obj_bbox"][0, 0].tolist() == np.clip(np.round([s["x"] * sx - left, s["y"] * sy - top,
                                                              (s["x"] + s["w"]) * sx - left,
                                                              (s["y"] + s["h"]) * sy - top]), 0, 32).tolist()
    assert ex["obj_bbox"][0, 4].tolist() == [-1, -1, -1, -1] and ex["obj_name"][0, 4] == -1
    chosen = create("visual-genome", image_data=str(files["image_data"]),
                    relationships=str(files["relationships"]), images=str(tmp_path), predicates=["wearing"],
                    val_size=0, test_size=0)
    assert chosen.info.predicates == ["wearing"] and all(" wearing " in t for t in chosen.split("train").texts)
    top1 = create("visual-genome", image_data=str(files["image_data"]), relationships=str(files["relationships"]),
                  images=str(tmp_path), top_k=1, val_size=0, test_size=0)
    assert top1.info.predicates == ["on"]


def test_visual_genome_errors(tmp_path):
    files = rf.visual_genome_files(tmp_path, n_images=4)
    params = dict(image_data=str(files["image_data"]), relationships=str(files["relationships"]),
                  images=str(tmp_path), val_size=1, test_size=1)
    doc = json.loads(files["relationships"].read_text())
    doc[1]["relationships"][0]["subject"].pop("object_id")
    files["relationships"].write_text(json.dumps(doc))
    err = error_of("visual-genome", **params)
    assert err.field == "relationships" and "[1].relationships[0].subject.object_id" in err.message
    doc[1]["relationships"][0]["subject"]["object_id"] = 1
    doc[0]["image_id"] = 999
    files["relationships"].write_text(json.dumps(doc))
    assert "image 999 is not in image_data" in error_of("visual-genome", **params).message
    assert error_of("visual-genome", **params, predicates=["on"], top_k=3).field == "top_k"
    with pytest.raises(ConfigError, match="split 'test' is empty") as info:
        create("visual-genome", **{**params, "relationships": str(rf.visual_genome_files(tmp_path / "ok", 4)
                                                                   ["relationships"]),
                                   "image_data": str(tmp_path / "ok" / "image_data.json"),
                                   "images": str(tmp_path / "ok"), "test_size": 0}).split("test")
    assert info.value.field == "relationships"


@pytest.mark.parametrize("chunk", [1, 2, 7, 1 << 22])
def test_json_lists_are_read_one_item_at_a_time_across_chunk_boundaries(tmp_path, chunk):
    """``iter_json_list`` (Visual Genome's large files) yields what ``json.load`` gives, whatever the read
    size: items cut between reads (a number cut at "150" of "1500.0"), strings holding "]" and ",",
    non-ASCII text, indentation; bad documents are config errors naming the field, at the same character
    whatever the read size."""
    from harness_plugins.datasets.common import iter_json_list

    doc = [{"a": [1, 2, {"b": "x ], y"}]}, "s,]", 1.5e3, -2.5e-7, None, True, 10, {"k": "é中" * 9}, [],
           {"neg": -12.5e-3, "l": [1.25, -3e10], "esc": "a\nb\"c", "f": False}]
    for indent, ascii_only in ((None, False), (2, False), (None, True)):  # True: "\u00e9" escapes to cut
        path = tmp_path / f"doc{indent}{ascii_only}.json"
        path.write_text(json.dumps(doc, indent=indent, ensure_ascii=ascii_only), encoding="utf-8")
        assert list(iter_json_list(str(path), "relationships", chunk=chunk)) == doc
    for text, problem in (('{"a": 1}', "top level: expected a list"), ("[1, 2", "expected ',' or ']' at character 5"),
                          ("[1 2]", "expected ',' or ']' at character 3"), ("[1,,2]", "Expecting value at character 3"),
                          ("[1] 2", "extra data after the list at character 4")):
        path = tmp_path / "bad.json"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            list(iter_json_list(str(path), "relationships", chunk=chunk))
        assert info.value.field == "relationships" and problem in info.value.message and "bad.json" in info.value.message
    # an error inside the text read is reported at once: the rest of the file (here bytes that are not
    # UTF-8) is never read
    if chunk < 1000:  # (a chunk of the whole file reads the bad bytes with the first read)
        path = tmp_path / "early.json"
        path.write_bytes(b"[1, x, 2" + b" " * 20000 + b"\xff\xfe" * 64 + b"]")
        with pytest.raises(ConfigError, match="Expecting value at character 4"):
            list(iter_json_list(str(path), "relationships", chunk=max(chunk, 8)))


def test_visual_genome_object_names_come_from_name_or_names():
    """An object whose ``name`` is not a string (``null``) but has ``names`` is read by its first name, as
    the loader's checks accept it (no AttributeError while reading)."""
    from harness_plugins.datasets.visual_genome import object_name

    assert object_name({"name": None, "names": [" Tree  Top"]}) == "tree top"
    assert object_name({"name": "Man", "names": ["person"]}) == "man"
