// recurd's page: plain ES module, no build step, no dependencies.
// Every API call goes through api(), which adds the key the user typed.
const $ = (id) => document.getElementById(id);
const KEEP = 3000;            // tokens kept in the DOM (older ones are dropped)
const SHOW = 200 * 1000;     // characters of generated text kept on screen per output
const FLUSH_MS = 50;          // generated text is drawn at most this often
const CHUNK = 8 * 1024;       // characters per append: well under --detail-limit (4096) tokens
const COLORS = ['#0b57d0', '#b3261e', '#146c2e', '#7d5260'];

let key = sessionStorage.getItem('recurd-key') || '';
let model = null;
const series = [];            // {name, buckets: Map(start -> {end, n, sum})}
let streamAbort = null, genAbort = null;

function status(msg) { $('status').textContent = msg; }
function fmtBytes(n) {
  if (n == null) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB']; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + ' ' + u[i];
}

async function api(path, opts = {}, base = '') {
  const headers = new Headers(opts.headers || {});
  if (key) headers.set('Authorization', 'Bearer ' + key);
  const r = await fetch(base + path, { ...opts, headers });
  if (r.status === 401 && !base) {
    $('keyform').hidden = false; $('key').focus();
    throw new Error('this server needs an API key');
  }
  if (!r.ok) {
    let msg = r.status + ' ' + r.statusText;
    try { const e = await r.json(); if (e.error) msg = e.error.message; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return r;
}
const json = async (path, body, base = '') => (await api(path, {
  method: body === undefined ? 'GET' : 'POST',
  headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
  body: body === undefined ? undefined : JSON.stringify(body),
}, base)).json();

// ---- model and sessions ------------------------------------------------------
async function loadModel() {
  const m = await json('/v1/models');
  model = m.data ? m.data[0] : m;
  $('model').textContent = `${model.id} · state ${fmtBytes(model.state_bytes)}`;
  $('sbytes').textContent = fmtBytes(model.state_bytes);
}

async function refreshSessions() {
  const l = await json('/v1/sessions');
  const rows = l.data || [];
  const tb = $('sessions').tBodies[0];
  tb.replaceChildren();
  const sel = $('target'), cur = sel.value;
  sel.replaceChildren(new Option('new session', ''));
  for (const s of rows) {
    sel.add(new Option(`${s.id} (${s.position} tokens)`, s.id));
    const tr = tb.insertRow();
    tr.insertCell().append(Object.assign(document.createElement('code'), { textContent: s.id }));
    tr.insertCell().textContent = s.position;
    const td = tr.insertCell();
    for (const [label, fn] of [['fork', () => fork(s.id)], ['download', () => download(s.id)],
                               ['delete', () => del(s.id)]]) {
      const b = document.createElement('button');
      b.textContent = label; b.setAttribute('aria-label', `${label} ${s.id}`);
      b.addEventListener('click', () => fn().catch((e) => status(e.message)));
      td.append(b, ' ');
    }
  }
  if ([...sel.options].some((o) => o.value === cur)) sel.value = cur;
}
async function newSession(base = '') { return (await json('/v1/sessions', {}, base)).id; }
async function fork(id) {
  const s = await json('/v1/sessions', { fork_of: id });
  status(`forked ${id} → ${s.id}`); await refreshSessions(); return s.id;
}
async function download(id) {
  const blob = await (await api(`/v1/sessions/${id}/state`)).blob();
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob); a.download = `${id}.recur-snapshot`;
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  status(`downloaded ${id} (${fmtBytes(blob.size)})`);
}
async function del(id) {
  await api(`/v1/sessions/${id}`, { method: 'DELETE' });
  status(`deleted ${id}`); await refreshSessions();
}
async function restore(file) {
  const r = await api('/v1/sessions', { method: 'POST',
    headers: { 'Content-Type': 'application/octet-stream' }, body: file });
  const s = await r.json();
  await refreshSessions(); $('target').value = s.id;
  status(`restored ${file.name} as ${s.id} (position ${s.position})`);
}

// ---- streaming a document ----------------------------------------------------
// Each append is tokenised on its own, so a cut inside a pre-token would change
// the tokens. Cut only before a space that follows a non-space and precedes a
// letter or digit: there the byte-level pre-tokenizer splits anyway (" word"
// starts a new piece), so the appends read exactly the tokens of one stream.
function nextCut(text, from) {
  if (text.length - from <= CHUNK) return text.length;
  for (let i = from + CHUNK; i > from + CHUNK / 2; i--)
    if (text[i] === ' ' && /\S/.test(text[i - 1]) && /[\p{L}\p{N}]/u.test(text[i + 1] || '')) return i;
  return from + CHUNK; // no safe cut in half a chunk: accept a possible difference
}

function addBuckets(ser, buckets) {
  for (const b of buckets || []) {
    const o = ser.buckets.get(b.start) || { end: b.end, n: 0, sum: 0 };
    o.n += b.n; o.sum += b.n * b.nll; ser.buckets.set(b.start, o);
  }
}

async function streamDoc(text, name) {
  const enc = new TextEncoder();
  const total = enc.encode(text).length;
  const other = $('other').value.trim().replace(/\/$/, '');
  let id = $('target').value || await newSession();
  let oid = other ? await newSession(other) : null;
  const ser = { name: `${model.id} (${name})`, buckets: new Map() };
  series.length = 0; series.push(ser);
  const oser = other ? { name: `${other} (${name})`, buckets: new Map() } : null;
  if (oser) series.push(oser);
  $('text').replaceChildren();
  streamAbort = new AbortController();
  $('go').disabled = true; $('cancel').disabled = false;
  let sent = 0, scored = 0, pos = 0;
  const t0 = performance.now();
  try {
    for (let from = 0; from < text.length;) {
      const to = nextCut(text, from);
      const piece = text.slice(from, to);
      const body = { text: piece, logprobs: true, top_logprobs: 3 };
      const req = api(`/v1/sessions/${id}/append`, { method: 'POST', signal: streamAbort.signal,
        headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) }).then((r) => r.json());
      const oreq = oid ? api(`/v1/sessions/${oid}/append`, { method: 'POST', signal: streamAbort.signal,
        headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ text: piece }) }, other)
        .then((r) => r.json()) : null;
      const r = await req;
      if (oreq) addBuckets(oser, (await oreq).buckets);
      addBuckets(ser, r.buckets);
      renderTokens(r.tokens || []);
      sent += enc.encode(piece).length; scored += r.n_tokens; pos = r.position; from = to;
      const secs = (performance.now() - t0) / 1000;
      $('bar').max = total; $('bar').value = sent;
      $('progress').textContent = `${fmtBytes(sent)} of ${fmtBytes(total)} sent · ` +
        `${scored} tokens scored · ${(scored / secs).toFixed(0)} tok/s`;
      $('ntok').textContent = pos;
      drawChart();
    }
    status(`streamed ${name} into ${id}: ${pos} tokens; the state is still ${fmtBytes(model.state_bytes)}`);
  } finally {
    $('go').disabled = false; $('cancel').disabled = true; streamAbort = null;
    await refreshSessions(); $('target').value = id;
  }
}

