// helexa.cortex dashboard: plain JavaScript, no build step, no libraries.
//
// One event stream (/ui/events) carries the fleet state, rate points and finished
// requests. It is read with fetch() rather than EventSource because EventSource cannot
// send an Authorization header, and the key must never go into a URL; the reader
// reconnects by itself after the server's `retry:` delay, as EventSource would.
"use strict";

const KEY_STORE = "cortex.key"; // sessionStorage: gone when the tab closes
const WINDOW_SECS = 300;
const REQUESTS_KEPT = 100; // what the page holds (the server's hello sends as many)
const REQUESTS_PAGE = 10; // rows shown at first; "show more" adds as many again
const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2",
                 "#65a30d", "#db2777", "#4b5563", "#ea580c"];

const ui = {
  key: sessionStorage.getItem(KEY_STORE) || "",
  viewer: { admin: false, key_id: null },
  state: null,
  series: [],
  requests: [],
  requestsShown: REQUESTS_PAGE,
  colors: new Map(),
  retryMs: 2000,
  abort: null,
  cards: new Map(),
  connected: false,
};
window.cortexUi = ui; // for a curious operator's console (and the browser tests)

// -- small DOM helpers --------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k.startsWith("data-") || k.startsWith("aria-")) el.setAttribute(k, v);
    else el[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (id) => document.getElementById(id);
// replaceChildren() would render a null as the text "null": drop the absent ones first.
const fill = (el, ...kids) => el.replaceChildren(
  ...kids.flat().filter((k) => k !== null && k !== undefined && k !== false));
const badge = (text, kind) => h("span", { class: `badge ${kind || ""}`, text });
const fmt = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

function fmtSecs(s) {
  if (s === null || s === undefined) return "–";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function fmtBytes(b) {
  if (!b) return "0 B";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return `${b.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function bar(fraction, cls) {
  const inner = h("div");
  inner.style.width = `${Math.max(0, Math.min(1, fraction || 0)) * 100}%`;
  return h("div", { class: `bar ${cls || ""}` }, inner);
}

function colorOf(model) {
  if (!ui.colors.has(model)) ui.colors.set(model, PALETTE[ui.colors.size % PALETTE.length]);
  return ui.colors.get(model);
}

function notice(text) {
  const el = $("notice");
  el.hidden = !text;
  el.textContent = text || "";
}

function authHeaders() {
  return ui.key ? { Authorization: `Bearer ${ui.key}` } : {};
}

// -- the event stream ---------------------------------------------------------------------
async function connect() {
  if (ui.abort) ui.abort.abort();
  const ctl = new AbortController();
  ui.abort = ctl;
  let again = true;
  try {
    const r = await fetch("events", { headers: authHeaders(), cache: "no-store",
                                      signal: ctl.signal });
    if (r.status === 401) {
      again = false; // nothing to retry until a key is entered
      setConn("needs a key", "bad");
      notice("This gateway requires an API key to show the fleet: enter a client or admin key above.");
      return;
    }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    setConn("live", "ok");
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let at;
      while ((at = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, at);
        buf = buf.slice(at + 2);
        onBlock(block);
      }
    }
  } catch (err) {
    if (ctl.signal.aborted) return; // replaced by a newer connection
  } finally {
    if (ui.abort === ctl && again && !ctl.signal.aborted) {
      setConn("reconnecting", "warn");
      setTimeout(connect, ui.retryMs);
    }
  }
}

function onBlock(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a comment: the server's heartbeat
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "retry" && /^\d+$/.test(value)) ui.retryMs = Number(value);
  }
  if (!data.length) return;
  const body = JSON.parse(data.join("\n"));
  if (event === "hello") onHello(body);
  else if (event === "state") onState(body);
  else if (event === "tick") onTick(body);
  else if (event === "request") onRequest(body);
}

function setConn(text, kind) {
  const el = $("conn");
  el.textContent = text;
  el.className = `badge ${kind || "muted"}`;
}

function onHello(hello) {
  ui.viewer = hello.viewer;
  ui.series = hello.series || [];
  ui.requests = hello.requests || [];
  const w = hello.worker;
  $("worker").textContent = `this gateway worker only: pid ${w.pid} on ${w.host}`;
  const v = $("viewer");
  if (ui.viewer.admin) v.textContent = "admin";
  else if (ui.key && ui.viewer.key_id) v.textContent = `key ${ui.viewer.key_id} (read-only)`;
  else if (ui.key) v.textContent = "key is not an admin key (read-only)";
  else v.textContent = hello.admin_enabled ? "read-only (enter the admin key to act)"
                                           : "read-only (no admin keys configured)";
  notice("");
  renderRequests();
  renderCharts();
}

function onState(state) {
  ui.state = state;
  renderHealth(state.health);
  renderCacheRatio(state.cache);
  renderRouting(state.routing);
  renderNodes(state.nodes);
  renderModels(state.models);
  renderScaleEvents(state.scale_events || []);
}

function onTick(point) {
  ui.series.push(point);
  const cutoff = point.t - WINDOW_SECS - 5;
  while (ui.series.length && ui.series[0].t < cutoff) ui.series.shift();
  renderCharts();
}

function onRequest(item) {
  ui.requests.unshift(item);
  ui.requests.length = Math.min(ui.requests.length, REQUESTS_KEPT);
  renderRequests();
}

// -- panels -------------------------------------------------------------------------------
function renderHealth(health) {
  const el = $("health");
  const kind = { ok: "ok", degraded: "warn", impaired: "bad" }[health.status] || "";
  const n = health.nodes;
  el.className = `badge ${kind}`;
  el.textContent = `fleet ${health.status}: ${n.healthy}/${n.total} nodes healthy` +
    (n.drained ? `, ${n.drained} drained` : "");
}

function pct(ratio) {
  return ratio === null || ratio === undefined ? "–" : `${Math.round(ratio * 100)}%`;
}

function renderCacheRatio(cache) {
  $("cache-ratio").textContent = `prompt cache ${pct(cache && cache.hit_ratio)} reused`;
}

function renderRouting(routing) {
  const parts = Object.entries(routing || {}).sort((a, b) => b[1] - a[1]);
  $("routing").textContent = parts.length
    ? `routed: ${parts.map(([reason, n]) => `${reason} ${n}`).join(" · ")}` : "routed: –";
}

function cacheLine(c) {
  if (!c || c.enabled === undefined) return null;
  if (!c.enabled) return h("div", { class: "muted", text: "session cache off" });
  const tier = (name, t) => t ? `${name} ${fmt(t.used_mb)} / ${t.budget_mb.toLocaleString()} MB` : null;
  return h("div", { class: "cache muted", "data-cache": "" }, h("span", { text: [
    "session cache", tier("RAM", c.ram), tier("disk", c.disk),
    `${c.hits ?? 0} hits, ${c.misses ?? 0} misses`, `${pct(c.hit_ratio)} of prompt tokens reused`,
  ].filter(Boolean).join(" · ") }));
}

function progressCell(p) {
  if (!p) return h("div", { class: "progress" }, bar(0, "load"), h("div", { class: "label", text: "loading" }));
  const pct = Math.round((p.fraction || 0) * 100);
  let label = `${p.phase} ${pct}%`;
  if (p.bytes_total) label += ` · ${fmtBytes(p.bytes_done)} / ${fmtBytes(p.bytes_total)}`;
  if (p.eta_secs !== null && p.eta_secs !== undefined) label += ` · ETA ${fmtSecs(p.eta_secs)}`;
  return h("div", { class: "progress", "data-progress": String(p.fraction) },
           bar(p.fraction, "load"), h("div", { class: "label", text: label }));
}

function statusBadge(status) {
  return badge(status, { loaded: "ok", loading: "warn", recovering: "bad" }[status] || "");
}

function nodeCard(name) {
  let card = ui.cards.get(name);
  if (card) return card;
  const el = h("article", { class: "node", "data-node": name });
  const head = h("div", { class: "node-head" });
  const devices = h("div");
  const models = h("div");
  const select = h("select", { "aria-label": `model to load on ${name}` });
  const actions = h("div", { class: "actions" });
  el.append(head, devices, models, actions);
  card = { el, head, devices, models, actions, select, options: "" };
  ui.cards.set(name, card);
  return card;
}

function renderNodes(nodes) {
  const root = $("nodes");
  const names = new Set(nodes.map((n) => n.name));
  for (const [name, card] of ui.cards) {
    if (!names.has(name)) { card.el.remove(); ui.cards.delete(name); }
  }
  for (const n of nodes) {
    const card = nodeCard(n.name);
    if (!card.el.isConnected) root.append(card.el);
    card.el.classList.toggle("down", !n.healthy);
    card.el.classList.toggle("drained", n.drained);
    fill(card.head,
      h("strong", { text: n.name }),
      badge(n.healthy ? "healthy" : "unhealthy", n.healthy ? "ok" : "bad"),
      n.drained ? badge("drained", "warn") : null,
      n.activation === "pre_warming" ? badge("pre-warming", "info") : null,
      n.healthy ? null : h("span", { class: "muted", text: n.last_error || "" }),
    );
    card.devices.replaceChildren(...n.devices.map((d) => {
      const total = d.vram_total_mb || 0;
      const used = total - (d.vram_free_mb || 0);
      const frac = total ? used / total : 0;
      return h("div", { class: "device" },
        h("div", { class: "label" },
          h("span", { text: `#${d.index} ${d.name || d.kind || "device"}` }),
          h("span", { text: `${used.toLocaleString()} / ${total.toLocaleString()} MB used` +
                            (d.utilization_pct !== null && d.utilization_pct !== undefined
                              ? ` · util ${d.utilization_pct}%` : "") })),
        bar(frac, `mem ${frac > 0.9 ? "high" : ""}`));
    }));
    card.models.replaceChildren(...[cacheLine(n.cache), modelsOnNode(n)].filter(Boolean));
    renderActions(card, n);
  }
}

