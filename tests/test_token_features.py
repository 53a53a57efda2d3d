"""Token / location features in the contract: encoders returning [B, N, D] + mask, losses given the masks,
and methods with their own pair scores used by every evaluator that compares images with texts."""

import torch

from harness.components import TokenFeatures, call_loss
from harness.model import blockwise_scores, cosine_scores
from harness.runner import run

import harness_test_plugin as toy


def test_token_features_concatenate_with_padding_masked_out():
    a = TokenFeatures(torch.ones(2, 3, 4))
    b = TokenFeatures(torch.ones(1, 5, 4), torch.tensor([[True, True, False, False, False]]))
    both = TokenFeatures.cat([a, b])
    assert both.features.shape == (3, 5, 4)
    assert both.valid.tolist() == [[True] * 3 + [False] * 2] * 2 + [[True, True, False, False, False]]
    assert both.features[0, 3:].abs().sum() == 0
    assert len(both[1:]) == 2 and both[1:].mask.shape == (2, 5)


def test_call_loss_passes_token_masks_only_when_the_loss_names_them():
    toy.MaxMeanLoss.masks.clear()
    image = TokenFeatures(torch.randn(3, 4, 8))
    text = TokenFeatures(torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool))
    value = call_loss(toy.MaxMeanLoss(), image, text)
    assert value.dim() == 0 and toy.MaxMeanLoss.masks == [torch.Size([3, 5])]


def test_blockwise_scores_equal_the_whole_matrix():
    img, txt = torch.randn(37, 6), torch.randn(53, 6)
    whole = cosine_scores(img, txt)
    blocks = blockwise_scores(cosine_scores, img, txt, block_pairs=64)  # many small blocks
    assert torch.allclose(whole, blocks, atol=1e-6)  # GEMM blocking rounds differently
    feats = TokenFeatures(torch.randn(37, 4, 6))
    words = TokenFeatures(torch.randn(53, 3, 6), torch.rand(53, 3) > 0.3)
    words.mask[:, 0] = True
    naive = toy.max_mean_scores(feats.features, words.features, words.mask)
    assert torch.allclose(blockwise_scores(toy.MaxMeanLoss().pair_scores, feats, words, block_pairs=50),
                          naive, atol=1e-6)


def test_a_token_method_trains_and_is_evaluated_with_its_own_pair_scores(tmp_path, toy_config):
    toy_config["methods"] = [{"name": "grounded", "loss": {"name": "max-mean"},
                              "encoders": {"image": {"name": "quadrant-tokens"},
                                           "text": {"name": "word-tokens"}}}]
    toy_config["evaluators"] = [{"name": "retrieval"}, {"name": "zero-shot"}]
    toy_config["defaults"]["train"].update(epochs=6, lr=0.05)
    toy.MaxMeanLoss.masks.clear()
    result = run(toy_config, tmp_path, progress=False).results[0]
    assert result.status == "ok", result.error
    assert toy.MaxMeanLoss.masks  # the loss got the text mask from the token features
    # the toy task is easy for a colour-matching score: far above chance (5/16 images, 1/8 classes)
    assert result.metrics["retrieval/t2i_R@5"] > 1.5 * result.chance["retrieval/t2i_R@5"]
    assert result.metrics["zero-shot/top1"] > 3 * result.chance["zero-shot/top1"]


def test_token_features_without_a_pair_score_fail_clearly(tmp_path, toy_config):
    toy_config["methods"] = [{"name": "mse-tokens", "loss": {"name": "token-mse"},
                              "encoders": {"image": {"name": "quadrant-tokens"},
                                           "text": {"name": "word-tokens"}}}]
    result = run(toy_config, tmp_path, progress=False).results[0]
    assert result.status == "failed" and "defines no pair score" in result.error