// ---- surprisal text ------------------------------------------------------------
function colour(s) { // s = -log p in nats: 0 → pale, ≥ 12 → dark red
  const t = Math.min(1, s / 12);
  return `hsl(${50 - 50 * t}, 100%, ${97 - 50 * t}%)`;
}
function renderTokens(toks) {
  const box = $('text'), frag = document.createDocumentFragment();
  for (const t of toks) {
    const sp = document.createElement('span');
    sp.textContent = t.text;
    if (t.logprob != null) {
      const s = -t.logprob;
      sp.style.background = colour(s);
      if (s > 7) sp.style.color = '#fff';
      sp.tabIndex = 0;
      const alts = (t.top_logprobs || []).map((a) => `${JSON.stringify(a.text)} ${a.logprob.toFixed(2)}`);
      sp.dataset.tip = `${JSON.stringify(t.text)} @${t.position}\nlogprob ${t.logprob.toFixed(3)}` +
        (alts.length ? `\n${alts.join('\n')}` : '');
      sp.setAttribute('aria-label', `${t.text}, logprob ${t.logprob.toFixed(2)}`);
    }
    frag.append(sp);
  }
  box.append(frag);
  while (box.childElementCount > KEEP) box.firstElementChild.remove();
  box.scrollTop = box.scrollHeight;
}
function showTip(e) {
  const t = e.target.dataset && e.target.dataset.tip;
  const tip = $('tip');
  if (!t) { tip.hidden = true; return; }
  tip.textContent = t; tip.hidden = false;
  const r = e.target.getBoundingClientRect();
  tip.style.left = Math.min(r.left, innerWidth - 240) + 'px'; tip.style.top = (r.bottom + 4) + 'px';
}

