"""The page in a real browser: headless Chromium from the system's packages, driven by Playwright.

Needs `chromium` (Debian: `apt-get install chromium`; or VITKIT_CHROMIUM=/path/to/chromium) and
the `playwright` package (the test extra; Playwright's own browser download is never used).
Without them the tests skip, except in CI (CI set), where they must run.

VITKIT_EXPLORE_SCREENSHOTS=DIR keeps the screenshots of test_screenshots in DIR (docs/images
for docs/explore.md), of the model in VITKIT_EXPLORE_CHECKPOINT with the samples of
VITKIT_EXPLORE_DATA when those are set (default: a tiny random model).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.data.dataset import ImageSet
from vitkit.explore import Explorer

from .conftest import make_model, serving, write_png

CHROMIUM = os.environ.get("VITKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# The machine's network may be closed: nothing that phones home, no first-run work.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
HOW_TO_RUN = ("install Chromium (Debian: `apt-get install chromium`, or set VITKIT_CHROMIUM to its binary) "
              "and Playwright for Python (`pip install -e '.[test]'`); CI runs them")


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM}"
    return None


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = _missing()
    if missing and _in_ci():
        pytest.fail(f"browser tests must run in CI but {missing}: {HOW_TO_RUN}")
    if missing:
        pytest.skip(f"browser tests skipped: {missing}; to run them, {HOW_TO_RUN}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000})
        try:
            yield context
        finally:
            context.close()


class Page:
    """A tab on the served page that records console errors and uncaught exceptions."""

    def __init__(self, context, address: str):
        self.tab = context.new_page()
        self.errors: list[str] = []
        self.tab.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        self.tab.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.tab.goto(address)
        self.expect(self.tab.locator("#model-summary")).to_contain_text("layers")

    @staticmethod
    def expect(locator):
        from playwright.sync_api import expect

        return expect(locator)

    def caption(self, *fragments: str) -> None:
        for fragment in fragments:
            self.expect(self.tab.locator("#view-caption")).to_contain_text(fragment)

    def upload(self, path: Path) -> None:
        self.tab.set_input_files("#file-input", str(path))
        self.expect(self.tab.locator("#predictions li").first).to_be_visible()

    def overlay(self) -> dict:
        """The overlay canvas: its size, how many pixels are drawn, and the colours."""
        return self.tab.evaluate("""() => {
            const c = document.getElementById('overlay');
            const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let drawn = 0, checksum = 0;
            const colours = new Set();
            for (let i = 0; i < data.length; i += 4) {
                if (data[i + 3] > 0) drawn += 1;
                colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
                checksum = (checksum * 31 + data[i] + 7 * data[i + 1] + 13 * data[i + 2] + 17 * data[i + 3]) % 1000000007;
            }
            return {width: c.width, height: c.height, drawn, colours: colours.size, checksum};
        }""")

    def cell_colours(self, rows: int, cols: int) -> list[list[list[int]]]:
        """RGBA at the centre of each patch cell of the overlay."""
        return self.tab.evaluate("""([rows, cols]) => {
            const c = document.getElementById('overlay');
            const ctx = c.getContext('2d');
            const out = [];
            for (let r = 0; r < rows; r += 1) {
                const row = [];
                for (let k = 0; k < cols; k += 1) {
                    const x = Math.floor((k + 0.5) * c.width / cols), y = Math.floor((r + 0.5) * c.height / rows);
                    row.push(Array.from(ctx.getImageData(x, y, 1, 1).data));
                }
                out.push(row);
            }
            return out;
        }""", [rows, cols])

    def click_patch(self, row: int, col: int, rows: int, cols: int) -> None:
        box = self.tab.locator("#overlay").bounding_box()
        self.tab.mouse.click(box["x"] + (col + 0.5) * box["width"] / cols, box["y"] + (row + 0.5) * box["height"] / rows)


def _expected_colours(values: torch.Tensor, colormap: list) -> list[list[list[int]]]:
    """What drawHeat paints at a cell: the colour map at the value over the maximum."""
    top = float(values.max())
    return [[colormap[round(255 * max(0.0, float(v)) / top)] for v in row] for row in values]


def _assert_cells_match(cells, expected, alpha: float) -> None:
    for got_row, want_row in zip(cells, expected):
        for (r, g, b, a), want in zip(got_row, want_row):
            assert abs(a - round(255 * alpha)) <= 1
            assert max(abs(r - want[0]), abs(g - want[1]), abs(b - want[2])) <= 3, ((r, g, b), want)


@pytest.fixture
def served(tmp_path):
    """A served class-token model with three samples of the data it offers."""
    model = make_model("token", seed=4)
    samples = ImageSet(torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)),
                       torch.tensor([1, 0, 4]))
    explorer = Explorer(model, name="tiny.safetensors", samples=samples, sample_source="toy (test split)",
                        sample_classes=list(model.config.class_names))
    with serving(explorer) as (server, client):
        yield server, client


def _page_and_png(browser, served, tmp_path, size, seed):
    """A tab on the served page, a PNG of `size` written under tmp_path, and the API's answer for it."""
    server, client = served
    image = tmp_path / f"photo-{seed}.png"
    answer = client.predict(write_png(image, size=size, seed=seed)).json()
    return Page(browser, server.address), client, image, answer


