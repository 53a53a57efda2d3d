"""The zero-shot evaluator: nearest class-name embedding, on fake models and through a real run."""

import numpy as np
import pytest
import torch

import harness
from harness.components import EvalContext
from harness.data import DatasetInfo, Split
from harness.runner import run
from harness_plugins.evaluators.zeroshot import ZeroShot, nearest_label, zero_shot_accuracy

NAMES = ["red circle", "blue square", "green cross", "red square"]


class FakeModel:
    """Images are class indices; a class name embeds as a one-hot vector, an image as its class's
    one-hot (scaled, to check the cosine) shifted by ``wrong`` classes."""

    def __init__(self, wrong: int = 0):
        self.wrong = wrong

    def embed_images(self, images):
        index = (torch.as_tensor(images) + self.wrong) % len(NAMES)
        return 3.0 * torch.eye(len(NAMES))[index]

    def embed_texts(self, texts):
        return torch.eye(len(NAMES))[[NAMES.index(t) for t in texts]] + 0.1


def context(model, labels, is_holdout=None, images=None):
    """An evaluation context whose images are class indices (``labels`` unless ``images`` is given)."""
    labels = np.asarray(labels)
    extras = {"labels": labels} | ({} if is_holdout is None else {"is_holdout": np.asarray(is_holdout)})
    images = torch.as_tensor(labels if images is None else np.asarray(images))
    split = Split("test", images=images, texts=[], text_to_image=[], extras=extras)
    return EvalContext(model=model, split=split, train_split=split,
                       dataset_info=DatasetInfo(name="fake", class_names=NAMES))


def test_perfect_model_scores_100_and_wrong_model_0():
    labels = [0, 1, 2, 3, 3, 1]
    assert ZeroShot().evaluate(context(FakeModel(), labels)) == {"top1": 100.0}
    assert ZeroShot().evaluate(context(FakeModel(wrong=1), labels)) == {"top1": 0.0}


def test_holdout_and_seen_subsets():
    # images 4 and 5 look like classes 0 and 1 but are labelled 2 and 3: the model gets them wrong
    labels, images = [0, 1, 2, 3, 2, 3], [0, 1, 2, 3, 0, 1]
    held = [True, False, False, False, True, True]
    metrics = ZeroShot().evaluate(context(FakeModel(), labels, held, images))
    assert metrics["top1"] == pytest.approx(100 * 4 / 6)
    assert metrics["top1_holdout"] == pytest.approx(100 * 1 / 3)
    assert metrics["top1_seen"] == pytest.approx(100.0)
    # no held-out image: the subset metrics are left out rather than reported as 0 or NaN
    assert set(ZeroShot().evaluate(context(FakeModel(), labels, [False] * 6, images))) == {"top1"}


def test_unseen_classes_are_those_no_training_image_is_labelled_with():
    labels, images = [0, 1, 2, 3, 2, 3], [0, 1, 2, 3, 0, 3]  # image 4 is wrong
    ctx = context(FakeModel(), labels, images=images)
    ctx.train_split = Split("train", images=[], texts=[], text_to_image=[],
                            extras={"labels": np.array([0, 1, 1, 3])})
    metrics = ZeroShot().evaluate(ctx)
    assert metrics["top1_unseen"] == pytest.approx(50.0)  # class 2: images 2 (right) and 4 (wrong)
    assert metrics["top1"] == pytest.approx(100 * 5 / 6)


def test_pure_function_ignores_unlabelled_images_and_zero_vectors():
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    label = torch.tensor([[5.0, 0.0], [0.0, 0.5]])
    assert nearest_label(image, label).tolist() == [0, 1, 0]
    assert zero_shot_accuracy(image, label, [0, 1, -1]) == {"top1": 100.0}
    with pytest.raises(ValueError, match="labels"):
        zero_shot_accuracy(image, label, [0, 1])


def test_registered_higher_is_better_and_checks_its_inputs():
    evaluator = harness.create("evaluator", "zero-shot", template="a {}")
    assert evaluator.higher_is_better("top1") and evaluator.higher_is_better("top1_holdout")
    with pytest.raises(Exception, match="template"):
        harness.create("evaluator", "zero-shot", template="no slot")
    ctx = context(FakeModel(), [0, 1])
    ctx.split.extras.pop("labels")
    with pytest.raises(ValueError, match="labels"):
        evaluator.evaluate(ctx)


def test_devise_on_tiny_shapes_reports_zero_shot_top1(tmp_path):
    config = {
        "name": "zs",
        "dataset": {"name": "shapes", "train_size": 256, "val_size": 1, "test_size": 128,
                    "image_size": 32, "holdout": ["red circle", "blue square", "green cross"]},
        "seeds": [0],
        "defaults": {"encoders": {"image": {"name": "small-cnn", "channels": [8, 8]},
                                  "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8}},
                     "embed_dim": 16, "train": {"epochs": 1, "batch_size": 64, "device": "cpu"}},
        "methods": [{"name": "devise", "loss": {"name": "devise", "margin": 0.1}}],
        "evaluators": [{"name": "zero-shot"}],
        "report": {"metrics": ["zero-shot/top1", "zero-shot/top1_holdout"]},
    }
    outcome = run(config, tmp_path, progress=False)
    result = outcome.results[0]
    assert result.status == "ok", result.error
    assert {"zero-shot/top1", "zero-shot/top1_seen", "zero-shot/top1_holdout",
            "zero-shot/top1_unseen"} <= set(result.metrics)
    assert all(0.0 <= v <= 100.0 for v in result.metrics.values())
    assert result.higher_is_better["zero-shot/top1"] is True
    assert "zero-shot/top1_holdout (%) ↑" in outcome.table
