"""Muon: the orthogonalisation, agreement with torch's own Muon and AdamW, and which parameters
it takes. Exact resumption: tests/train/test_train.py (and every resume test of a small set,
where Muon is the default)."""

import pytest
import torch

import vitkit
from vitkit.errors import ConfigError
from vitkit.train import TrainConfig
from vitkit.train.optim import Muon, build_optimizer, orthogonalize

TINY = dict(width=16, depth=2, num_heads=2, mlp_dim=32)


@pytest.mark.parametrize("shape", [(3, 48, 16), (2, 16, 32), (1, 24, 24)])
def test_orthogonalize_keeps_the_singular_vectors_and_brings_every_singular_value_near_one(shape):
    torch.manual_seed(0)
    matrices = torch.randn(shape, dtype=torch.float64) * 5.0
    result = orthogonalize(matrices).double()
    for original, ortho in zip(matrices, result):
        u, s, vh = torch.linalg.svd(original, full_matrices=False)
        # In the input's singular bases the result is diagonal: same singular vectors...
        core = u.mT @ ortho @ vh.mT
        off = core - torch.diag_embed(torch.diagonal(core))
        assert off.abs().max() < 1e-4 * core.abs().max()
        # ... and its singular values lie in the band the quintic is tuned for, whatever the input's.
        values = torch.diagonal(core)
        assert values.min() > 0.6 and values.max() < 1.25, values
        assert s.max() / s.min() > 2  # the input's were far from equal


def test_muon_steps_agree_with_torchs_muon():
    # torch.optim.Muon runs the same iteration in bfloat16; the two agree to its rounding.
    torch.manual_seed(1)
    ours = [torch.nn.Parameter(torch.randn(48, 16)) for _ in range(2)] + [torch.nn.Parameter(torch.randn(16, 32))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    lr, steps = 0.01, 4
    mine = Muon([{"params": ours, "muon": True, "weight_decay": 0.1}], lr=lr)
    reference = torch.optim.Muon(theirs, lr=lr, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    start = [p.detach().clone() for p in ours]
    for _ in range(steps):
        grads = [torch.randn_like(p) for p in ours]
        for a, b, g in zip(ours, theirs, grads):
            a.grad, b.grad = g.clone(), g.clone()
        mine.step()
        reference.step()
    for a, b, p0 in zip(ours, theirs, start):
        moved = (a.detach() - p0).abs().max()
        assert moved > lr  # the tolerance below is a small share of a real movement
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0.02 * moved.item())


def test_the_adamw_groups_of_muon_step_exactly_as_torchs_adamw():
    torch.manual_seed(2)
    ours = [torch.nn.Parameter(torch.randn(5, 7)), torch.nn.Parameter(torch.randn(7))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    mine = Muon([{"params": ours[:1], "weight_decay": 0.1}, {"params": ours[1:], "weight_decay": 0.0}],
                lr=3e-3, betas=(0.9, 0.95))
    reference = torch.optim.AdamW([{"params": theirs[:1], "weight_decay": 0.1},
                                   {"params": theirs[1:], "weight_decay": 0.0}],
                                  lr=3e-3, betas=(0.9, 0.95), fused=True)
    for _ in range(5):
        for a, b in zip(ours, theirs):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        mine.step()
        reference.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("posemb", ["learned1d", "relative"])
def test_muon_takes_the_blocks_linear_weights_and_adamw_the_rest_with_the_decay_exemptions(posemb):
    # With relative positions the blocks also hold 2-D tables (embeddings): those stay with AdamW.
    model = vitkit.create_model("vit_ti16", image_size=16, patch_size=4, in_chans=1, num_classes=10,
                                posemb=posemb, **TINY)
    optimizer = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.1)
    assert isinstance(optimizer, Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [(g["muon"], g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
              for g in optimizer.param_groups]
    muon = [n for is_muon, _, ns in groups if is_muon for n in ns]
    assert muon == sorted(f"blocks.{i}.{layer}.weight" for i in range(2)
                          for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    assert all(decay == 0.1 for is_muon, decay, _ in groups if is_muon)
    exempt = model.no_weight_decay()
    for is_muon, decay, ns in groups:
        if not is_muon:
            assert all((n in exempt) == (decay == 0.0) for n in ns)
    everything = sorted(n for _, _, ns in groups for n in ns)
    assert everything == sorted(names.values())
    assert (posemb == "relative") == any("relative" in n for n in everything)


def test_muon_with_fsdp_is_refused_with_the_way_out(tmp_path):
    with pytest.raises(ConfigError, match="--optimizer muon.*--fsdp"):
        TrainConfig(data="digits", out=str(tmp_path / "run"), optimizer="muon", fsdp=True)
