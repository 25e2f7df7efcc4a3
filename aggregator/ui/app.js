// fedseg dashboard: a dependency-free page over the researcher API (token in sessionStorage).
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "fedseg.token";
const POLL_MS = 2000;
const ROUNDS_PAGE = 50; // rows of the rounds table drawn at once (newest first)
const COLORS = ["#0b57d0", "#b3261e", "#146c2e", "#8e24aa", "#e37400", "#00838f", "#5d4037",
  "#c2185b", "#3949ab", "#689f38", "#6d4c41", "#00695c", "#ad1457", "#283593", "#827717",
  "#4e342e", "#1565c0", "#d84315", "#2e7d32", "#6a1b9a"];
// Which metric keys are drawn, how, and what they are called.
const SERIES = [
  { key: "val_dice", label: "Dice (site's update)", dash: "", axis: "dice" },
  { key: "val_dice_global", label: "Dice (global model)", dash: "10 3 2 3", axis: "dice" },
  { key: "val_dice_personal", label: "Dice (personal model)", dash: "8 4", axis: "dice" },
  { key: "train_loss", label: "train loss", dash: "1 4", axis: "loss" },
];

const $ = (sel, root = document) => root.querySelector(sel);
const state = { timer: null, view: null, generation: 0 };

class ApiError extends Error {
  constructor(status, detail) { super(`HTTP ${status}: ${detail}`); this.status = status; }
}

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
const fmt = (v, d = 3) => (typeof v === "number" && isFinite(v) ? v.toFixed(d) : "—");
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
function bytes(n) {
  if (!n) return "0 B";
  const u = ["B", "KB", "MB", "GB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}
function ago(iso) {
  if (!iso) return "never";
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

// Replace an element's content only when it changed, and keep keyboard focus on the same
// link, button or control across the update (polling must not steal focus).
function setHtml(el, html) {
  if (el.dataset.html === html) return;
  const active = document.activeElement;
  const key = active && el.contains(active)
    ? (active.id ? `#${CSS.escape(active.id)}`
      : active.getAttribute("href") ? `[href="${CSS.escape(active.getAttribute("href"))}"]`
        : active.dataset.round ? `[data-round="${active.dataset.round}"]` : null)
    : null;
  const summaryOf = active && active.tagName === "SUMMARY" ? active.parentElement.dataset.round : null;
  el.innerHTML = html;
  el.dataset.html = html;
  const again = summaryOf ? el.querySelector(`details[data-round="${summaryOf}"] > summary`)
    : key ? el.querySelector(key) : null;
  if (again) again.focus();
}

// Replace the whole view (a new page): forget what setHtml remembered of it.
function resetView(html) {
  const view = $("#view");
  view.innerHTML = html;
  delete view.dataset.html;
}

async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const resp = await fetch(API + path, { headers: { Authorization: `Bearer ${token}` } });
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail; } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, detail);
  }
  return resp.json();
}

// ---- sign in ---------------------------------------------------------------------------------

function showLogin(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  stopPolling();
  resetView("");
  $("#login").hidden = false;
  $("#signout").hidden = true;
  $("#login-error").textContent = message || "";
  $("#token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $("#token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await api("/dashboard/experiments");
  } catch (err) {
    showLogin(err.status === 401 || err.status === 403
      ? `The token was refused (${err.message}).` : `The aggregator did not answer (${err.message}).`);
    return;
  }
  $("#token").value = "";
  $("#login").hidden = true;
  route();
}

// ---- routing and polling ---------------------------------------------------------------------

function stopPolling() { clearTimeout(state.timer); state.timer = null; state.generation++; }

