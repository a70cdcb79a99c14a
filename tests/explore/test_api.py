"""The JSON API over HTTP: what a script gets back, for every model variant, and bad uploads."""

from __future__ import annotations

import itertools
import json
import math
import threading

import pytest
import torch

import vitkit
from vitkit.analysis import attention_rollout, pooled_patch_weights, rollout_maps, rollout_queries, rollout_rows
from vitkit.cli.main import main as vitkit_main
from vitkit.data import read_images
from vitkit.data.dataset import ImageSet
from vitkit.evaluate.preprocess import prepare_images
from vitkit.explore import Explorer

from .conftest import VARIANTS, Client, make_model, multipart, serving, wait_until, write_png


def _oracle(model, path):
    """The model's own intermediates for a file read as `vitkit predict` reads it."""
    cfg = model.config
    x = prepare_images(read_images([path], cfg.image_size, cfg.in_chans), cfg)
    with torch.no_grad():
        return model.forward_intermediates(x, attention=True)


# The second: a released model's preprocessing (resize to image_size / crop_pct, centre crop).
@pytest.mark.parametrize("release", [{}, dict(interpolation="bicubic", crop_pct=0.875, crop_mode="center")])
def test_predictions_equal_vitkit_predict_on_the_same_file(tmp_path, capsys, release):
    model = make_model("token", **release)
    checkpoint = tmp_path / "tiny.safetensors"
    vitkit.save(model, checkpoint)
    image = tmp_path / "photo.png"
    content = write_png(image, size=(40, 27), seed=3)
    assert vitkit_main(["predict", str(checkpoint), str(image), "--json", "--topk", "5"]) == 0
    expected = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
    with serving(Explorer(vitkit.load(checkpoint))) as (_, client):
        reply = client.predict(content, "photo.png")
    assert reply.status == 200, reply.body
    got = reply.json()["predictions"]
    # Explore keeps the attention weights, predict takes the fused path: the probabilities agree to
    # ~1e-6, and the classes are apart by far more, so the order is the same on any CPU.
    probabilities = [p["prob"] for p in expected]
    assert min(a - b for a, b in itertools.pairwise(probabilities)) > 1e-4
    assert [p["label"] for p in got] == [p["class"] for p in expected]
    assert [p["index"] for p in got] == [p["index"] for p in expected]
    for mine, theirs in zip(got, expected):
        assert mine["probability"] == pytest.approx(theirs["prob"], abs=1e-5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_answers_with_its_grid_rollouts_and_attention(variant, tmp_path):
    model = make_model(variant, seed=1)
    cfg = model.config
    image = tmp_path / "image.png"
    content = write_png(image, seed=2)
    out = _oracle(model, image)
    n = cfg.num_prefix_tokens
    with serving(Explorer(model, name=variant)) as (_, client):
        summary = client.get("/api/model").json()
        answer = client.predict(content).json()
        token = n + 3  # the fourth patch
        attention = client.get(f"/api/attention/{answer['id']}?token={token}").json()

    grid = list(cfg.grid_size)
    assert answer["grid"] == summary["grid"] == grid == list(out["grid"])
    assert torch.tensor(answer["rollout"]).shape == tuple(grid)
    assert summary["rollout_queries"] == rollout_queries(cfg) == list(answer["rollouts"])
    assert answer["rollout_query"] == ("class token" if cfg.pool == "token" else "pooled patches")
    weights = pooled_patch_weights(model, out)
    expected = rollout_maps(out["attention"], n, out["grid"], cfg.pool, weights)[0]
    assert torch.allclose(torch.tensor(answer["rollout"]), expected, atol=1e-6)
    rollout = attention_rollout(out["attention"])
    for query, values in answer["rollouts"].items():
        expected = rollout_rows(rollout, n, out["grid"], query, weights)[0]
        assert torch.allclose(torch.tensor(values), expected, atol=1e-6), query
    if cfg.distill_token:
        assert "distillation token" in answer["rollouts"]

    # Where the fourth patch attends: that row of each layer's weights, split at the prefix.
    stacked = torch.stack([a[0, :, token] for a in out["attention"]])  # (layers, heads, T)
    got_patches = torch.tensor(attention["patches"])
    assert got_patches.shape == (cfg.depth, cfg.num_heads, *grid)
    assert torch.allclose(got_patches.flatten(2), stacked[..., n:], atol=1e-6)
    assert torch.tensor(attention["prefix"]).reshape(cfg.depth, cfg.num_heads, n).allclose(stacked[..., :n], atol=1e-6)
    assert torch.allclose(got_patches.sum(dim=(2, 3)) + stacked[..., :n].sum(-1), torch.ones(cfg.depth, cfg.num_heads),
                          atol=1e-5)

    probabilities = out["logits"].softmax(-1)[0]
    top = [p["probability"] for p in answer["predictions"]]
    assert top == sorted(top, reverse=True) and len(top) == 5
    assert top == pytest.approx(probabilities.sort(descending=True).values.tolist(), abs=1e-5)
    distances = torch.tensor(answer["attention_distance"])
    assert distances.shape == (cfg.depth, cfg.num_heads)
    assert bool(((distances >= 0) & (distances <= summary["max_distance"])).all())
    assert answer["layers"] == cfg.depth and answer["heads"] == cfg.num_heads
    assert answer["image"].startswith("data:image/png;base64,")
    assert answer["image_size"] == list(cfg.image_size)


@pytest.mark.parametrize("variant, missing, why", [
    ("relative", "posemb", "adds no position embedding"),
    ("no_posemb", "posemb", "adds no position embedding"),
    ("hybrid", "filters", "hybrid"),
])
def test_a_panel_that_does_not_apply_is_empty_with_the_reason(variant, missing, why):
    explorer = Explorer(make_model(variant))
    try:
        summary = explorer.summary
    finally:
        explorer.close()
    key = {"posemb": "posemb_similarity", "filters": "filters"}[missing]
    assert summary[key] is None
    assert why in summary[f"{missing}_note"]
    other = "filters" if missing == "posemb" else "posemb_similarity"
    assert summary[other] is not None


def test_checkpoint_panels_hold_what_the_analysis_functions_compute():
    from vitkit.analysis import filters_for_display, patch_embedding_components, patch_position_embeddings, \
        position_similarity

    model = make_model("token")
    explorer = Explorer(model)
    explorer.close()
    summary = explorer.summary
    similarity = position_similarity(patch_position_embeddings(model)[0])
    assert torch.allclose(torch.tensor(summary["posemb_similarity"]["similarity"]), similarity, atol=1e-4)
    assert torch.allclose(torch.tensor(summary["posemb_similarity"]["similarity"]).diagonal(), torch.ones(16), atol=1e-4)
    components, explained = patch_embedding_components(model)
    assert torch.allclose(torch.tensor(summary["filters"]["images"]), filters_for_display(components), atol=1e-4)
    assert summary["filters"]["explained_variance_ratio"] == pytest.approx(explained.tolist(), abs=1e-6)
    assert summary["max_distance"] == pytest.approx(16 * math.sqrt(2))
    assert summary["prefix_tokens"] == ["class token"]
    assert len(summary["colormaps"]["inferno"]) == 256


def test_a_model_without_attention_layers_is_refused():
    model = vitkit.create_model("custom", image_size=32, in_chans=3, num_classes=3, width=16, depth=0, num_heads=2,
                                mlp_dim=32, stem="resnet", patch_size=1, resnet_layers=(1,), pool="gap")
    with pytest.raises(vitkit.errors.ConfigError, match="no attention layers"):
        Explorer(model)


def test_bad_limits_are_refused_when_the_explorer_is_made():
    with pytest.raises(vitkit.errors.ConfigValueError, match="max_upload_bytes must be positive, got 0"):
        Explorer(make_model("token"), max_upload_bytes=0)
    with pytest.raises(vitkit.errors.ConfigError, match="max_image_pixels must be a number of pixels"):
        Explorer(make_model("token"), max_image_pixels=-1)


def test_samples_of_the_data_come_with_their_true_labels():
    model = make_model("token")
    images = torch.randint(0, 256, (3, 1, 10, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    samples = ImageSet(images, torch.tensor([2, 0, 1]))
    with serving(Explorer(model, samples=samples, sample_classes=["zero", "one", "two"], sample_source="toy")) \
            as (_, client):
        summary = client.get("/api/model").json()
        answer = client.get("/api/sample/2").json()
        missing = client.get("/api/sample/3")
    assert summary["samples"] == {"count": 3, "source": "toy", "classes": ["zero", "one", "two"]}
    assert answer["sample"] == {"index": 2, "label": "one", "label_index": 1}
    assert torch.tensor(answer["rollout"]).shape == (4, 4)
    assert missing.status == 404 and "there are 3" in missing.json()["error"]


def test_topk_asks_for_more_or_fewer_classes(token_server):
    _, client = token_server
    assert len(client.predict(write_png_bytes(), query="?topk=2").json()["predictions"]) == 2
    assert len(client.predict(write_png_bytes(), query="?topk=9").json()["predictions"]) == 5  # 5 classes
    bad = client.predict(write_png_bytes(), query="?topk=0")
    assert bad.status == 400 and "topk" in bad.json()["error"]


def write_png_bytes(size=(20, 20), seed=0, mode="RGB") -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    pixels = torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    Image.fromarray(pixels.numpy(), "RGB").convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _solid_png(height: int, width: int) -> bytes:
    """A PNG of one colour: many pixels in few bytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bad_requests(client: Client, big_limit: int):
    """(what, reply) for each kind of bad request."""
    png = write_png_bytes()
    yield "not an image", client.predict(b"%PDF-1.4 this is not an image" * 10, "notes.pdf"), 422, "not a readable image"
    yield "truncated PNG", client.predict(png[: len(png) // 2]), 422, "not a usable image"
    yield "empty file", client.predict(b""), 422, "empty"
    yield "too many pixels", client.predict(_solid_png(300, 300)), 422, "over the limit of"
    too_large = png + b"\0" * big_limit
    yield "too large", client.predict(too_large), 413, "over the limit of"
    body, content_type = multipart({"photo": ("a.png", png)})
    yield "no image field", client.request("POST", "/api/predict", body, {"Content-Type": content_type}), 400, \
        "no field 'image'"
    yield "raw body", client.request("POST", "/api/predict", png, {"Content-Type": "image/png"}), 400, \
        "multipart/form-data"
    body, content_type = multipart({"image": ("a.png", png)})
    yield "cut short", client.request("POST", "/api/predict", body[:-10], {"Content-Type": content_type}), 400, \
        "no closing boundary"
    yield "unknown path", client.get("/etc/passwd"), 404, "nothing at"
    yield "dot-dot path", client.get("/../vitkit/explore/server.py"), 404, "nothing at"
    yield "post elsewhere", client.request("POST", "/api/model", b"x", {"Content-Type": "text/plain"}), 405, \
        "POST /api/predict"
    yield "unknown image id", client.get("/api/attention/0123456789abcdef?token=1"), 404, "send the image again"
    yield "foreign host", client.get("/api/model", headers={"Host": "evil.example:80"}), 403, "localhost"


def test_each_bad_request_gets_its_4xx_and_the_next_good_request_works():
    limit = 64 * 1024
    explorer = Explorer(make_model("token"), max_upload_bytes=limit, max_image_pixels=250 * 250)
    good = write_png_bytes(seed=5)
    with serving(explorer) as (_, client):
        first = client.predict(good).json()
        for what, reply, status, message in _bad_requests(client, limit):
            assert reply.status == status, (what, reply.status, reply.body)
            assert reply.headers["content-type"] == "application/json", what
            assert message in reply.json()["error"], (what, reply.json())
            after = client.predict(good)
            assert after.status == 200, (what, after.body)
            assert after.json()["predictions"] == first["predictions"], what
        token = client.get(f"/api/attention/{first['id']}?token=99")
        assert token.status == 400 and "outside the sequence of 17 tokens" in token.json()["error"]


def test_an_oversized_upload_is_refused_before_its_body_is_sent():
    import http.client

    from urllib.parse import urlsplit

    explorer = Explorer(make_model("token"), max_upload_bytes=4000)
    with serving(explorer) as (server, client):
        url = urlsplit(server.address)
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        connection.putrequest("POST", "/api/predict")
        connection.putheader("Content-Type", "multipart/form-data; boundary=x")
        connection.putheader("Content-Length", str(10**9))
        connection.putheader("Expect", "100-continue")
        connection.endheaders()
        response = connection.getresponse()  # no body was sent: the answer came first
        assert response.status == 413
        assert "over the limit of 4000 bytes" in json.loads(response.read())["error"]
        connection.close()
        assert client.predict(write_png_bytes()).status == 200


def test_the_page_and_its_files_are_served_with_a_strict_content_policy(token_server):
    _, client = token_server
    page = client.get("/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b'<script src="/explore.js"' in page.body
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/explore.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/explore.css").status == 200
    for reference in (b"http://", b"https://"):
        for name in ("/", "/explore.js", "/explore.css"):
            assert reference not in client.get(name).body, name  # nothing from elsewhere


def test_requests_that_pile_up_share_a_forward_and_get_their_own_answers():
    model = make_model("gap")
    images = [write_png_bytes(seed=s) for s in range(6)]
    explorer = Explorer(model, max_batch=8)
    with serving(explorer) as (_, client):
        alone = [client.predict(content).json() for content in images]
        # Hold the first forward until the other five requests wait behind it.
        release, entered = threading.Event(), threading.Event()
        forward = model.forward_intermediates

        def held(*args, **kwargs):
            entered.set()
            release.wait(60)
            return forward(*args, **kwargs)

        model.forward_intermediates = held
        answers = [None] * len(images)

        def ask(i):
            answers[i] = client.predict(images[i]).json()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(images))]
        threads[0].start()
        assert entered.wait(60)
        for t in threads[1:]:
            t.start()
        wait_until(lambda: explorer.batcher.waiting == len(images) - 1)
        release.set()
        for t in threads:
            t.join(60)
    assert list(explorer.batcher.batch_sizes) == [1] * len(images) + [1, len(images) - 1]
    # A batch's floats differ from a lone forward's in the last bits, which can swap near-tied
    # classes: each class's probability is compared, whatever its rank (5 classes: all listed).
    def by_label(answer):
        return {p["label"]: p["probability"] for p in answer["predictions"]}

    for mine, reference in zip(answers, alone):
        assert by_label(mine) == pytest.approx(by_label(reference), abs=1e-5)
        assert torch.allclose(torch.tensor(mine["rollout"]), torch.tensor(reference["rollout"]), atol=1e-5)


def test_a_request_without_a_host_header_is_served(token_server):
    import http.client

    server, _ = token_server
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
    connection.putrequest("GET", "/api/model", skip_host=True)
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read())["grid"] == [4, 4]
    connection.close()


def test_the_printed_address_and_which_hosts_count_as_this_machine():
    from vitkit.explore.server import _is_loopback, page_address

    assert page_address("127.0.0.1", 8765) == "http://127.0.0.1:8765/"
    assert page_address("0.0.0.0", 80) == "http://127.0.0.1:80/"
    assert page_address("::1", 5) == "http://[::1]:5/"
    assert [_is_loopback(h) for h in ("127.0.0.1", "127.3.4.5", "::1", "localhost", "0.0.0.0", "192.168.1.2",
                                      "example.org")] == [True, True, True, True, False, False, False]


def test_an_upload_without_a_length_gets_411_and_the_server_goes_on(token_server):
    import http.client

    server, client = token_server
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
    connection.putrequest("POST", "/api/predict")
    connection.putheader("Content-Type", "multipart/form-data; boundary=x")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    connection.close()
    assert client.predict(write_png_bytes()).status == 200


def test_a_fault_in_the_model_is_a_500_printed_on_stderr_and_the_server_goes_on(capsys):
    def exploding(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    model = make_model("token")
    forward = model.forward_intermediates
    with serving(Explorer(model)) as (_, client):
        model.forward_intermediates = exploding
        broken = client.predict(write_png_bytes())
        model.forward_intermediates = forward
        after = client.predict(write_png_bytes())
    assert broken.status == 500
    assert broken.json() == {"error": "internal error: RuntimeError: kernel exploded"}
    assert "error serving POST /api/predict: RuntimeError: kernel exploded" in capsys.readouterr().err
    assert after.status == 200 and len(after.json()["predictions"]) == 5