function modelsOnNode(n) {
  if (!n.models.length) return h("p", { class: "empty", text: "no models loaded" });
  const rows = n.models.map((m) => h("tr", { "data-model": m.public_id, "data-status": m.status },
    h("td", { text: m.public_id, title: m.id }),
    h("td", {}, m.status === "loading" ? progressCell(m.progress) : statusBadge(m.status)),
    h("td", { class: "num", text: m.slots ?? "–" }),
    h("td", { class: "num", text: m.in_flight }),
    h("td", { class: "num", text: m.queue_depth }),
    h("td", { class: "num", text: m.status === "loaded" ? fmt(m.tok_s_decode) : "–" }),
    h("td", { class: "num", text: m.ttl_left_secs === null ? "–" : fmtSecs(m.ttl_left_secs) }),
    h("td", {}, ui.viewer.admin && m.status === "loaded"
      ? h("button", { class: "danger", "data-action": "unload", text: "Unload",
                      onclick: () => act(`Unload ${m.public_id} from ${n.name}?`,
                                         `nodes/${encodeURIComponent(n.name)}/models/unload`,
                                         { model: m.id }) })
      : null)));
  return h("table", {},
    h("thead", {}, h("tr", {}, h("th", { text: "model" }), h("th", { text: "status" }),
      h("th", { class: "num", text: "slots" }), h("th", { class: "num", text: "in flight" }),
      h("th", { class: "num", text: "queue" }), h("th", { class: "num", text: "tok/s" }),
      h("th", { class: "num", text: "idle TTL" }), h("th"))),
    h("tbody", {}, rows));
}