function route() {
  if (!sessionStorage.getItem(TOKEN_KEY)) { showLogin(); return; }
  $("#login").hidden = true;
  $("#signout").hidden = false;
  stopPolling();
  resetView("");
  const hash = location.hash.replace(/^#\/?/, "") || "experiments";
  const [page, id] = hash.split("/");
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const views = { experiments: ExperimentsView, sites: SitesView, audit: AuditView };
  const View = page === "experiments" && id ? ExperimentView : views[page] || ExperimentsView;
  state.view = new View(id);
  const generation = state.generation;
  const tick = async (first) => {
    try {
      await state.view.refresh(first);
      if (generation !== state.generation) return;
      $("#live").textContent = `updated ${new Date().toLocaleTimeString()}`;
      if (first) {
        const heading = $("#view h2");
        if (heading) { heading.tabIndex = -1; if (state.focusOnRoute) heading.focus(); }
        // After the next frame: the content is on screen (what "first paint" measures).
        const mark = `fedseg:${page}${id ? "-detail" : ""}:painted`;
        requestAnimationFrame(() => setTimeout(() => performance.mark(mark), 0));
      }
    } catch (err) {
      if (err.status === 401) { showLogin(`The token was refused (${err.message}).`); return; }
      $("#live").textContent = `update failed: ${err.message}`;
      if (first) resetView(`<p class="error" role="alert">${esc(err.message)}</p>`);
    }
    if (generation === state.generation && !document.hidden) {
      state.timer = setTimeout(() => tick(false), POLL_MS);
    }
  };
  tick(true);
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && state.view && !state.timer && sessionStorage.getItem(TOKEN_KEY)) route();
});

// ---- experiments -----------------------------------------------------------------------------

class ExperimentsView {
  async refresh() {
    const rows = await api("/dashboard/experiments");
    const body = rows.map((e) => `<tr data-experiment="${esc(e.id)}">
        <td><a href="#/experiments/${encodeURIComponent(e.id)}">${esc(e.name)}</a></td>
        <td class="status-${esc(e.status)}">${esc(e.status)}</td>
        <td class="num">${e.rounds_done} / ${e.rounds}</td>
        <td class="num">${fmt(e.best_dice)}</td>
        <td>${when(e.created_at)}</td></tr>`).join("");
    setHtml($("#view"), `<h2>Experiments</h2>
      ${rows.length ? "" : '<p class="muted">No experiments yet.</p>'}
      <table><caption class="muted">Your experiments, newest first; updates live.</caption>
      <thead><tr><th scope="col">Name</th><th scope="col">Status</th>
      <th scope="col" class="num">Rounds done</th><th scope="col" class="num">Best mean Dice</th>
      <th scope="col">Created</th></tr></thead><tbody>${body}</tbody></table>`);
  }
}

// ---- one experiment --------------------------------------------------------------------------

class ExperimentView {
  constructor(id) {
    this.id = id; this.key = null; this.openRounds = new Set(); this.details = new Map();
  }

  get base() { return `/dashboard/experiments/${encodeURIComponent(this.id)}`; }

  async refresh(first) {
    // One aggregated answer (experiment, curves, rounds in a few numbers) while the run is
    // live or changed; a finished run is only checked for changes (one small request).
    let exp = first || this.live ? null : await api(`/experiments/${encodeURIComponent(this.id)}`);
    if (!exp || `${exp.status}:${exp.current_round}` !== this.key) {
      const page = await api(`${this.base}/page`);
      exp = page.experiment;
      const key = `${exp.status}:${exp.current_round}`;
      if (key !== this.key) this.details.clear();
      this.series = page.series; this.rounds = page.rounds; this.key = key;
    }
    this.live = exp.status === "running" || exp.status === "paused" || exp.status === "created";
    this.exp = exp;
    if (first) this.layout();
    this.render();
  }

  layout() {
    resetView(`<h2 id="exp-title"></h2>
      <p id="exp-status"></p>
      <section aria-labelledby="open-title"><h3 id="open-title">Open round</h3>
        <div id="open-round"></div></section>
      <section id="privacy-section" aria-labelledby="privacy-title" hidden>
        <h3 id="privacy-title">Differential privacy</h3><div id="privacy"></div></section>
      <section aria-labelledby="curves-title"><h3 id="curves-title">Dice and loss per round</h3>
        <div id="chart"></div></section>
      <section aria-labelledby="timeline-title"><h3 id="timeline-title">Round timeline</h3>
        <label for="timeline-round">Round</label>
        <select id="timeline-round"></select>
        <div id="timeline"></div></section>
      <section aria-labelledby="rounds-title"><h3 id="rounds-title">Rounds</h3>
        <div id="rounds"></div></section>
      <section aria-labelledby="plan-title"><h3 id="plan-title">Plan and config</h3>
        <pre id="config" tabindex="0" aria-label="experiment configuration (JSON)"></pre></section>`);
    $("#timeline-round").addEventListener("change", () => { this.picked = true; this.loadTimeline(); });
    $("#rounds").addEventListener("toggle", (ev) => this.expandRound(ev.target), true);
    $("#rounds").addEventListener("click", (ev) => {
      if (ev.target.id !== "more-rounds") return;
      this.shown = (this.shown ?? ROUNDS_PAGE) + ROUNDS_PAGE;
      this.renderRounds(); // keeps focus on the button (same id)
    });
  }

