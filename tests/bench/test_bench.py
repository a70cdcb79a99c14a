"""The benchmark library: the comparison models hold vitkit's weights, the arithmetic of MFU
and FLOPs is right on known numbers, and a run produces well-formed rows. Nothing here is a
timing assertion."""

import pytest
import torch

import vitkit
from vitkit import bench
from vitkit.errors import ConfigError, VitkitError
from vitkit.models import forward_flops

TINY = dict(image_size=32, patch_size=8, in_chans=3, num_classes=10, width=64, depth=2, num_heads=4, mlp_dim=128)


def tiny(**overrides):
    torch.manual_seed(0)
    model = vitkit.create_model("custom", **{**TINY, **overrides}).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, std=0.1)
    return model


def test_transformers_copy_gives_vitkits_logits():
    pytest.importorskip("transformers")
    model = tiny()
    twin = bench.hf_twin(model).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (twin(pixel_values=x).logits - model(x)).abs().max() < 1e-5


def test_transformers_copy_refuses_variants_it_cannot_express():
    pytest.importorskip("transformers")
    with pytest.raises(VitkitError, match="cannot be written as a Hugging Face ViT"):
        bench.hf_twin(tiny(pool="gap"))


def test_twins_skip_timm_with_a_note_when_it_is_missing():
    pytest.importorskip("transformers")
    entries, diffs, notes = bench.twins(tiny(), ("hf", "timm"))
    assert diffs["transformers"] < 1e-5
    try:
        import timm  # noqa: F401
    except ImportError:
        assert [e.impl for e in entries] == ["transformers"]
        assert notes == ["timm is not installed: no timm comparison"]


def test_mfu_is_model_flops_per_second_over_the_ceiling():
    assert bench.model_flop_utilisation(30e9, 40e9) == pytest.approx(0.75)
    assert bench.model_flop_utilisation(1.0, 0.0) == 0.0
    assert bench.training_flops(10) == 30


def test_result_arithmetic_on_known_numbers():
    # 8 images in 0.5 s at 9.2 GFLOPs each on a 200 GFLOP/s device: 16 img/s, 147.2 GFLOP/s, 73.6%.
    r = bench._result("vitkit", "inference", "m", 8, "fp32", torch.device("cpu"), False,
                      [0.4, 0.5, 0.6], 0.5, 0.0, int(9.2e9), 200e9)
    assert r.images_per_s == pytest.approx(16.0)
    assert r.latency_ms == pytest.approx(500.0)
    assert r.model_flops_per_s == pytest.approx(147.2e9)
    assert r.mfu == pytest.approx(0.736)


def test_vit_s16_forward_flops_are_the_known_4_6_gmacs():
    assert forward_flops(vitkit.models.preset_config("vit_s16")) / 1e9 == pytest.approx(9.2, abs=0.05)


def test_ceiling_is_positive_and_uses_the_requested_size():
    assert bench.matmul_ceiling("cpu", torch.float32, size=64, repeats=1) > 0


def test_measure_interleaves_and_returns_one_result_per_entry():
    a, b = tiny(), tiny()
    results = bench.measure([bench.Entry("vitkit", a), bench.Entry("other", b)], "inference", 2,
                            image_size=(32, 32), warmup=1, repeats=2, flops_per_image=100, ceiling=1e9)
    assert [r.impl for r in results] == ["vitkit", "other"]
    assert all(len(r.repeats) == 2 and r.images_per_s > 0 for r in results)


def test_measure_training_updates_the_weights():
    model = tiny()
    before = model.blocks[0].mlp.fc1.weight.detach().clone()
    r = bench.measure_training(model, 2, image_size=(32, 32), num_classes=10, warmup=1, repeats=1,
                               flops_per_image=100, ceiling=1e9)
    assert r.task == "training" and r.mfu > 0
    assert not torch.equal(before, model.blocks[0].mlp.fc1.weight)


def test_fp16_is_refused_on_the_cpu():
    with pytest.raises(ConfigError, match="GPU"):
        bench.check_precision("fp16", torch.device("cpu"))


def test_bench_cli_prints_a_table_with_ratios(capsys):
    pytest.importorskip("transformers")
    from vitkit.cli.main import main

    code = main(["bench", "--model", "vit_ti16", "--image-size", "32", "--batch", "2", "--warmup", "1",
                 "--repeats", "1", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| transformers | inference | fp32 | 2 |" in out and "x |" in out


def test_bench_cli_json(capsys):
    import json

    from vitkit.cli.main import main

    code = main(["bench", "--model", "vit_ti16", "--image-size", "32", "--batch", "1", "--warmup", "1",
                 "--repeats", "1", "--compare", "none", "--task", "training", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [r["task"] for r in report["rows"]] == ["training"]
    assert report["machine"]["torch"] == torch.__version__