// ---- chart (hand-written SVG, log-x) ------------------------------------------------
function drawChart() {
  const W = 560, H = 240, L = 46, B = 30, T = 10, R = 10;
  const pts = series.map((s) => [...s.buckets.entries()].filter(([, b]) => b.n > 0)
    .map(([start, b]) => ({ x: Math.max(1, start), y: Math.exp(b.sum / b.n) })).sort((a, b) => a.x - b.x));
  const all = pts.flat();
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const el = (tag, attrs, text) => { const e = document.createElementNS(ns, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]); if (text != null) e.textContent = text; svg.append(e); return e; };
  const maxX = Math.max(2, ...all.map((p) => p.x * 2), model && model.training_context || 0);
  const maxY = Math.max(2, ...all.map((p) => p.y)) * 1.1;
  const lx = (x) => L + (W - L - R) * Math.log2(x) / Math.log2(maxX);
  const ly = (y) => H - B - (H - B - T) * Math.log(y) / Math.log(maxY);
  el('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, class: 'axis' });
  el('line', { x1: L, y1: T, x2: L, y2: H - B, class: 'axis' });
  for (let x = 1; x <= maxX; x *= 16) el('text', { x: lx(x), y: H - B + 14, 'text-anchor': 'middle' }, x >= 1024 ? `${x / 1024}k` : x);
  el('text', { x: W / 2, y: H - 3, 'text-anchor': 'middle' }, 'position (log scale)');
  for (const y of [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000]) if (y < maxY)
    el('text', { x: L - 4, y: ly(y) + 4, 'text-anchor': 'end' }, y);
  el('text', { x: 12, y: T + 60, transform: `rotate(-90 12 ${T + 60})`, 'text-anchor': 'end' }, 'perplexity');
  if (model && model.training_context) {
    const x = lx(model.training_context);
    el('line', { x1: x, y1: T, x2: x, y2: H - B, stroke: '#888', 'stroke-dasharray': '4 3' });
    el('text', { x: x + 3, y: T + 10 }, 'training context');
  }
  pts.forEach((p, i) => {
    if (!p.length) return;
    el('polyline', { points: p.map((q) => `${lx(q.x).toFixed(1)},${ly(q.y).toFixed(1)}`).join(' '),
      fill: 'none', stroke: COLORS[i % COLORS.length], 'stroke-width': 2 });
    for (const q of p) el('circle', { cx: lx(q.x), cy: ly(q.y), r: 2.5, fill: COLORS[i % COLORS.length] },
      null).append(Object.assign(document.createElementNS(ns, 'title'), { textContent: `≥${q.x}: ppl ${q.y.toFixed(2)}` }));
  });
  $('chart').replaceChildren(svg);
  $('legend').replaceChildren(...series.map((s, i) => Object.assign(document.createElement('span'),
    { textContent: `— ${s.name}` })));
  $('chart').dataset.points = all.length;
}