  render() {
    const e = this.exp;
    $("#exp-title").textContent = `Experiment ${e.name}`;
    setHtml($("#exp-status"), `Status <strong class="status-${esc(e.status)}">${esc(e.status)}</strong>;
      ${e.current_round} of ${e.config.rounds} rounds done; strategy ${esc(e.config.strategy.name)},
      personalisation ${esc(e.config.train.personalization?.method ?? "none")}.
      ${e.failure_reason ? `<span class="error">${esc(e.failure_reason)}</span>` : ""}`);
    this.renderOpenRound();
    this.renderPrivacy();
    setHtml($("#chart"), chart(this.series));
    this.renderRounds();
    const config = JSON.stringify({ ...e.config, participants: e.participants,
      local_keys: e.local_keys.length, spec_hash: e.spec_hash }, null, 2);
    if ($("#config").textContent !== config) $("#config").textContent = config;
    this.renderTimelineChoices();
  }

  renderOpenRound() {
    const open = [...this.rounds].reverse().find((r) => r.status === "open" || r.status === "aggregating");
    if (!open) { setHtml($("#open-round"), '<p class="muted">No round is open.</p>'); return; }
    const left = Math.max(0, (new Date(open.deadline) - Date.now()) / 1000);
    setHtml($("#open-round"), `<p id="open-round-text">Round ${open.number}
      (attempt ${open.attempt}, ${esc(open.status)}): ${open.reported} of ${open.sampled}
      sites reported; ${Math.round(left)} s to the deadline.</p>
      <progress class="progress" max="${open.sampled}" value="${open.reported}"
        aria-label="sites reported in round ${open.number}">${open.reported}/${open.sampled}</progress>`);
  }

  get dp() { return this.exp.config.privacy?.dp ?? null; }

  // ε spent so far and per round (the accountant's figures from the rounds API).
  renderPrivacy() {
    const dp = this.dp;
    $("#privacy-section").hidden = !dp;
    if (!dp) return;
    const closed = this.rounds.filter((r) => r.privacy);
    const last = closed[closed.length - 1];
    const budget = dp.epsilon_budget;
    const spent = last ? last.privacy.epsilon_total : 0;
    setHtml($("#privacy"), `<p id="privacy-text">Client-level DP (${esc(dp.mode)}): clip norm
      ${dp.clip_norm}, noise multiplier ${dp.noise_multiplier}, δ = ${dp.delta}.
      ε spent: <strong id="epsilon-total">${fmt(spent, 2)}</strong>
      ${last ? `after round ${last.number}` : "(no round closed yet)"}${
      budget ? ` of a budget of ${budget}` : " (no budget: ε is only reported)"}; ε of one
      round: <span id="epsilon-round">${last ? fmt(last.privacy.epsilon_round, 3) : "—"}</span>.</p>
      ${budget ? `<progress class="progress" max="${budget}" value="${Math.min(spent, budget)}"
        aria-label="privacy budget spent: ε ${fmt(spent, 2)} of ${budget}"></progress>` : ""}
      <p class="muted">The rounds table gives ε of each round and the total after it.</p>`);
  }

