"""The attention renderers: PNG heatmaps checked as images, the HTML explorer opened in headless Chromium.

The maps are synthetic (random softmax weights, an LSH-like sparse map with random buckets), so these
tests do not depend on capturing attention from a model. The browser tests need Debian's ``chromium``
and PyPI's ``playwright`` (only its driver: the browser is the system one, never downloaded); they skip,
saying which is missing, where either cannot be found.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import time

import numpy as np
import pytest
import torch

from attnkit.inspect.html import explorer_data, write_html
from attnkit.inspect.maps import AttentionMap
from attnkit.inspect.png import write_png

PIL = pytest.importorskip("PIL.Image", reason="the PNG checks read images back with Pillow")

WORDS = ("The quick brown fox jumps over the lazy dog and then </script> runs & hides in the "
         "wood while it rains").split()


# ---------------------------------------------------------------------------------------------------
# synthetic maps


def dense_map(name, tokens, n_heads, kind="self", key_tokens=None, seed=0, heads=None) -> AttentionMap:
    g = torch.Generator().manual_seed(seed)
    keys = tokens if key_tokens is None else key_tokens
    scores = torch.randn(n_heads, len(tokens), len(keys), generator=g) * 2
    if kind == "causal":
        scores = scores.masked_fill(torch.ones(len(tokens), len(keys), dtype=torch.bool).triu(1), float("-inf"))
    return AttentionMap(name, kind, list(tokens), list(keys), heads or list(range(n_heads)), scores.softmax(-1),
                        causal=kind == "causal")


def lsh_map(name, T, n_heads, n_hashes, chunk, n_buckets, *, causal=False, across=False, seed=0) -> AttentionMap:
    """An LSH-like map: random buckets; per round, tokens sorted by (bucket, position) and cut into chunks
    of ``chunk``; query i meets key j in a round when j's chunk is i's or the one before, in the same
    bucket (unless ``across``), j < i if causal, j != i. Random positive weights on the pairs met in
    any round, rows normalized; a query that meets nobody attends to itself. No (T, T) matrix is built."""
    g = torch.Generator().manual_seed(seed)
    buckets = torch.randint(0, n_buckets, (n_heads, n_hashes, T), generator=g)
    ranks = (buckets * T + torch.arange(T)).argsort(-1).argsort(-1)
    chunks = ranks // chunk
    assert T % chunk == 0
    n = T // chunk
    pairs = []
    for h in range(n_heads):
        found = []
        for r in range(n_hashes):
            order = ranks[h, r].argsort().view(n, chunk)  # positions in sorted order, by chunk
            window = torch.cat([torch.cat([order.new_full((1, chunk), -1), order[:-1]]), order], 1)  # (n, 2C)
            qi, kj = order[:, :, None].expand(n, chunk, 2 * chunk), window[:, None, :].expand(n, chunk, 2 * chunk)
            ok = (kj >= 0) & (qi != kj)
            if causal:
                ok &= kj < qi
            if not across:
                b = buckets[h, r]
                ok &= b[qi] == b[kj.clamp_min(0)]
            found.append(qi[ok] * T + kj[ok])
        key = torch.cat(found).unique()
        lonely = torch.ones(T, dtype=torch.bool)
        lonely[key // T] = False
        key = torch.cat([key, torch.nonzero(lonely)[:, 0] * (T + 1)]).unique()
        pairs.append(torch.stack([torch.full_like(key, h), key // T, key % T]))
    idx = torch.cat(pairs, 1)
    vals = torch.rand(idx.shape[1], generator=g) + 0.05
    sums = torch.zeros(n_heads * T).index_add_(0, idx[0] * T + idx[1], vals)
    vals = vals / sums[idx[0] * T + idx[1]]
    w = torch.sparse_coo_tensor(idx, vals, (n_heads, T, T), check_invariants=False).coalesce()
    tokens = [f"t{i}" for i in range(T)]
    return AttentionMap(name, "lsh", tokens, tokens, list(range(n_heads)), w, buckets=buckets, chunks=chunks,
                        causal=causal, attend_across_buckets=across)


def long_causal_map(name, T, n_heads, seed=0) -> AttentionMap:
    """A dense causal (T, T) map with a recency bias, in float16, one head shared by all ``n_heads``
    (an expanded view: 128 MiB at 8,192 tokens however many heads)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.empty(T, T, dtype=torch.float16)
    pos = torch.arange(T)
    for a in range(0, T, 1024):
        i = pos[a:a + 1024, None]
        scores = torch.randn(i.shape[0], T, generator=g) - 0.02 * (i - pos).clamp_min(0)
        w[a:a + 1024] = scores.masked_fill(pos > i, float("-inf")).softmax(-1).half()
    return AttentionMap(name, "causal", [f"t{i}" for i in range(T)], [f"t{i}" for i in range(T)],
                        list(range(n_heads)), w.expand(n_heads, T, T), causal=True)


