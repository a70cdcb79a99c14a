"""Masked autoencoder: patch layout, the visible-token encoder, and learning a toy whose hidden
patches can be decoded from the visible ones."""

import torch

import vitkit
from vitkit.objectives.base import Draws
from vitkit.objectives.mae import MaskedAutoencoder, patchify, random_keep, unpatchify


def test_patchify_is_raster_order_and_unpatchify_inverts_it():
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    patches = patchify(images, 2)
    assert patches.shape == (2, 6, 12)
    torch.testing.assert_close(patches[0, 1], images[0, :, 0:2, 2:4].permute(1, 2, 0).reshape(-1))
    torch.testing.assert_close(unpatchify(patches, 2, (2, 3), 3), images)


def test_the_encoder_sees_only_the_visible_tokens():
    torch.manual_seed(0)
    model = vitkit.create_model("custom", image_size=8, patch_size=2, in_chans=1, num_classes=0, width=16,
                                depth=1, num_heads=2, mlp_dim=16)
    keep, hidden = random_keep(3, 16, 0.75, "cpu")
    assert keep.shape == (3, 4) and int(hidden.sum()) == 3 * 12
    out = model.forward_intermediates(torch.randn(3, 1, 8, 8), keep=keep)
    assert out["encoder"].shape == (3, 1 + 4, 16)


def test_mae_learns_to_reconstruct_an_identity_decodable_toy():
    """Every image is one random grey level times a fixed pattern: any visible patch gives the
    level, the position gives the pattern, so the hidden patches are fully decodable."""
    torch.manual_seed(0)
    model = vitkit.create_model("custom", image_size=8, patch_size=2, in_chans=1, num_classes=0, width=32,
                                depth=1, num_heads=2, mlp_dim=64)
    mae = MaskedAutoencoder(model, decoder_width=32, decoder_depth=1, mask_ratio=0.5, norm_pix=False)
    pattern = torch.rand(1, 1, 8, 8)
    params = list(model.parameters()) + list(mae.parameters())
    optimizer = torch.optim.Adam(params, lr=5e-3)

    def batch(n):
        return torch.rand(n, 1, 1, 1) * pattern

    test = batch(64)  # pixels in [0, 1], which the model's default normalisation maps to [-1, 1]
    baseline = float(((test * 2 - 1 - (test * 2 - 1).mean(0)) ** 2).mean())  # the best input-independent guess
    for step in range(200):
        loss = mae(model, batch(32), None, Draws(0, (step,), range(32), "cpu"))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = float(mae(model, test, None, Draws(0, (-1,), range(64), "cpu"))["loss"])
    assert final < 0.1 * baseline, (final, baseline)  # ten times better than any guess blind to the input