// ---- generation over SSE --------------------------------------------------------
// Tokens are shown at most every FLUSH_MS, as one new text node: `textContent +=`
// per token re-copied and re-laid-out the whole output for every token, which at a
// small model's thousands of tokens a second froze the page (Stop could not be
// clicked). Past SHOW characters the oldest nodes go, so a long generation keeps
// the page responsive; the status line at the end still counts every token.
function tokenSink(out) {
  let pending = '', timer = 0, shown = 0;
  const flush = () => {
    timer = 0;
    if (!pending) return;
    out.append(pending); shown += pending.length; pending = '';
    while (shown > SHOW && out.childNodes.length > 1) {
      shown -= out.firstChild.textContent.length; out.firstChild.remove();
      out.dataset.trimmed = 'true';
    }
  };
  return {
    add(t) { pending += t; if (!timer) timer = setTimeout(flush, FLUSH_MS); },
    end() { clearTimeout(timer); flush(); },
  };
}
async function generate(id, out, signal, n) {
  const body = { stream: true, commit: $('commit').checked, max_tokens: +$('maxt').value,
    temperature: +$('temp').value, top_p: +$('topp').value, top_k: +$('topk').value };
  if ($('seed').value !== '') body.seed = +$('seed').value + n; // forks differ
  if ($('stop').value) body.stop = $('stop').value;
  const r = await api(`/v1/sessions/${id}/generate`, { method: 'POST', signal,
    headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  const rd = r.body.pipeThrough(new TextDecoderStream()).getReader();
  const sink = tokenSink(out);
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await rd.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const ev = buf.slice(0, i); buf = buf.slice(i + 2);
        for (const line of ev.split('\n')) {
          if (!line.startsWith('data:')) continue;
          const d = line.slice(5).trim();
          if (d === '[DONE]') continue;
          const m = JSON.parse(d);
          if (m.type === 'token') sink.add(m.text);
          else if (m.type === 'done') status(`${id}: ${m.finish_reason}, ${m.n_tokens} tokens, seed ${m.seed}` +
            (m.committed ? ', committed' : ''));
          else if (m.type === 'error') throw new Error(m.error.message);
        }
      }
    }
  } finally {
    sink.end();
  }
}
async function runGen(ids) {
  genAbort = new AbortController();
  $('gen').disabled = true; $('fork2').disabled = true; $('stopgen').disabled = false;
  const outs = ids.map((id, i) => { const p = document.createElement('pre');
    p.id = i ? `out${i}` : 'out'; p.setAttribute('aria-label', `output of ${id}`); return p; });
  $('outs').replaceChildren(...outs);
  try {
    const prompt = $('prompt').value;
    await Promise.all(ids.map(async (id, i) => {
      if (prompt) await json(`/v1/sessions/${id}/append`, { text: prompt });
      await generate(id, outs[i], genAbort.signal, i);
    }));
  } catch (e) {
    status(e.name === 'AbortError' ? 'generation stopped' : e.message);
  } finally {
    $('gen').disabled = false; $('fork2').disabled = false; $('stopgen').disabled = true;
    genAbort = null; refreshSessions().catch((e) => status(e.message));
  }
}

// ---- wiring ----------------------------------------------------------------------
function wire() {
  $('keepn').textContent = KEEP;
  $('keyform').addEventListener('submit', (e) => {
    e.preventDefault(); key = $('key').value;
    if ($('remember').checked) sessionStorage.setItem('recurd-key', key);
    else sessionStorage.removeItem('recurd-key');
    $('keyform').hidden = true; start();
  });
  const go = (text, name) => streamDoc(text, name).catch((e) =>
    status(e.name === 'AbortError' ? 'stream cancelled' : e.message));
  $('go').addEventListener('click', async () => {
    const f = $('file').files[0];
    if (f) go(await f.text(), f.name);
    else if ($('paste').value) go($('paste').value, 'pasted text');
    else status('choose a file or paste some text first');
  });
  $('cancel').addEventListener('click', () => streamAbort && streamAbort.abort());
  const drop = $('drop');
  drop.addEventListener('keydown', (e) => { // keyboard: Enter or Space opens the picker
    if ((e.key === 'Enter' || e.key === ' ') && e.target === drop) { e.preventDefault(); $('file').click(); }
  });
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', async (e) => {
    e.preventDefault(); drop.classList.remove('over');
    const f = e.dataTransfer.files[0]; if (f) go(await f.text(), f.name);
  });
  const text = $('text');
  text.addEventListener('mouseover', showTip); text.addEventListener('focusin', showTip);
  text.addEventListener('mouseleave', () => { $('tip').hidden = true; });
  text.addEventListener('focusout', () => { $('tip').hidden = true; });
  $('gen').addEventListener('click', async () => {
    try { runGen([$('target').value || await newSession()]); } catch (e) { status(e.message); }
  });
  $('fork2').addEventListener('click', async () => {
    try {
      const base = $('target').value || await newSession();
      const a = (await json('/v1/sessions', { fork_of: base })).id;
      const b = (await json('/v1/sessions', { fork_of: base })).id;
      runGen([a, b]);
    } catch (e) { status(e.message); }
  });
  $('stopgen').addEventListener('click', () => genAbort && genAbort.abort());
  $('refresh').addEventListener('click', () => refreshSessions().catch((e) => status(e.message)));
  $('restore').addEventListener('change', (e) => {
    const f = e.target.files[0]; if (f) restore(f).catch((er) => status(er.message));
    e.target.value = '';
  });
}
async function start() {
  try { await loadModel(); await refreshSessions(); drawChart(); status(''); }
  catch (e) { status(e.message); }
}
wire();
start();
