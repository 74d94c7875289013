// The studio page: login, episode list, stats, service health; the annotate view is annotate.js.
// Usage: served by services/studio (open the URL `make up` prints). Plain ES modules, no build.

import { api, setToken, clearToken, hasToken, annotator, ApiError } from "./api.js";
import { Annotator } from "./annotate.js";

const $ = (id) => document.getElementById(id);
const views = ["login", "episodes", "stats", "annotate"];
export const ui = { project: null, episodes: [], sel: 0, view: null, down: {} };
window.studio = ui;  // read by the browser tests and the benchmark

export function say(text, error = false) {
  const m = $("message"); m.textContent = text || ""; m.className = error ? "error" : "";
}

export function fail(e) {
  if (e instanceof ApiError && e.status === 401) { clearToken(); show("login"); }
  say(e.message || String(e), true);
  if (e instanceof ApiError && e.status === 503) pollHealth();
}

function show(view) {
  ui.view = view;
  for (const v of views) $("view-" + v).hidden = v !== view;
  if (view !== "annotate" && ui.ann) ui.ann.leave();
}

async function route() {
  if (!hasToken()) return show("login");
  say("");
  $("whoami").textContent = annotator ? "annotator: " + annotator : "";
  try {
    if (!ui.project) {
      ui.project = await api("GET", "/api/project");
      $("project").textContent = `${ui.project.buffer} · ${ui.project.pipeline} · ${ui.project.n_episodes} episodes → ${ui.project.output}`;
    }
    const h = location.hash || "#episodes";
    const m = h.match(/^#episode\/(\d+)$/);
    if (m) {
      show("annotate");
      ui.ann = ui.ann || new Annotator(ui);
      await ui.ann.open(parseInt(m[1], 10));
    } else if (h === "#stats") { show("stats"); await loadStats(); }
    else { show("episodes"); await loadEpisodes(); }
  } catch (e) { fail(e); }
}

async function loadEpisodes() {
  const r = await api("GET", "/api/episodes");
  ui.episodes = r.episodes;
  const tb = document.querySelector("#episodes tbody");
  tb.innerHTML = "";
  r.episodes.forEach((e, i) => {
    const tr = document.createElement("tr");
    tr.dataset.episode = e.episode;
    if (i === ui.sel) tr.className = "sel";
    const cells = [e.episode, e.frames, e.status.replace("_", " "), e.round ?? "-", e.holder || "", e.prompts, e.note || ""];
    cells.forEach((c, j) => { const td = document.createElement("td"); td.textContent = c; if (j === 2) td.className = "st-" + e.status; tr.appendChild(td); });
    tr.onclick = () => { location.hash = "#episode/" + e.episode; };
    tb.appendChild(tr);
  });
}

async function loadStats() {
  const s = await api("GET", "/api/stats");
  const d = $("stats"); d.innerHTML = "";
  const table = (title, rows, cols) => {
    const h = document.createElement("h3"); h.textContent = title; d.appendChild(h);
    const t = document.createElement("table");
    t.innerHTML = "<thead><tr>" + ["", ...cols].map((c) => `<th>${c}</th>`).join("") + "</tr></thead>";
    const tb = document.createElement("tbody");
    for (const [k, v] of Object.entries(rows)) {
      const tr = document.createElement("tr");
      [k, ...cols.map((c) => v[c] ?? 0)].forEach((x) => { const td = document.createElement("td"); td.textContent = x; tr.appendChild(td); });
      tb.appendChild(tr);
    }
    t.appendChild(tb); d.appendChild(t);
  };
  table("Per annotator", s.per_annotator, ["prompts", "propagations", "rounds", "approved", "hard", "needs_round"]);
  table("Per round", s.per_round, ["saved", "approved", "hard", "needs_round"]);
  table("Episodes by status", { episodes: s.status }, ["new", "prompted", "propagated", "approved", "hard", "needs_round"]);
}

// -- service health: a down service is shown; the page recovers when it is back -------------
let healthTimer = null;
export async function pollHealth() {
  clearTimeout(healthTimer);
  let h = null;
  try { h = await api("GET", "/api/health"); } catch (e) { h = null; }
  const el = $("services");
  if (!h) {
    el.innerHTML = '<span class="down">studio offline</span>';
    $("banner").hidden = false; $("banner").textContent = "The studio does not answer; retrying…";
  } else {
    el.innerHTML = Object.entries(h.services).map(([k, ok]) => `<span class="${ok ? "ok" : "down"}">${k} ${ok ? "ok" : "DOWN"}</span>`).join(" ");
    const down = Object.entries(h.services).filter(([, ok]) => !ok).map(([k]) => k);
    const wasDown = Object.keys(ui.down).length > 0;
    ui.down = Object.fromEntries(down.map((k) => [k, true]));
    const msg = down.length ? `Service down: ${down.join(", ")} — start it with \`make up\`; the page reconnects by itself.` : h.project_error;
    $("banner").hidden = !msg; $("banner").textContent = msg || "";
    if (wasDown && !down.length) { say("services are back"); if (ui.view === "annotate" && ui.ann) ui.ann.recover(); }
  }
  healthTimer = setTimeout(pollHealth, Object.keys(ui.down).length || !h ? 1000 : 3000);
}

// -- login ------------------------------------------------------------------------------------
$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const r = await api("POST", "/api/login", { name: $("login-name").value, token: $("login-token").value || null });
    setToken(r.name, r.token);
    if (r.new) { $("login-token-shown").hidden = false; $("login-token-shown").textContent = `Your token (shown once, keep it): ${r.token}`; }
    say(`logged in as ${r.name}`);
    ui.project = null;
    await route();
  } catch (e) { fail(e); }
});

// -- keys of the list view ----------------------------------------------------------------
document.addEventListener("keydown", (ev) => {
  if (ev.target.closest && ev.target.closest("input, textarea")) return;
  if (ui.view === "episodes") {
    const n = ui.episodes.length;
    if (ev.key === "ArrowDown") { ui.sel = Math.min(n - 1, ui.sel + 1); loadEpisodes().catch(fail); ev.preventDefault(); }
    else if (ev.key === "ArrowUp") { ui.sel = Math.max(0, ui.sel - 1); loadEpisodes().catch(fail); ev.preventDefault(); }
    else if (ev.key === "Enter" && n) { location.hash = "#episode/" + ui.episodes[ui.sel].episode; }
  } else if (ui.view === "annotate" && ui.ann) {
    ui.ann.key(ev);
  }
});

window.addEventListener("hashchange", route);
pollHealth();
route();