def lsh_pairs_python(m: AttentionMap, h: int, i: int) -> set[int]:
    """The keys query i meets in any round, from the map's sparse weights (less a lonely query's self)."""
    w = m.weights.coalesce()
    idx = w.indices()
    keys = set(idx[2, (idx[0] == h) & (idx[1] == i)].tolist())
    return keys - {i}


def short_maps():
    return [dense_map("blocks.0.attn", WORDS, 4, "self", seed=1),
            dense_map("blocks.1.attn", WORDS, 4, "causal", seed=2),
            dense_map("decoder.0.cross", WORDS[:9], 2, "cross", key_tokens=WORDS[3:], seed=3, heads=[1, 3]),
            lsh_map("blocks.2.lsh", 24, 2, 4, 4, 6, seed=4)]


# ---------------------------------------------------------------------------------------------------
# PNG


def _image(path):
    with PIL.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _spread(pixels) -> float:
    """The largest per-channel standard deviation: 0 for a one-colour area, whatever the colour."""
    return float(pixels.reshape(-1, 3).std(0).max())


def _colourful(pixels) -> float:
    """The share of coloured pixels: heatmap cells, lines and strips, not text, axes or (white, grey) background."""
    return float(((pixels.max(-1) - pixels.min(-1)) > 0.1).mean())


def test_png_one_head(tmp_path):
    m = dense_map("blocks.0.attn", WORDS[:20], 1, seed=5)
    out = write_png([m], tmp_path / "one.png")
    assert out == tmp_path / "one.png"
    px = _image(out)
    # 20 tokens: a (6 + 1.2) x 6 inch figure at 100 dpi
    assert px.shape == (600, 720, 3)
    h, w = px.shape[:2]
    centre = px[int(0.3 * h):int(0.6 * h), int(0.3 * w):int(0.55 * w)]  # inside the heatmap
    assert _spread(centre) > 0.05, "the heatmap is blank"
    assert _colourful(centre) > 0.9


def test_png_grid_and_long(tmp_path):
    maps = [dense_map(f"blocks.{n}.attn", [f"t{i}" for i in range(300)], 4, "causal" if n else "self", seed=n)
            for n in range(3)]
    out = write_png(maps, tmp_path / "grid.png", max_size=64)
    px = _image(out)
    # 3 layers x 4 heads: 2-inch cells, (4 * 2 + 1) x (3 * 2 + 0.6) inches at 100 dpi
    assert px.shape == (660, 900, 3)
    assert _spread(px) > 0.05
    assert _colourful(px) > 0.5, "the grid's heatmaps are not drawn"
    # every cell drawn: each of the 12 has colour at its centre
    rows, cols = 3, 4
    top, left, cell_h, cell_w = 45, 80, (660 - 45) / rows, (900 - 80) / cols
    for r in range(rows):
        for c in range(cols):
            y, x = int(top + (r + 0.5) * cell_h), int(left + (c + 0.5) * cell_w)
            cell = px[y - 20:y + 20, x - 20:x + 20]
            assert _colourful(cell) > 0.9 and _spread(cell) > 0.02, f"cell ({r}, {c}) is blank"


def test_png_long_input_uses_blocks(tmp_path):
    m = lsh_map("blocks.0.lsh", 2048, 1, 2, 64, 32, causal=True)
    start = time.perf_counter()
    px = _image(write_png([m], tmp_path / "long.png", max_size=128))
    assert time.perf_counter() - start < 20
    assert px.shape == (800, 920, 3)  # the 8 x 8 inch figure (plus colourbar) of long inputs
    assert _colourful(px[200:600, 200:600]) > 0.9 and _spread(px[200:600, 200:600]) > 0.05