  renderRounds() {
    const dp = !!this.dp;
    const shown = this.shown ?? ROUNDS_PAGE;
    const rows = [...this.rounds].reverse().slice(0, shown).map((r) => {
      const k = `${r.number}:${r.attempt}`;
      const detail = this.openRounds.has(k) && this.details.get(k);
      return `<tr><td class="num">${r.number}</td><td class="num">${r.attempt}</td>
        <td class="status-${esc(r.status)}">${esc(r.status)}${r.reason ? ` — ${esc(r.reason)}` : ""}</td>
        <td class="num">${r.accepted} / ${r.sampled}</td><td class="num">${r.samples}</td>
        <td class="num">${bytes(r.bytes_up)}</td><td class="num">${bytes(r.bytes_down)}</td>
        ${dp ? `<td class="num eps-round">${fmt(r.privacy?.epsilon_round, 3)}</td>
          <td class="num eps-total">${fmt(r.privacy?.epsilon_total, 3)}</td>` : ""}
        <td><details data-round="${k}"${this.openRounds.has(k) ? " open" : ""}>
          <summary>${r.rejected ? `${r.rejected} rejected or failed; ` : ""}per site</summary>
          ${detail ? siteTable(detail) : ""}</details></td></tr>`;
    }).join("");
    setHtml($("#rounds"), `<table><caption class="muted">Newest first. Open a row's
      "per site" to see each site's status, samples, bytes and reasons.</caption>
      <thead><tr><th scope="col" class="num">Round</th><th scope="col" class="num">Attempt</th>
      <th scope="col">Status</th><th scope="col" class="num">Accepted</th>
      <th scope="col" class="num">Samples</th><th scope="col" class="num">Bytes up</th>
      <th scope="col" class="num">Bytes down</th>
      ${dp ? '<th scope="col" class="num">ε (round)</th><th scope="col" class="num">ε (total)</th>' : ""}
      <th scope="col">Sites</th></tr></thead>
      <tbody>${rows}</tbody></table>
      ${this.rounds.length > shown ? `<p><button type="button" id="more-rounds">Show ${
        Math.min(ROUNDS_PAGE, this.rounds.length - shown)} older rounds</button>
        <span class="muted">(${shown} of ${this.rounds.length} shown)</span></p>` : ""}`);
  }

  async expandRound(details) {
    if (!details.dataset || !details.dataset.round) return;
    const k = details.dataset.round;
    if (!details.open) { this.openRounds.delete(k); return; }
    this.openRounds.add(k);
    if (!this.details.has(k)) {
      const [n, attempt] = k.split(":");
      this.details.set(k, await api(`${this.base}/rounds/${n}?attempt=${attempt}`));
    }
    if (details.isConnected && !details.querySelector("table")) {
      details.insertAdjacentHTML("beforeend", siteTable(this.details.get(k)));
    }
  }

  renderTimelineChoices() {
    const sel = $("#timeline-round");
    const numbers = [...new Set(this.rounds.map((r) => r.number))].reverse();
    const want = numbers.map(String).join(",");
    const live = this.exp.status === "running" || this.exp.status === "paused";
    if (sel.dataset.numbers !== want) {
      const keep = sel.value;
      sel.dataset.numbers = want;
      sel.innerHTML = numbers.map((n) => `<option value="${n}">${n}</option>`).join("");
      // Follow the newest round unless the reader picked one.
      if (this.picked && keep && numbers.includes(Number(keep))) sel.value = keep;
    } else if (!live) {
      return;
    }
    this.loadTimeline();
  }

  async loadTimeline() {
    const n = $("#timeline-round").value;
    if (!n) { setHtml($("#timeline"), '<p class="muted">No round yet.</p>'); return; }
    const t = await api(`${this.base}/rounds/${n}`);
    setHtml($("#timeline"), timeline(t));
  }
}

function siteTable(r) {
  const rows = r.sites.map((s) => `<tr><td>${esc(s.site_name)}</td>
    <td class="status-${esc(s.status)}">${esc(s.status)}</td>
    <td class="num">${s.num_samples ?? "—"}</td><td class="num">${bytes(s.bytes_up)}</td>
    <td class="num">${bytes(s.bytes_down)}</td><td class="num">${fmt(s.metrics?.val_dice)}</td>
    <td class="num">${fmt(s.metrics?.val_dice_personal)}</td>
    <td class="num">${fmt(s.metrics?.train_loss)}</td>
    <td>${esc(s.reject_reason || s.failure_reason || "")}</td></tr>`).join("");
  return `<table><thead><tr><th scope="col">Site</th><th scope="col">Status</th>
    <th scope="col" class="num">Samples</th><th scope="col" class="num">Up</th>
    <th scope="col" class="num">Down</th><th scope="col" class="num">Dice</th>
    <th scope="col" class="num">Personal Dice</th><th scope="col" class="num">Loss</th>
    <th scope="col">Reason</th></tr></thead><tbody>${rows}</tbody></table>`;
}