function renderActions(card, n) {
  if (!ui.viewer.admin) { card.actions.replaceChildren(); card.built = false; return; }
  const node = encodeURIComponent(n.name);
  if (!card.built) { // built once: re-inserting the select would close it under the mouse
    card.options = "";
    card.drainSlot = h("span");
    card.loadButton = h("button", { "data-action": "load", text: "Load",
      onclick: () => card.select.value && act(`Load ${card.select.value} on ${n.name}?`,
                                              `nodes/${node}/models/load`,
                                              { model: card.select.value }) });
    card.actions.replaceChildren(card.drainSlot, card.select, card.loadButton);
    card.drained = null;
    card.built = true;
  }
  const options = JSON.stringify(n.loadable);
  if (card.options !== options) { // keep the operator's choice while the list is the same
    const keep = card.select.value;
    card.select.replaceChildren(...n.loadable.map((id) => h("option", { value: id, text: id })));
    if (n.loadable.includes(keep)) card.select.value = keep;
    card.options = options;
  }
  card.loadButton.disabled = !n.loadable.length;
  if (card.drained !== n.drained) {
    card.drained = n.drained;
    card.drainSlot.replaceChildren(n.drained
      ? h("button", { "data-action": "undrain", text: "Undrain",
                      onclick: () => act(`Undrain ${n.name}? It takes new requests again.`,
                                         `nodes/${node}/undrain`) })
      : h("button", { class: "danger", "data-action": "drain", text: "Drain",
                      onclick: () => act(`Drain ${n.name}? It takes no new requests.`,
                                         `nodes/${node}/drain`) }));
  }
}

