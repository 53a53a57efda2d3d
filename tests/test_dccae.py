"""DCCAE loss (Deep CCA + reconstruction) and the `identity` feature encoder, against independent math."""

from __future__ import annotations

import numpy as np
import pluggy
import pytest
import torch

import harness
from harness import hookspecs
from harness.data import DatasetInfo
from harness.registry import default_registry
from harness_plugins import cca as cca_plugin
from harness_plugins.cca import DCCAELoss, DCCALoss
from harness_plugins.encoders.small import Identity


def numpy_total_correlation(H1, H2, reg):
    """Σ σᵢ(Σ₁₁^{-1/2} Σ₁₂ Σ₂₂^{-1/2}) with (n−1)-normalised covariances + reg·I, by eigh and SVD."""
    n = len(H1)
    A, B = H1 - H1.mean(0), H2 - H2.mean(0)

    def inv_sqrt(S):
        lam, Q = np.linalg.eigh(S + reg * np.eye(len(S)))
        return Q @ np.diag(lam ** -0.5) @ Q.T

    T = inv_sqrt(A.T @ A / (n - 1)) @ (A.T @ B / (n - 1)) @ inv_sqrt(B.T @ B / (n - 1))
    return np.linalg.svd(T, compute_uv=False).sum()


def numpy_mlp(layers, Z):
    """Apply a decoder's Linear/ReLU/Sigmoid layers with numpy, from its weights."""
    for layer in layers:
        if isinstance(layer, torch.nn.Linear):
            Z = Z @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()
        elif isinstance(layer, torch.nn.ReLU):
            Z = np.maximum(Z, 0)
        elif isinstance(layer, torch.nn.Sigmoid):
            Z = 1 / (1 + np.exp(-Z))
        else:
            raise AssertionError(f"unexpected layer {layer}")
    return Z


INFO = DatasetInfo(name="two-view", image_shape=(12,), text_kind="vector", text_dim=7)


def batch(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 12, generator=g), torch.rand(n, 7, generator=g)
    h1 = x @ torch.randn(12, 4, generator=g) + 0.1 * torch.randn(n, 4, generator=g)
    h2 = y @ torch.randn(7, 4, generator=g)
    return h1, h2, x, y


def test_registered_through_the_hook_contract():
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(cca_plugin)
    losses = {}
    pm.hook.register_losses(register=lambda name, factory: losses.__setitem__(name, factory))
    assert losses["dccae"] is DCCAELoss
    assert harness.available("encoder")["encoder"].count("identity") == 1
    assert "dccae" in harness.available("loss")["loss"]


@pytest.mark.parametrize("output, lam", [("linear", 0.3), ("sigmoid", 2.0)])
def test_value_is_dcca_plus_lambda_times_reconstruction(output, lam):
    torch.manual_seed(0)
    loss = DCCAELoss(lambda_recon=lam, hidden=[16, 8], output=output, reg=1e-3, embed_dim=4,
                     dataset_info=INFO).double()
    h1, h2, x, y = (t.double() for t in batch())
    value = loss(h1, h2, images=x, texts=y)
    assert value.ndim == 0
    corr = numpy_total_correlation(h1.numpy(), h2.numpy(), 1e-3)
    recon_x = numpy_mlp(loss.decoder_image, h1.numpy())
    recon_y = numpy_mlp(loss.decoder_text, h2.numpy())
    recon = (((x.numpy() - recon_x) ** 2).sum(1) + ((y.numpy() - recon_y) ** 2).sum(1)).mean()
    assert recon_x.shape == (40, 12) and recon_y.shape == (40, 7)
    assert value.item() == pytest.approx(-corr + lam * recon, rel=1e-7, abs=1e-9)
    assert loss.reconstruction(h1, h2, x, y).item() == pytest.approx(recon, rel=1e-7)
    # the correlation part is the dcca loss with the same k and reg
    assert DCCALoss(reg=1e-3)(h1, h2).item() == pytest.approx(-corr, rel=1e-7)


def test_lambda_zero_is_dcca_and_k_is_passed_on():
    h1, h2, x, y = batch(seed=1)
    loss = DCCAELoss(lambda_recon=0.0, k=2, reg=1e-2, embed_dim=4, dataset_info=INFO)
    assert loss(h1, h2, x, y).item() == pytest.approx(DCCALoss(k=2, reg=1e-2)(h1, h2).item())