// ---- the chart: one SVG, Dice on the left axis (0..1), loss on the right ---------------------

function swatch(color, dash) {
  return `<svg width="28" height="8" aria-hidden="true"><line x1="0" x2="28" y1="4" y2="4"
    stroke="${color}" stroke-width="3" stroke-dasharray="${dash}"/></svg> `;
}

function chart(series) {
  const rounds = series.rounds;
  if (!rounds.length) return '<p class="muted" id="no-curves">No closed round yet.</p>';
  const W = 960, H = 370, L = 48, R = 56, T = 28, B = 36;
  const xmax = Math.max(rounds[rounds.length - 1], rounds[0] + 1);
  const xmin = rounds[0];
  const x = (n) => L + ((n - xmin) / (xmax - xmin || 1)) * (W - L - R);
  let lossMax = 0;
  for (const s of series.sites) for (const v of s.train_loss || []) if (v > lossMax) lossMax = v;
  lossMax = lossMax || 1;
  const y = { dice: (v) => T + (1 - v) * (H - T - B), loss: (v) => T + (1 - v / lossMax) * (H - T - B) };
  const parts = [];
  for (let i = 0; i <= 5; i++) {
    const v = i / 5, yy = y.dice(v);
    parts.push(`<line x1="${L}" x2="${W - R}" y1="${yy}" y2="${yy}" stroke="#eee"/>`,
      `<text x="${L - 6}" y="${yy + 4}" text-anchor="end">${v.toFixed(1)}</text>`,
      `<text x="${W - R + 6}" y="${yy + 4}">${(lossMax * v).toPrecision(2)}</text>`);
  }
  const step = Math.max(1, Math.ceil(rounds.length / 10));
  for (let i = 0; i < rounds.length; i += step) {
    parts.push(`<text x="${x(rounds[i])}" y="${H - B + 16}" text-anchor="middle">${rounds[i]}</text>`);
  }
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle">round</text>`,
    `<text x="${L}" y="${T - 12}" text-anchor="middle">Dice</text>`,
    `<text x="${W - R}" y="${T - 12}" text-anchor="middle">loss</text>`);
  const legend = [], kinds = new Set();
  series.sites.forEach((site, i) => {
    const color = COLORS[i % COLORS.length];
    for (const kind of SERIES) {
      const values = site[kind.key];
      if (!values) continue;
      const f = y[kind.axis];
      let d = "", pen = "M";
      values.forEach((v, j) => {
        if (v === null) { pen = "M"; return; }
        d += `${pen}${x(rounds[j]).toFixed(1)},${f(kind.axis === "dice" ? Math.min(1, Math.max(0, v)) : v).toFixed(1)}`;
        pen = "L";
      });
      const opacity = kind.axis === "loss" ? 0.55 : 1;
      parts.push(`<path class="curve" data-site="${esc(site.site_name)}" data-kind="${kind.key}"
        data-points="${values.filter((v) => v !== null).length}" d="${d}" fill="none"
        stroke="${color}" stroke-width="2" stroke-dasharray="${kind.dash}" opacity="${opacity}"/>`);
      kinds.add(kind.key);
    }
    legend.push(`<li>${swatch(color, "")}${esc(site.site_name)}</li>`);
  });
  for (const kind of SERIES) {
    if (kinds.has(kind.key)) legend.push(`<li>${swatch("#444", kind.dash)}${kind.label}</li>`);
  }
  const last = rounds[rounds.length - 1];
  const lastOf = (values) => (values ? values[values.length - 1] : null);
  const summary = series.sites.map((s) => {
    const g = lastOf(s.val_dice_global), p = lastOf(s.val_dice_personal);
    return `${s.site_name} Dice ${fmt(lastOf(s.val_dice))}${g !== null ? `, global ${fmt(g)}` : ""}${
      p !== null ? `, personal ${fmt(p)}` : ""}`;
  }).join("; ");
  return `<svg class="chart" id="curves" viewBox="0 0 ${W} ${H}" role="img" font-size="11"
    aria-label="Dice and train loss per round for ${series.sites.length} sites over ${rounds.length} rounds; at round ${last}: ${esc(summary)}">
    <line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#888"/>
    <line x1="${W - R}" x2="${W - R}" y1="${T}" y2="${H - B}" stroke="#888"/>
    <line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#888"/>
    ${parts.join("")}</svg><ul class="legend" aria-label="legend: colour per site, line style per figure">${legend.join("")}</ul>`;
}