def test_the_page_loads_without_errors_with_the_checkpoint_panels_and_a_sample(browser, served):
    server, client = served
    page = Page(browser, server.address)
    page.expect(page.tab.locator("#true-label")).to_contain_text("True label: bee (sample 0)")
    expected = client.get("/api/sample/0").json()["predictions"]
    page.expect(page.tab.locator("#predictions .name")).to_have_text([p["label"] for p in expected])
    assert page.tab.locator("#filters figure").count() == 28
    page.expect(page.tab.locator("#posemb")).to_be_visible()
    page.expect(page.tab.locator("#posemb-note")).to_contain_text("cosine similarity")
    assert page.overlay()["drawn"] > 0
    assert page.errors == []


def test_uploading_a_png_shows_the_class_names_and_draws_the_rollout(browser, served, tmp_path):
    page, client, image, answer = _page_and_png(browser, served, tmp_path, size=(30, 40), seed=7)
    page.upload(image)
    page.expect(page.tab.locator("#predictions .name")).to_have_text([p["label"] for p in answer["predictions"]])
    page.expect(page.tab.locator("#true-label")).to_be_hidden()
    overlay = page.overlay()
    assert overlay["drawn"] == overlay["width"] * overlay["height"]  # 16 / 4: the grid covers the image
    assert overlay["colours"] > 10
    page.tab.uncheck("#smooth")
    page.caption("Attention rollout from the class token")
    colormap = client.get("/api/model").json()["colormaps"]["inferno"]
    _assert_cells_match(page.cell_colours(4, 4), _expected_colours(torch.tensor(answer["rollout"]), colormap), 0.6)
    page.tab.focus("#opacity")
    page.tab.keyboard.press("End")  # opacity 1
    _assert_cells_match(page.cell_colours(4, 4), _expected_colours(torch.tensor(answer["rollout"]), colormap), 1.0)
    page.tab.keyboard.press("Home")  # opacity 0: the image alone
    assert page.overlay()["drawn"] == 0
    assert page.errors == []


def test_an_image_dragged_onto_the_page_is_run(browser, served, tmp_path):
    page, _, image, answer = _page_and_png(browser, served, tmp_path, size=(20, 20), seed=9)
    transfer = page.tab.evaluate_handle("""(bytes) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], 'dragged.png', {type: 'image/png'}));
        return transfer;
    }""", list(image.read_bytes()))
    page.tab.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    page.expect(page.tab.locator("#true-label")).to_be_hidden()  # an upload, not the sample shown first
    page.expect(page.tab.locator("#predictions .name")).to_have_text([p["label"] for p in answer["predictions"]])
    assert page.errors == []


