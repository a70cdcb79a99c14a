// The explore page: asks the server (docs/explore.md, "The JSON API") and draws on canvases.
// Plain JavaScript, no libraries: it ships inside the Python package and needs no network.
'use strict';

(() => {
  const DISPLAY_SIDE = 448;  // pixels of the longer side of the drawn image
  const LAYER_STEP_MS = 700;
  // matplotlib's tab10, the colours analyze's attention-distance plot gives the heads of a model
  // with up to ten (past ten it takes tab20 and marker shapes; here the colours repeat).
  const HEAD_COLOURS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd',
                        '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];

  const $ = (id) => document.getElementById(id);
  const state = {
    model: null,       // GET /api/model
    answer: null,      // the latest POST /api/predict or GET /api/sample/<i>
    image: null,       // the answer's image, decoded
    token: null,       // the query token (sequence index) of the attention view
    attention: new Map(),  // token -> GET /api/attention answer, for the current image
    distances: [],     // each viewed image's mean attention distance (layers x heads)
    layout: null,      // where the image and its patch grid lie on the canvas
    playing: null,
  };

  // ------------------------------------------------------------------ server
  async function ask(url, options) {
    const response = await fetch(url, options);
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      throw new Error(`${response.status} ${response.statusText}`);
    }
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }

  function setStatus(text, isError = false) {
    const status = $('status');
    status.textContent = text;
    status.classList.toggle('error', isError);
  }

  async function run(what, job) {
    setStatus(what + '…');
    try {
      await job();
      setStatus('');
    } catch (err) {
      setStatus(err.message, true);
    }
  }

  // ------------------------------------------------------------------ start
  async function start() {
    let model;
    try {
      model = await ask('/api/model');
    } catch (err) {
      $('model-summary').textContent = 'The server did not answer: ' + err.message;
      return;
    }
    state.model = model;
    describeModel(model);
    fillControls(model);
    drawPosembSimilarity(model);
    drawFilters(model);
    drawDistances();
    listHeads(model);
    wireEvents();
    if (model.samples) await run('Running the model', () => showSample(0));
  }

  function describeModel(m) {
    const [h, w] = m.image_size;
    const stem = m.stem === 'patch' ? `patches ${m.patch_size}x${m.patch_size}`
                                     : `hybrid: ResNet stem, stride ${m.stride}`;
    const prefix = m.prefix_tokens.length ? m.prefix_tokens.join(' + ') : 'no prefix tokens';
    $('model-summary').textContent =
      `${m.name}: ${h}x${w} input, ${stem}, grid ${m.grid[0]}x${m.grid[1]}, ${m.depth} layers x ` +
      `${m.num_heads} heads, width ${m.width}; pooling ${m.pool}, position embedding ${m.posemb}; ` +
      `${prefix}; ${m.num_classes} classes; on ${m.device}`;
  }

  function addOption(select, value, text) {
    const option = document.createElement('option');
    option.value = value;
    option.textContent = text;
    select.append(option);
  }

  function fillControls(m) {
    for (const query of m.rollout_queries) addOption($('rollout-query'), query, query);
    $('rollout-query-control').hidden = m.rollout_queries.length < 2;
    for (let h = 0; h < m.num_heads; h += 1) addOption($('head'), String(h), `head ${h + 1}`);
    $('layer').max = String(m.depth);
    $('layer').value = String(m.depth);
    $('layer-value').textContent = String(m.depth);
    addOption($('query-token'), 'patch', 'the clicked patch');
    m.prefix_tokens.forEach((name, i) => addOption($('query-token'), String(i), name));
    if (m.samples) {
      $('sample-picker').hidden = false;
      $('sample-source').textContent = `Samples of ${m.samples.source}`;
      $('sample-count').textContent = String(m.samples.count);
      $('sample-index').max = String(m.samples.count - 1);
    }
  }

  function wireEvents() {
    $('file-input').addEventListener('change', (e) => {
      if (e.target.files.length) upload(e.target.files[0]);
    });
    const zone = $('drop-zone');
    window.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('dragging'); });
    window.addEventListener('dragleave', () => zone.classList.remove('dragging'));
    window.addEventListener('drop', (e) => {
      e.preventDefault();
      zone.classList.remove('dragging');
      if (e.dataTransfer && e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
    });
    const sampleAt = (i) => {
      const count = state.model.samples.count;
      const index = ((i % count) + count) % count;
      $('sample-index').value = String(index);
      run('Running the model', () => showSample(index));
    };
    $('sample-index').addEventListener('change', () => sampleAt(Number($('sample-index').value) || 0));
    $('sample-prev').addEventListener('click', () => sampleAt(Number($('sample-index').value) - 1));
    $('sample-next').addEventListener('click', () => sampleAt(Number($('sample-index').value) + 1));
    $('sample-random').addEventListener('click',
      () => sampleAt(Math.floor(Math.random() * state.model.samples.count)));

    for (const radio of document.querySelectorAll('input[name="view"]')) {
      radio.addEventListener('change', redraw);
    }
    $('overlay').addEventListener('click', clickPatch);
    $('query-token').addEventListener('change', () => {
      const value = $('query-token').value;
      if (value !== 'patch') chooseToken(Number(value));
      else if (state.token !== null && state.token < state.model.prefix_tokens.length) state.token = null;
      redraw();
    });
    $('layer').addEventListener('input', () => {
      $('layer-value').textContent = $('layer').value;
      redraw();
    });
    $('play').addEventListener('click', stepThroughLayers);
    for (const id of ['rollout-query', 'head', 'opacity', 'smooth']) $(id).addEventListener('input', redraw);
    $('distance-source').addEventListener('change', drawDistances);
  }

  // ------------------------------------------------------------------ images in
  function upload(file) {
    const form = new FormData();
    form.append('image', file, file.name);
    run(`Running the model on ${file.name}`, () => showAnswer(ask('/api/predict', { method: 'POST', body: form })));
  }

  async function showSample(index) {
    await showAnswer(ask(`/api/sample/${index}`));
  }

  // The image on screen is the one asked for last: an answer that arrives after a newer request
  // (the first sample still loading when an image is dropped) is not shown over it.
  let latestRequest = 0;

  async function showAnswer(pending) {
    const request = ++latestRequest;
    const answer = await pending;
    if (request === latestRequest) await show(answer, request);
  }

  async function show(answer, request) {
    const image = new Image();
    image.src = answer.image;
    await image.decode();
    if (request !== latestRequest) return;
    state.answer = answer;
    state.image = image;
    state.attention = new Map();
    state.distances.push(answer.attention_distance);
    layOut(answer);
    showInput(answer);
    listPredictions(answer);
    drawDistances();
    redraw();
  }

  function layOut(answer) {
    const [h, w] = answer.image_size;
    const scale = DISPLAY_SIDE / Math.max(h, w);
    const width = Math.round(w * scale);
    const height = Math.round(h * scale);
    for (const canvas of [$('image-canvas'), $('overlay')]) {
      canvas.width = width;
      canvas.height = height;
    }
    const [rows, cols] = answer.grid;
    const stride = state.model.stride;
    // The patches cover the image up to the last whole stride (a remainder is not seen).
    const coverW = Math.min(cols * stride, w) * scale;
    const coverH = Math.min(rows * stride, h) * scale;
    state.layout = { width, height, rows, cols, coverW, coverH };
    const ctx = $('image-canvas').getContext('2d');
    // Small inputs (digits) are shown as blocks of their pixels, as the model saw them.
    ctx.imageSmoothingEnabled = scale < 4;
    ctx.clearRect(0, 0, width, height);
    ctx.drawImage(state.image, 0, 0, width, height);
  }

  function showInput(answer) {
    const [h, w] = answer.image_size;
    const preview = $('input-preview');
    preview.src = answer.image;
    preview.classList.toggle('pixelated', Math.max(h, w) < 64);
    $('input-caption').textContent = `As the model sees it: ${h}x${w}`;
    $('input-figure').hidden = false;
  }

  function listPredictions(answer) {
    const list = $('predictions');
    list.replaceChildren();
    const truth = answer.sample ? answer.sample.label : null;
    $('true-label').hidden = truth === null;
    $('true-label').textContent = truth === null ? '' : `True label: ${truth} (sample ${answer.sample.index})`;
    for (const p of answer.predictions) {
      const item = document.createElement('li');
      const line = document.createElement('span');
      line.className = 'prediction' + (p.label === truth ? ' correct' : '');
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = p.label;
      const value = document.createElement('span');
      value.textContent = `${(100 * p.probability).toFixed(1)}%`;
      line.append(name, value);
      const bar = document.createElement('span');
      bar.className = 'bar';
      bar.style.width = `${Math.max(0.5, 100 * p.probability)}%`;
      item.append(line, bar);
      list.append(item);
    }
  }

  // ------------------------------------------------------------------ the image's view
  function viewMode() {
    return document.querySelector('input[name="view"]:checked').value;
  }

  function setViewMode(mode) {
    document.querySelector(`input[name="view"][value="${mode}"]`).checked = true;
  }

  function clickPatch(event) {
    const layout = state.layout;
    if (!layout) return;
    const canvas = $('overlay');
    const x = event.offsetX * (canvas.width / canvas.clientWidth);
    const y = event.offsetY * (canvas.height / canvas.clientHeight);
    if (x >= layout.coverW || y >= layout.coverH) return;
    const col = Math.floor(x / (layout.coverW / layout.cols));
    const row = Math.floor(y / (layout.coverH / layout.rows));
    $('query-token').value = 'patch';
    chooseToken(state.model.prefix_tokens.length + row * layout.cols + col);
  }

  function chooseToken(token) {
    state.token = token;
    setViewMode('attention');
    redraw();
  }

  function tokenName(token) {
    const prefix = state.model.prefix_tokens;
    if (token < prefix.length) return `the ${prefix[token]}`;
    const patch = token - prefix.length;
    const cols = state.layout.cols;
    return `patch (row ${Math.floor(patch / cols) + 1}, column ${(patch % cols) + 1})`;
  }

  function redraw() {
    const ctx = $('overlay').getContext('2d');
    const layout = state.layout;
    if (!layout) return;
    ctx.clearRect(0, 0, layout.width, layout.height);
    if (viewMode() === 'rollout' || state.token === null) {
      const query = $('rollout-query').value;
      drawHeat(ctx, state.answer.rollouts[query]);
      $('view-caption').textContent = state.token === null && viewMode() === 'attention'
        ? 'Click a patch (or choose a query token) to see where it attends.'
        : `Attention rollout from the ${query} (paper Fig. 6), scaled to its maximum.`;
      return;
    }
    const token = state.token;
    const answer = state.answer;
    const weights = state.attention.get(token);
    if (!weights) {
      fetchAttention(answer, token);
      return;
    }
    const layer = Number($('layer').value) - 1;
    const head = $('head').value;
    const heads = head === 'mean' ? [...Array(state.model.num_heads).keys()] : [Number(head)];
    const map = meanOver(heads.map((h) => weights.patches[layer][h]));
    const prefixShare = heads.reduce((sum, h) => sum + weights.prefix[layer][h].reduce((a, b) => a + b, 0), 0)
                        / heads.length;
    drawHeat(ctx, map);
    if (token >= state.model.prefix_tokens.length) markPatch(ctx, token - state.model.prefix_tokens.length);
    const which = head === 'mean' ? 'mean over heads' : `head ${Number(head) + 1}`;
    const share = state.model.prefix_tokens.length
      ? `; ${(100 * prefixShare).toFixed(1)}% of it goes to the ${state.model.prefix_tokens.join(' and the ')}` : '';
    $('view-caption').textContent =
      `Where ${tokenName(token)} attends in layer ${layer + 1}, ${which}${share}. Scaled to its maximum.`;
  }

  async function fetchAttention(answer, token) {
    try {
      const weights = await ask(`/api/attention/${answer.id}?token=${token}`);
      if (state.answer !== answer) return;
      state.attention.set(token, weights);
      if (state.token === token) redraw();
    } catch (err) {
      setStatus(err.message, true);
    }
  }

  function meanOver(maps) {
    return maps[0].map((row, r) => row.map((_, c) => maps.reduce((sum, m) => sum + m[r][c], 0) / maps.length));
  }

  function drawHeat(ctx, map) {
    const { rows, cols, coverW, coverH } = state.layout;
    let max = 0;
    for (const row of map) for (const v of row) max = Math.max(max, v);
    if (!(max > 0)) return;
    const heat = document.createElement('canvas');
    heat.width = cols;
    heat.height = rows;
    const heatCtx = heat.getContext('2d');
    const pixels = heatCtx.createImageData(cols, rows);
    const lut = state.model.colormaps.inferno;
    map.forEach((row, r) => row.forEach((v, c) => {
      const [red, green, blue] = lut[Math.round((255 * Math.max(0, v)) / max)];
      pixels.data.set([red, green, blue, 255], 4 * (r * cols + c));
    }));
    heatCtx.putImageData(pixels, 0, 0);
    ctx.save();
    ctx.globalAlpha = Number($('opacity').value);
    ctx.imageSmoothingEnabled = $('smooth').checked;
    ctx.drawImage(heat, 0, 0, coverW, coverH);
    ctx.restore();
  }

  function markPatch(ctx, patch) {
    const { cols, rows, coverW, coverH } = state.layout;
    const w = coverW / cols;
    const h = coverH / rows;
    ctx.save();
    ctx.lineWidth = 2;
    ctx.strokeStyle = '#00e5ff';
    ctx.strokeRect((patch % cols) * w + 1, Math.floor(patch / cols) * h + 1, w - 2, h - 2);
    ctx.restore();
  }

  function stepThroughLayers() {
    if (state.playing) {
      clearInterval(state.playing);
      state.playing = null;
      $('play').textContent = '▶ step through layers';
      return;
    }
    if (state.token === null) {
      setStatus('Click a patch first: the layers step through where it attends.', true);
      return;
    }
    setViewMode('attention');
    $('layer').value = '1';
    $('play').textContent = '■ stop';
    const step = () => {
      $('layer-value').textContent = $('layer').value;
      redraw();
      if (Number($('layer').value) >= state.model.depth) {
        stepThroughLayers();
        return;
      }
      $('layer').value = String(Number($('layer').value) + 1);
    };
    step();
    state.playing = setInterval(step, LAYER_STEP_MS);
  }

  // ------------------------------------------------------------------ the checkpoint's panels
  function drawDistances() {
    const canvas = $('distance-plot');
    const ctx = canvas.getContext('2d');
    const m = state.model;
    const { width, height } = canvas;
    const pad = { left: 52, right: 12, top: 12, bottom: 40 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const top = m.max_distance * 1.05;
    const px = (layer) => pad.left + ((layer - 0.5) / m.depth) * plotW;
    const py = (d) => pad.top + plotH - (d / top) * plotH;
    ctx.clearRect(0, 0, width, height);
    ctx.fillStyle = '#ffffff';
    ctx.fillRect(0, 0, width, height);
    ctx.strokeStyle = '#d8dde6';
    ctx.fillStyle = '#5d6678';
    ctx.font = '11px system-ui, sans-serif';
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (let i = 0; i <= 4; i += 1) {
      const d = (top * i) / 4;
      ctx.beginPath();
      ctx.moveTo(pad.left, py(d));
      ctx.lineTo(pad.left + plotW, py(d));
      ctx.stroke();
      ctx.fillText(d.toFixed(0), pad.left - 6, py(d));
    }
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    const every = Math.max(1, Math.round(m.depth / 12));
    for (let layer = 1; layer <= m.depth; layer += every) ctx.fillText(String(layer), px(layer), pad.top + plotH + 4);
    ctx.fillText('network depth (layer)', pad.left + plotW / 2, height - 16);
    ctx.save();
    ctx.translate(12, pad.top + plotH / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText('mean attention distance (px)', 0, -6);
    ctx.restore();

    const values = distancesShown();
    if (!values) return;
    values.forEach((heads, layer) => heads.forEach((d, h) => {
      ctx.beginPath();
      ctx.fillStyle = HEAD_COLOURS[h % HEAD_COLOURS.length];
      ctx.arc(px(layer + 1), py(d), 3.5, 0, 2 * Math.PI);
      ctx.fill();
    }));
  }

  function listHeads(m) {
    const legend = $('distance-legend');
    for (let h = 0; h < m.num_heads; h += 1) {
      const item = document.createElement('span');
      const dot = document.createElement('span');
      dot.className = 'dot';
      dot.style.background = HEAD_COLOURS[h % HEAD_COLOURS.length];
      item.append(dot, `head ${h + 1}`);
      legend.append(item);
    }
  }

  function distancesShown() {
    const seen = state.distances;
    if (!seen.length) return null;
    if ($('distance-source').value === 'image') return seen[seen.length - 1];
    return seen[0].map((heads, l) => heads.map((_, h) => seen.reduce((sum, d) => sum + d[l][h], 0) / seen.length));
  }

  function drawPosembSimilarity(m) {
    const note = $('posemb-note');
    if (!m.posemb_similarity) {
      note.textContent = `Nothing to show: ${m.posemb_note}.`;
      return;
    }
    const [rows, cols] = m.grid;
    const sim = m.posemb_similarity.similarity;
    const canvas = $('posemb');
    canvas.hidden = false;
    canvas.width = cols * (cols + 1) - 1;
    canvas.height = rows * (rows + 1) - 1;
    const ctx = canvas.getContext('2d');
    const pixels = ctx.createImageData(canvas.width, canvas.height);
    const lut = m.colormaps.viridis;
    for (let i = 0; i < rows * cols; i += 1) {
      const x0 = (i % cols) * (cols + 1);
      const y0 = Math.floor(i / cols) * (rows + 1);
      for (let j = 0; j < rows * cols; j += 1) {
        const [red, green, blue] = lut[Math.round(((Math.max(-1, Math.min(1, sim[i][j])) + 1) / 2) * 255)];
        const at = 4 * ((y0 + Math.floor(j / cols)) * canvas.width + x0 + (j % cols));
        pixels.data.set([red, green, blue, 255], at);
      }
    }
    ctx.putImageData(pixels, 0, 0);
    note.textContent = `Tile (row, column) shows that position's cosine similarity with every position, ` +
      `from -1 (dark) to 1 (yellow) (paper Fig. 7, centre); ${m.posemb_similarity.source}.`;
  }

  function drawFilters(m) {
    const note = $('filters-note');
    if (!m.filters) {
      note.textContent = `Nothing to show: ${m.filters_note}.`;
      return;
    }
    const box = $('filters');
    m.filters.images.forEach((image, k) => {
      const size = image.length;
      const canvas = document.createElement('canvas');
      canvas.width = image[0].length;
      canvas.height = size;
      const ctx = canvas.getContext('2d');
      const pixels = ctx.createImageData(canvas.width, canvas.height);
      image.forEach((row, y) => row.forEach((v, x) => {
        const [red, green, blue] = Array.isArray(v) ? v : [v, v, v];
        pixels.data.set([red * 255, green * 255, blue * 255, 255], 4 * (y * canvas.width + x));
      }));
      ctx.putImageData(pixels, 0, 0);
      const figure = document.createElement('figure');
      const caption = document.createElement('figcaption');
      caption.textContent = `PC ${k + 1} (${(100 * m.filters.explained_variance_ratio[k]).toFixed(1)}%)`;
      figure.append(canvas, caption);
      box.append(figure);
    });
    note.textContent = `The top ${m.filters.images.length} principal components of the ` +
      `${m.patch_size}x${m.patch_size} patch-embedding filters, each scaled to its own range (paper Fig. 7, left).`;
  }

  start();
})();