def test_png_errors(tmp_path):
    m = dense_map("a", WORDS[:5], 1)
    with pytest.raises(ValueError, match="maps"):
        write_png([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="path"):
        write_png([m], tmp_path / "x.jpeg")
    with pytest.raises(ValueError, match="max_size"):
        write_png([m], tmp_path / "x.png", max_size=0)
    with pytest.raises(ValueError, match="maps"):
        write_html([], tmp_path / "x.html")
    with pytest.raises(ValueError, match="path"):
        write_html([m], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no query or no key tokens"):
        write_html([AttentionMap("e", "self", [], [], [0], torch.zeros(1, 0, 0))], tmp_path / "x.html")


def test_blocks_of_dense_and_sparse_weights_agree_and_rows_sum_to_one():
    import dataclasses

    m = dense_map("a", [f"t{i}" for i in range(101)], 3, key_tokens=[f"k{j}" for j in range(77)])
    sparse = dataclasses.replace(m, weights=m.weights.to_sparse())
    for size in (7, 32, 200):
        a, bq, bk = m.blocks(size)
        b, cq, ck = sparse.blocks(size)
        assert (bq, bk) == (cq, ck) == (-(-101 // size), -(-77 // size))
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        # block (0, 0) by hand: the mean over its queries of their summed weight on its keys
        torch.testing.assert_close(a[:, 0, 0], m.weights[:, :bq, :bk].sum(-1).mean(-1), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:2]), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------
# HTML: the embedded data, without a browser


def _embedded(path) -> dict:
    text = path.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="attn-data">(.*?)</script>', text, re.S)
    assert found, "no embedded data"
    return json.loads(found.group(1))


def test_html_data_format(tmp_path):
    maps = short_maps()
    out = write_html(maps, tmp_path / "a.html", title="demo </title><b>")
    text = out.read_text(encoding="utf-8")
    assert "<title>demo &lt;/title&gt;&lt;b&gt;</title>" in text
    assert text.count("</script>") == 2  # the token "</script>" cannot end the data early
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text
    data = _embedded(out)
    assert data["format"] == "attnkit-explorer/1" and len(data["layers"]) == 4
    for m, L in zip(maps, data["layers"]):
        assert (L["T"], L["S"], L["bq"], L["bk"]) == (len(m.query_tokens), len(m.key_tokens), 1, 1)
        dense = m.dense()
        for h in range(len(m.heads)):
            codes = np.frombuffer(base64.b64decode(L["weights"][h]), np.uint8).reshape(L["nq"], L["nk"])
            decoded = L["scale"][h] * (codes / 255.0) ** 2
            # sqrt coding: the error is at most about scale / 255 for the largest weights
            assert np.abs(decoded - dense[h].numpy()).max() <= 1.5 * L["scale"][h] / 255
    assert data["layers"][2]["key_tokens"] == WORDS[3:]
    lsh = data["layers"][3]
    assert lsh["index_bytes"] == 1 and lsh["n_hashes"] == 4
    b = np.frombuffer(base64.b64decode(lsh["buckets"][1]), np.uint8).reshape(4, 24)
    assert (b == maps[3].buckets[1].numpy()).all()


def test_html_long_data_is_aggregated_and_small(tmp_path):
    m = lsh_map("l", 4096, 2, 2, 64, 512)  # bucket ids above 255: two bytes each
    data = explorer_data([m])
    L = data["layers"][0]
    assert (L["nq"], L["nk"], L["bq"], L["bk"], L["index_bytes"]) == (512, 512, 8, 8, 2)
    for field in ("buckets", "chunks"):
        ids = np.frombuffer(base64.b64decode(L[field][1]), "<u2").reshape(2, 4096)
        assert (ids == getattr(m, field)[1].numpy()).all()


# ---------------------------------------------------------------------------------------------------
# HTML in headless Chromium

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str | None:
    for name in (os.environ.get("ATTNKIT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (found := shutil.which(name)):
            return found
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the browser tests need PyPI's playwright (pip install playwright; no `playwright install`)")
    exe = _chromium()
    if exe is None:
        pytest.skip("the browser tests need Chromium: apt-get install chromium (or set ATTNKIT_CHROMIUM)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=exe, headless=True,
                                                   args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
        yield ctx
        ctx.close()


def _open(browser, path):
    """Opens the page; -> (page, messages): console errors, uncaught exceptions, failed loads."""
    page = browser.new_page()
    messages = []
    page.on("console", lambda m: m.type == "error" and messages.append(f"console.error: {m.text}"))
    page.on("pageerror", lambda e: messages.append(f"uncaught: {e}"))
    page.on("requestfailed", lambda r: messages.append(f"request failed: {r.url}"))
    page.goto(path.resolve().as_uri(), timeout=60_000)  # returns after the load event: the script has run
    assert page.evaluate("document.body.dataset.ready === '1'"), f"the page did not finish drawing: {messages}"
    return page, messages


def _pixels(png: bytes):
    return np.asarray(PIL.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255.0


def _not_blank(png: bytes, colourful=0.02):
    """A screenshot with contrast and at least a ``colourful`` share of saturated (drawn) pixels."""
    px = _pixels(png)
    assert _spread(px) > 0.02, "the screenshot is blank"
    assert _colourful(px) > colourful, f"the screenshot has almost no colour: {_colourful(px):.4f}"


def _drawn(page, selector) -> int:
    return page.eval_on_selector_all(f"{selector}[data-drawn='1']", "els => els.length")


def _canvas_std(page, selector) -> float:
    """The largest per-channel pixel standard deviation of the first canvas matching ``selector``
    (0 for an empty or one-colour canvas)."""
    return page.evaluate("""sel => { const c = document.querySelector(sel);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, n = d.length / 4;
        let best = 0;
        for (let k = 0; k < 3; k++) {
            let s = 0, s2 = 0;
            for (let i = k; i < d.length; i += 4) { s += d[i]; s2 += d[i] * d[i]; }
            best = Math.max(best, Math.sqrt(Math.max(0, s2 / n - (s / n) ** 2)) / 255);
        }
        return best; }""", selector)


def test_html_in_chromium(browser, tmp_path):
    maps = short_maps()
    page, messages = _open(browser, write_html(maps, tmp_path / "short.html", title="short"))
    try:
        # head view (the default for short inputs): lines drawn, fewer when one token is hovered
        assert page.is_visible("#hv-canvas")
        lines = int(page.get_attribute("#hv-canvas", "data-lines"))
        assert lines > 100
        band = _pixels(page.locator("#hv-canvas").screenshot())
        band = band[:, int(0.4 * band.shape[1]):int(0.6 * band.shape[1])]  # between the token columns
        assert _colourful(band) > 0.2, "no lines between the tokens"
        box = page.locator("#hv-canvas").bounding_box()
        page.mouse.move(box["x"] + 20, box["y"] + 26 + 18 * 3 + 9)  # the fourth query token
        assert 0 < int(page.get_attribute("#hv-canvas", "data-lines")) < lines / 4
        assert "query 3" in page.inner_text("#hv-readout")
        page.uncheck("#hv-heads input[data-head='1']")  # one head fewer (and no token hovered): fewer lines
        assert 0 < int(page.get_attribute("#hv-canvas", "data-lines")) < lines
        page.check("#hv-heads input[data-head='1']")
        assert int(page.get_attribute("#hv-canvas", "data-lines")) == lines
        _not_blank(page.screenshot(), colourful=0.001)  # a few coloured lines, one per head

        # model view: one thumbnail per layer and head, each with a picture
        page.evaluate("attnExplorer.show('model')")
        assert _drawn(page, "canvas.head-thumb") == sum(len(m.heads) for m in maps) == 12
        for n, m in enumerate(maps):
            for h in m.heads:
                assert _canvas_std(page, f"canvas.head-thumb[data-layer='{n}'][data-head='{h}']") > 0.02
        page.click("canvas.head-thumb[data-layer='1'][data-head='2']")
        assert page.evaluate("attnExplorer.zoom()")["layer"] == 1
        box = page.locator("#zv-canvas").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.7)
        readout = page.inner_text("#zv-readout")
        assert re.search(r"query \d+ .*\nkey \d+ .*\nweight ≈ [0-9.e-]+", readout), readout
        _not_blank(page.screenshot())

        # bucket view: one strip per hash round, drawn
        page.evaluate("attnExplorer.show('buckets')")
        assert page.eval_on_selector_all("canvas.bucket-strip", "els => els.length") == maps[3].n_hashes == 4
        assert _drawn(page, "canvas.bucket-strip") == 4
        assert _canvas_std(page, "canvas.bucket-strip[data-round='0']") > 0.05
        _not_blank(page.locator("canvas.bucket-strip[data-round='0']").screenshot(), colourful=0.5)
        # the pairs the page computes from buckets and chunks are those the weights hold
        for h in range(2):
            page.evaluate(f"attnExplorer.selectBucketLayer(3, {h})")
            for i in range(24):
                rounds = page.evaluate(f"attnExplorer.lshPairs(3, {h}, {i})")
                assert set().union(*map(set, rounds)) == lsh_pairs_python(maps[3], h, i), (h, i)
        page.evaluate("attnExplorer.selectQuery(7)")
        assert page.inner_text("#bv-readout").startswith('query 7 "t7"')
        _not_blank(page.screenshot(), colourful=0.005)
        assert messages == []
    finally:
        page.close()


def test_html_long_input_in_chromium(browser, tmp_path):
    T = 8192
    maps = [long_causal_map("blocks.0.attn", T, 4), lsh_map("blocks.1.lsh", T, 4, 2, 64, 128, causal=True)]
    start = time.perf_counter()
    out = write_html(maps, tmp_path / "long.html", title="8k")
    written = time.perf_counter() - start
    size = out.stat().st_size
    assert size < 10 * 2**20, f"{size / 2**20:.1f} MiB"
    assert written < 60
    start = time.perf_counter()
    page, messages = _open(browser, out)
    try:
        assert time.perf_counter() - start < 30
        assert "block" in page.inner_text("#hv-note")  # no head view: it would be a line per pair
        page.evaluate("attnExplorer.show('model')")
        assert _drawn(page, "canvas.head-thumb") == 8
        assert _canvas_std(page, "canvas.head-thumb[data-layer='0'][data-head='3']") > 0.02
        # canvases, not an element per token or pair
        assert page.evaluate("document.getElementsByTagName('*').length") < 500
        # zoom with the wheel, then read a block's token ranges and weight
        box = page.locator("#zv-canvas").bounding_box()
        x, y = box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6
        page.mouse.move(x, y)
        page.mouse.wheel(0, -600)
        page.wait_for_function("attnExplorer.zoom().zoom > 2")
        page.mouse.move(x + 3, y + 3)
        readout = page.inner_text("#zv-readout")
        q = re.search(r"queries (\d+)–(\d+) .*\nkeys (\d+)–(\d+) .*\nblock weight ≈ ([0-9.e-]+)", readout)
        assert q, readout
        qa, qb, ka, kb = map(int, q.groups()[:4])
        assert qb - qa + 1 == 16 and kb - ka + 1 == 16 and 0 < qa < T
        # the readout's weight is the block's (causal: zero above the diagonal)
        blocks, _, _ = maps[0].blocks(512)
        assert abs(float(q.group(5)) - float(blocks[0, qa // 16, ka // 16])) <= 2 * float(blocks[0].max()) / 255 + 1e-3
        zoom = page.evaluate("attnExplorer.zoom().zoom")
        page.click("#zv-in")
        assert page.evaluate("attnExplorer.zoom().zoom") > zoom
        _not_blank(page.screenshot())

        page.evaluate("attnExplorer.show('buckets')")
        assert page.eval_on_selector_all("canvas.bucket-strip", "els => els.length") == 2
        assert _drawn(page, "canvas.bucket-strip") == 2
        assert _canvas_std(page, "canvas.bucket-strip[data-round='1']") > 0.05
        _not_blank(page.locator("canvas.bucket-strip[data-round='1']").screenshot(), colourful=0.5)
        assert "1.0 px per token" in page.inner_text("#bv-zoom")
        for i in (0, 1, 777, 4096, T - 1):
            rounds = page.evaluate(f"attnExplorer.lshPairs(1, 2, {i})")
            assert set().union(*map(set, rounds)) == lsh_pairs_python(maps[1], 2, i), i
        page.evaluate("attnExplorer.selectBucketLayer(1, 2); attnExplorer.selectQuery(4096)")
        assert "query 4096" in page.inner_text("#bv-readout")
        page.click("#bv-in")
        assert "2.0 px per token" in page.inner_text("#bv-zoom")
        _not_blank(page.screenshot(), colourful=0.005)
        assert messages == []
    finally:
        page.close()