def test_clicking_a_patch_shows_where_it_attends_and_layer_and_head_redraw(browser, served, tmp_path):
    page, client, image, answer = _page_and_png(browser, served, tmp_path, size=(16, 16), seed=8)
    page.upload(image)
    page.tab.uncheck("#smooth")
    rollout = page.overlay()

    page.click_patch(1, 2, 4, 4)
    page.caption("Where patch (row 2, column 3) attends in layer 2, mean over heads")
    clicked = page.overlay()
    assert clicked["checksum"] != rollout["checksum"]
    token = 1 + 1 * 4 + 2  # after the class token, raster order
    weights = torch.tensor(client.get(f"/api/attention/{answer['id']}?token={token}").json()["patches"])
    colormap = client.get("/api/model").json()["colormaps"]["inferno"]
    # The clicked cell's outline runs along its edges, not through the centres read here.
    _assert_cells_match(page.cell_colours(4, 4), _expected_colours(weights[1].mean(dim=0), colormap), 0.6)

    page.tab.focus("#layer")
    page.tab.keyboard.press("ArrowLeft")  # layer 2 -> 1, as a user moves the slider
    page.caption("in layer 1, mean over heads")
    layer_one = page.overlay()
    assert layer_one["checksum"] != clicked["checksum"]
    _assert_cells_match(page.cell_colours(4, 4)[:1], _expected_colours(weights[0].mean(dim=0), colormap)[:1], 0.6)

    page.tab.select_option("#head", "1")
    page.caption("in layer 1, head 2")
    head_two = page.overlay()
    assert head_two["checksum"] != layer_one["checksum"]
    _assert_cells_match(page.cell_colours(4, 4)[3:], _expected_colours(weights[0, 1], colormap)[3:], 0.6)

    page.tab.select_option("#query-token", "0")
    page.caption("Where the class token attends in layer 1, head 2")
    page.tab.click("#play")
    page.caption("in layer 2, head 2")  # stepped through to the last layer
    assert page.errors == []


def test_a_distilled_non_square_model_with_relative_posemb(browser, tmp_path):
    model = make_model("distill", image_size=(12, 20), posemb="relative")
    with serving(Explorer(model)) as (server, client):
        page = Page(browser, server.address)
        page.expect(page.tab.locator("#posemb-note")).to_contain_text("Nothing to show: posemb='relative'")
        page.expect(page.tab.locator("#rollout-query option")).to_have_text(["class token", "distillation token"])
        image = tmp_path / "wide.png"
        write_png(image, size=(30, 50), seed=3)
        page.upload(image)
        overlay = page.overlay()
        assert (overlay["width"], overlay["height"]) == (448, round(448 * 12 / 20))
        page.tab.select_option("#rollout-query", "distillation token")
        page.caption("Attention rollout from the distillation token")
        assert page.overlay()["checksum"] != overlay["checksum"]
        assert page.errors == []


def test_screenshots(browser, tmp_path):
    """The pictures of docs/explore.md (see the module docstring for how to keep them)."""
    out = Path(os.environ.get("VITKIT_EXPLORE_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = os.environ.get("VITKIT_EXPLORE_CHECKPOINT")
    model = vitkit.load(checkpoint) if checkpoint else make_model("token", seed=4)
    samples = classes = source = None
    if os.environ.get("VITKIT_EXPLORE_DATA"):
        from vitkit.data import load_data

        splits = load_data(os.environ["VITKIT_EXPLORE_DATA"], quiet=True)
        samples, classes, source = splits.test, splits.class_names, f"{os.environ['VITKIT_EXPLORE_DATA']} (test split)"
    name = Path(checkpoint).name if checkpoint else "tiny.safetensors"
    with serving(Explorer(model, name=name, samples=samples, sample_classes=classes, sample_source=source)) \
            as (server, client):
        page = Page(browser, server.address)
        if samples is None:
            image = tmp_path / "photo.png"
            write_png(image, size=(32, 32), seed=7)
            page.upload(image)
        else:
            page.tab.fill("#sample-index", "3")
            page.tab.press("#sample-index", "Enter")
            page.expect(page.tab.locator("#true-label")).to_contain_text("(sample 3)")
        page.caption("Attention rollout")
        page.tab.screenshot(path=str(out / "explore_rollout.png"), full_page=True)
        rows, cols = model.config.grid_size
        page.click_patch(rows // 2, cols // 2, rows, cols)
        page.tab.focus("#layer")
        page.tab.keyboard.press("ArrowLeft")
        page.caption("Where patch", f"layer {model.config.depth - 1}")
        page.tab.locator("#view-panel").screenshot(path=str(out / "explore_attention.png"))
        assert page.errors == []
    for name in ("explore_rollout.png", "explore_attention.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