// ---- per-round timeline: fetch task, train, report (plus t_* phases when the API gives them) --

// Per-site download/train/upload seconds, where the site reports them in its metrics (issue 19).
function phasesOf(site) {
  const m = site.metrics || {};
  const p = ["t_download", "t_train", "t_upload"].filter((k) => typeof m[k] === "number");
  return p.length ? p.map((k) => [k.slice(2), m[k]]) : null;
}

function timeline(t) {
  if (!t.sites.length) return '<p class="muted">No site was sampled in this round.</p>';
  const ends = t.sites.flatMap((s) => [s.reported_s, s.delivered_s]).filter((v) => v !== null);
  if (t.closed_s !== null) ends.push(t.closed_s);
  const span = Math.max(1e-3, ...ends);
  const W = 960, L = 140, R = 20, rowH = 22, H = 30 + rowH * t.sites.length;
  const x = (s) => L + (s / span) * (W - L - R);
  const colors = { wait: "#d0d7de", work: "#9ec5fe", train: "#0b57d0", download: "#7fb77e",
    upload: "#e37400" };
  const rows = t.sites.map((s, i) => {
    const yy = 10 + i * rowH;
    let g = `<text x="${L - 6}" y="${yy + 13}" text-anchor="end">${esc(s.site_name)}</text>`;
    if (s.delivered_s !== null) {
      g += `<rect x="${x(0)}" y="${yy}" width="${x(s.delivered_s) - x(0)}" height="16" fill="${colors.wait}"><title>waiting for the site: ${fmt(s.delivered_s, 1)} s</title></rect>`;
    }
    const phases = phasesOf(s);
    if (phases) {
      let at = s.delivered_s ?? 0;
      for (const [name, secs] of phases) {
        g += `<rect x="${x(at)}" y="${yy}" width="${Math.max(1, x(at + secs) - x(at))}" height="16" fill="${colors[name]}"><title>${name}: ${fmt(secs, 1)} s</title></rect>`;
        at += secs;
      }
    } else if (s.delivered_s !== null && s.reported_s !== null) {
      g += `<rect x="${x(s.delivered_s)}" y="${yy}" width="${Math.max(1, x(s.reported_s) - x(s.delivered_s))}" height="16" fill="${colors.work}"><title>download, train, upload: ${fmt(s.reported_s - s.delivered_s, 1)} s</title></rect>`;
      if (s.train_s !== null) {
        const start = Math.max(s.delivered_s, s.reported_s - s.train_s);
        g += `<rect x="${x(start)}" y="${yy + 4}" width="${Math.max(1, x(s.reported_s) - x(start))}" height="8" fill="${colors.train}"><title>training: ${fmt(s.train_s, 1)} s</title></rect>`;
      }
    }
    return g;
  }).join("");
  const closed = t.closed_s !== null
    ? `<line x1="${x(t.closed_s)}" x2="${x(t.closed_s)}" y1="4" y2="${H - 20}" stroke="#b3261e"/>` : "";
  const rowsText = t.sites.map((s) => `${s.site_name}: ${s.status}, fetched at ${fmt(s.delivered_s, 1)} s, reported at ${fmt(s.reported_s, 1)} s`).join("; ");
  return `<svg class="chart" id="timeline-svg" viewBox="0 0 ${W} ${H}" font-size="11" role="img"
    aria-label="Timeline of round ${t.round}, attempt ${t.attempt}: ${esc(rowsText)}">${rows}${closed}
    <text x="${L}" y="${H - 4}">0 s (round opened)</text>
    <text x="${W - R}" y="${H - 4}" text-anchor="end">${fmt(span, 1)} s</text></svg>
    <p class="muted">Grey: waiting for the site to fetch its task; light blue: download, train and
    upload (dark blue: local training as the site reported it); red line: round closed.</p>`;
}