async function act(question, path, body) {
  if (!window.confirm(question)) return;
  notice("");
  try {
    const r = await fetch(`../admin/${path}`, {
      method: "POST", cache: "no-store",
      headers: { ...authHeaders(), "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    const reply = await r.json().catch(() => ({}));
    if (!r.ok) notice(`${question.replace(/\?.*$/, "")} failed: ${reply.error?.message || `HTTP ${r.status}`}`);
  } catch (err) {
    notice(`${question.replace(/\?.*$/, "")} failed: ${err.message}`);
  }
}

function renderModels(models) {
  const rows = models.map((m) => h("tr", { "data-model": m.id },
    h("td", {}, h("span", { text: m.id }), m.catalogued ? null : h("span", { class: "muted", text: " (not catalogued)" })),
    h("td", { text: m.aliases.join(", ") || "–" }),
    h("td", { text: m.pinned_on.join(", ") || "–" }),
    h("td", {}, m.replicas
      ? h("span", { title: `min ${m.replicas.min}, max ${m.replicas.max}` },
          badge(`${m.replicas.serving} of ${m.replicas.min}..${m.replicas.max}`,
                m.replicas.saturated_secs !== null ? "warn" : "ok"),
          m.replicas.saturated_secs !== null
            ? h("span", { class: "muted", text: ` saturated ${fmtSecs(m.replicas.saturated_secs)}` }) : null)
      : "–"),
    h("td", {}, m.locations.length
      ? m.locations.map((l) => h("span", { class: "chip" },
          l.status === "loading" && l.progress
            ? badge(`${l.node}: loading ${Math.round(l.progress.fraction * 100)}%`, "warn")
            : badge(`${l.node}: ${l.status}`, { loaded: "ok", loading: "warn", recovering: "bad" }[l.status])))
      : h("span", { class: "muted", text: "not loaded" })),
    h("td", { text: m.feasible_on.join(", ") || "–" }),
    h("td", { text: m.keep_alive_secs
      ? m.locations.filter((l) => l.ttl_left_secs !== null)
          .map((l) => `${l.node}: ${fmtSecs(l.ttl_left_secs)} left`).join(", ") ||
        `${fmtSecs(m.keep_alive_secs)} when idle`
      : "never" })));
  $("models").tBodies[0].replaceChildren(...(rows.length ? rows
    : [h("tr", {}, h("td", { class: "empty", colSpan: 7, text: "no models in the catalogue or on any node" }))]));
}

function renderScaleEvents(events) {
  const rows = events.slice().reverse().map((e) => h("tr", {},
    h("td", { text: new Date(e.at * 1000).toLocaleTimeString() }),
    h("td", { text: e.model }), h("td", { text: e.action }), h("td", { text: e.reason }),
    h("td", { text: e.node || "–" }),
    h("td", { title: e.detail || "" }, badge(e.result, { ok: "ok", failed: "bad", skipped: "warn" }[e.result]))));
  $("scale-events").tBodies[0].replaceChildren(...(rows.length ? rows
    : [h("tr", {}, h("td", { class: "empty", colSpan: 6, text: "none yet" }))]));
}

// The newest requests only (a busy gateway would fill the page): `requestsShown` of them,
// more on demand, the rest of the REQUESTS_KEPT behind "show more".
function renderRequests() {
  const shown = ui.requests.slice(0, ui.requestsShown);
  const rows = shown.map((r) => h("tr", { "data-seq": r.seq },
    h("td", { text: new Date(r.at * 1000).toLocaleTimeString() }),
    h("td", { text: r.model }), h("td", { text: r.node }),
    h("td", {}, badge(r.code ? `${r.status} ${r.code}` : String(r.status), r.status < 400 ? "ok" : "bad")),
    h("td", { class: "num", text: r.ttft_ms === null ? "–" : `${fmt(r.ttft_ms, 0)} ms` }),
    h("td", { class: "num", text: fmt(r.tok_s) }),
    h("td", { class: "num", text: `${r.prompt_tokens} / ${r.completion_tokens}` }),
    h("td", { text: r.key_id })));
  $("requests").tBodies[0].replaceChildren(...(rows.length ? rows
    : [h("tr", {}, h("td", { class: "empty", colSpan: 8, text: "no requests through this worker yet" }))]));
  const more = ui.requests.length - shown.length;
  $("requests-count").textContent = ui.requests.length > REQUESTS_PAGE
    ? `the newest ${shown.length} of ${ui.requests.length}` : "";
  $("requests-more").hidden = more <= 0;
  $("requests-more").textContent = `show ${Math.min(more, REQUESTS_PAGE)} more`;
  $("requests-fewer").hidden = ui.requestsShown <= REQUESTS_PAGE || shown.length <= REQUESTS_PAGE;
}

function setupRequests() {
  $("requests-more").addEventListener("click", () => {
    ui.requestsShown = Math.min(ui.requestsShown + REQUESTS_PAGE, REQUESTS_KEPT);
    renderRequests();
  });
  $("requests-fewer").addEventListener("click", () => {
    ui.requestsShown = REQUESTS_PAGE;
    renderRequests();
  });
}

// -- charts (canvas) ----------------------------------------------------------------------
function renderCharts() {
  const models = new Set();
  for (const p of ui.series) for (const m of Object.keys(p.models)) models.add(m);
  drawChart($("chart-rps"), "rps", models);
  drawChart($("chart-tps"), "tps", models);
  const last = ui.series[ui.series.length - 1];
  $("legend").replaceChildren(...[...models].sort().map((m) => {
    const now = last?.models[m] || { rps: 0, tps: 0 };
    const sw = h("span", { class: "swatch" });
    sw.style.background = colorOf(m);
    return h("li", { "data-model": m, "data-rps": String(now.rps), "data-tps": String(now.tps) },
             sw, `${m}: ${fmt(now.rps, 2)} req/s · ${fmt(now.tps)} tok/s`);
  }));
}

function drawChart(canvas, field, models) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 400;
  const hgt = canvas.clientHeight || 180;
  if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
  if (canvas.height !== Math.round(hgt * dpr)) canvas.height = Math.round(hgt * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, hgt);
  const pad = { l: 42, r: 8, t: 8, b: 18 };
  const now = ui.series.length ? ui.series[ui.series.length - 1].t : Date.now() / 1000;
  const t0 = now - WINDOW_SECS;
  let max = 0;
  for (const p of ui.series) for (const v of Object.values(p.models)) max = Math.max(max, v[field]);
  max = niceMax(max);
  const x = (t) => pad.l + ((t - t0) / WINDOW_SECS) * (w - pad.l - pad.r);
  const y = (v) => hgt - pad.b - (v / max) * (hgt - pad.t - pad.b);
  g.strokeStyle = "#e5e7eb";
  g.fillStyle = "#6b7280";
  g.font = "11px system-ui, sans-serif";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(w - pad.r, y(v)); g.stroke();
    g.fillText(Number.isInteger(v) ? String(v) : v.toFixed(v >= 10 ? 1 : 2), 4, y(v) + 4);
  }
  for (let m = 0; m <= WINDOW_SECS / 60; m++) {
    const t = now - m * 60;
    g.fillText(m ? `-${m}m` : "now", x(t) - (m ? 10 : 22), hgt - 4);
  }
  if (!models.size) {
    g.textAlign = "center";
    g.fillText("no requests in the last 5 minutes", (w + pad.l) / 2, hgt / 2);
    g.textAlign = "start";
  }
  g.lineWidth = 2;
  for (const m of models) {
    g.strokeStyle = colorOf(m);
    g.beginPath();
    let started = false;
    for (const p of ui.series) {
      if (p.t < t0) continue;
      const v = p.models[m] ? p.models[m][field] : 0;
      if (!started) { g.moveTo(x(p.t), y(v)); started = true; } else g.lineTo(x(p.t), y(v));
    }
    g.stroke();
  }
}

function niceMax(v) {
  if (v <= 0) return 1;
  const mag = 10 ** Math.floor(Math.log10(v));
  for (const f of [1, 2, 5, 10]) if (v <= f * mag) return f * mag;
  return 10 * mag;
}

// -- the key ------------------------------------------------------------------------------
function setupKey() {
  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    ui.key = $("key").value.trim();
    $("key").value = "";
    if (ui.key) sessionStorage.setItem(KEY_STORE, ui.key);
    else sessionStorage.removeItem(KEY_STORE);
    connect();
  });
  $("key-forget").addEventListener("click", () => {
    ui.key = "";
    sessionStorage.removeItem(KEY_STORE);
    connect();
  });
}

window.addEventListener("resize", renderCharts);
document.addEventListener("DOMContentLoaded", () => {
  setupKey();
  setupRequests();
  renderRequests();
  renderCharts();
  connect();
});