def test_gradients_flow_to_decoders_and_encoders():
    torch.manual_seed(0)
    enc1, enc2 = torch.nn.Linear(12, 4), torch.nn.Linear(7, 4)
    loss = DCCAELoss(lambda_recon=0.1, hidden=[8], embed_dim=4, dataset_info=INFO)
    _, _, x, y = batch()
    value = loss(enc1(x), enc2(y), images=x, texts=y)
    value.backward()
    decoder_params = [*loss.decoder_image.parameters(), *loss.decoder_text.parameters()]
    assert len(decoder_params) == 8 and set(map(id, loss.parameters())) == set(map(id, decoder_params))
    for p in [*decoder_params, *enc1.parameters(), *enc2.parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # one optimizer step on the decoders alone lowers the reconstruction error
    before = loss.reconstruction(enc1(x), enc2(y), x, y).item()
    opt = torch.optim.SGD(decoder_params, lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        loss(enc1(x).detach(), enc2(y).detach(), images=x, texts=y).backward()
        opt.step()
    assert loss.reconstruction(enc1(x), enc2(y), x, y).item() < before


def test_bf16_autocast_gives_the_float32_loss_and_gradients():
    torch.manual_seed(0)
    loss = DCCAELoss(lambda_recon=0.3, hidden=[16], embed_dim=4, dataset_info=INFO)
    h1, h2, x, y = (t.bfloat16().float() for t in batch(n=500))  # bf16-representable
    expected = loss(h1, h2, images=x, texts=y).item()
    h1.requires_grad_(True)
    h2.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(h1, h2, images=x, texts=y)
    value.backward()
    assert value.dtype == torch.float32 and value.item() == pytest.approx(expected, rel=1e-5)
    for g in (h1.grad, h2.grad, *(p.grad for p in loss.parameters())):
        assert g is not None and torch.isfinite(g).all()


def test_sizes_from_context_or_parameters_and_errors():
    loss = harness.create("loss", "dccae", image_dim=5, text_dim=3, hidden=[])
    assert loss.decoder_image[0].in_features == 64 and loss.decoder_image[0].out_features == 5
    image_info = DatasetInfo(name="img", image_shape=(1, 4, 4), text_kind="vector", text_dim=9)
    loss = DCCAELoss(embed_dim=6, hidden=[], dataset_info=image_info)
    assert loss.input_dims == (16, 9) and loss.decoder_text[0].in_features == 6
    # a prepared [B, 1, 4, 4] image batch is flattened before comparing
    loss(torch.randn(10, 6), torch.randn(10, 6), images=torch.rand(10, 1, 4, 4), texts=torch.rand(10, 9))
    with pytest.raises(ValueError, match="their sizes"):
        DCCAELoss(dataset_info=DatasetInfo(name="captions", image_shape=(3, 8, 8)))
    with pytest.raises(ValueError, match="lambda_recon"):
        DCCAELoss(lambda_recon=-1, dataset_info=INFO)
    with pytest.raises(ValueError, match="activation"):
        DCCAELoss(activation="swish", dataset_info=INFO)
    with pytest.raises(ValueError, match="text decoder outputs 7"):
        h1, h2, x, _ = batch()
        DCCAELoss(embed_dim=4, dataset_info=INFO)(h1, h2, images=x, texts=torch.rand(40, 5))


def test_identity_encoder_passes_vector_views_through():
    info = DatasetInfo(name="v", image_shape=(6,), text_kind="vector", text_dim=3)
    enc = default_registry().get("encoder", "identity").build(
        {}, {"dataset_info": info, "modality": "text", "embed_dim": 64})  # as the runner builds it
    assert enc.output_dim == 3 and not enc.trainable and list(enc.parameters()) == []
    raw = np.arange(6, dtype=np.float64).reshape(2, 3)
    out = enc(enc.prepare(raw))
    assert out.dtype == torch.float32 and torch.equal(out, torch.tensor(raw, dtype=torch.float32))
    assert Identity(dataset_info=info, modality="image").output_dim == 6
    with pytest.raises(ValueError, match="feature vectors"):
        Identity(dataset_info=DatasetInfo(name="c", image_shape=(3, 8, 8)), modality="text")


def test_dccae_and_linear_cca_run_on_tiny_noisy_digits(tmp_path):
    mlp = {"name": "mlp", "hidden": [32]}
    config = {
        "name": "tiny-digits",
        "dataset": {"name": "noisy-digits", "size": 8, "border": 1, "seed": 0},
        "seeds": [0],
        "defaults": {"encoders": {"image": mlp, "text": mlp}, "embed_dim": 4,
                     "train": {"epochs": 3, "batch_size": 256, "optimizer": "adam", "device": "cpu"}},
        "methods": [
            {"name": "dccae", "loss": {"name": "dccae", "lambda_recon": 0.01, "hidden": [32]}},
            {"name": "dccae-lbfgs", "loss": {"name": "dccae", "hidden": [16]},
             "train": {"optimizer": "lbfgs", "lr": 1.0, "epochs": 1, "lbfgs_max_iter": 5}},
            {"name": "linear-cca", "encoders": {"image": {"name": "identity"}, "text": {"name": "identity"}},
             "estimator": {"name": "linear-cca", "k": 4}},
        ],
        "evaluators": [{"name": "canonical-correlation", "k": 4}, {"name": "linear-probe", "cca_k": 4}],
        "report": {"metrics": ["canonical-correlation/total_corr", "linear-probe/error"]},
    }
    outcome = harness.run(config, out_dir=tmp_path, progress=False)
    assert [r.status for r in outcome.results] == ["ok"] * 3, [r.error for r in outcome.results]
    for r in outcome.results:
        assert 0 < r.metrics["canonical-correlation/total_corr"] <= 4
        assert 0 <= r.metrics["linear-probe/error"] < 0.9
    dccae = outcome.results[0]
    assert len(dccae.history) == 3 and all(np.isfinite(h["loss"]) for h in dccae.history)
    assert (tmp_path / "tiny-digits" / "table.md").exists()