// ---- sites and audit log ---------------------------------------------------------------------

const DECISION = { approved: "approved", declined: "declined", pending: "pending" };

function policyText(p) {
  const parts = p.entries.map((e) => (e === "*" ? "every experiment"
    : e.startsWith("researcher:") ? "all your experiments" : `experiment ${e}`));
  if (p.hidden) parts.push(`${p.hidden} entr${p.hidden === 1 ? "y" : "ies"} about others' experiments`);
  return parts.length ? parts.join("; ") : "none: approves one by one";
}

function approvalText(a) {
  const by = a.by === "policy" ? " by its standing policy" : a.by === "site" ? " by the site" : "";
  const part = a.participant === null ? "" : a.participant ? "; taking part" : "; not taking part";
  return `<li data-experiment="${esc(a.experiment_id)}"><a href="#/experiments/${
    encodeURIComponent(a.experiment_id)}">${esc(a.experiment_name)}</a> (${esc(a.experiment_status)}):
    <span class="decision-${esc(a.decision)}">${DECISION[a.decision] ?? esc(a.decision)}</span>${by}${part}</li>`;
}

class SitesView {
  async refresh() {
    const sites = await api("/dashboard/sites");
    const rows = sites.map((s) => `<tr data-site="${esc(s.id)}"><td>${esc(s.name)}</td>
      <td class="status-${esc(s.status)}">${esc(s.status)}</td>
      <td>${ago(s.last_seen_at)}</td><td>${when(s.enrolled_at)}</td><td>${when(s.created_at)}</td>
      <td class="policy">${esc(policyText(s.policy))}</td>
      <td class="approvals">${s.approvals.length ? `<ul>${s.approvals.map(approvalText).join("")}</ul>`
        : '<span class="muted">no open experiment of yours invites it</span>'}</td></tr>`).join("");
    setHtml($("#view"), `<h2>Sites</h2><table><caption class="muted">Approvals: each site's
      decision on your experiments that have not ended (an explicit decision overrides the
      site's standing policy); only approved sites are sampled.</caption>
      <thead><tr><th scope="col">Name</th><th scope="col">Status</th><th scope="col">Last seen</th>
      <th scope="col">Enrolled</th><th scope="col">Registered</th>
      <th scope="col">Standing consent</th><th scope="col">Approvals</th></tr></thead>
      <tbody>${rows}</tbody></table>`);
  }
}

class AuditView {
  constructor() { this.events = []; this.after = 0; this.names = {}; }

  actor(actor) {
    const [kind, id] = actor.split(":");
    return kind === "site" && this.names[id] ? `site ${this.names[id]}` : actor;
  }

  async refresh(first) {
    if (first) {
      try { for (const s of await api("/sites")) this.names[s.id] = s.name; } catch (_) { /* ids only */ }
    }
    for (;;) {
      const page = await api(`/events?after=${this.after}&limit=1000`);
      this.events.push(...page);
      if (page.length) this.after = page[page.length - 1].id;
      if (page.length < 1000) break;
    }
    const changed = this.changed;
    if (!first && !changed) return;
    const rows = this.events.slice(-500).reverse().map((e) => `<tr><td class="num">${e.id}</td>
      <td>${when(e.at)}</td><td>${esc(this.actor(e.actor))}</td><td>${esc(e.kind)}</td>
      <td>${esc(e.experiment_id ?? "")}</td><td><code>${esc(JSON.stringify(e.detail))}</code></td></tr>`).join("");
    setHtml($("#view"), `<h2>Audit log</h2><p class="muted">${this.events.length} events;
      the newest 500 shown, newest first.</p><table><thead><tr><th scope="col" class="num">#</th>
      <th scope="col">When</th><th scope="col">Actor</th><th scope="col">Event</th>
      <th scope="col">Experiment</th><th scope="col">Detail</th></tr></thead>
      <tbody>${rows}</tbody></table>`);
  }

  get changed() { const c = this.after !== this.seen; this.seen = this.after; return c; }
}

// ---- start -----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", signIn);
  $("#signout").addEventListener("click", () => showLogin("Signed out."));
  window.addEventListener("hashchange", () => { state.focusOnRoute = true; route(); });
  route();
});
