// The annotate view: frames, objects, prompts, live masks, propagation, drift, review.
// Usage: const a = new Annotator(ui); await a.open(episode); document keydown -> a.key(ev).

import { api, image, stream } from "./api.js";
import { decodeB64, encodeB64, hexRgb, drawOverlay } from "./overlay.js";
import { say, fail } from "./app.js";

const $ = (id) => document.getElementById(id);
const PREFETCH = 12, MAX_BITMAPS = 400, SUSPICIOUS = 0.5;

export class Annotator {
  constructor(ui) {
    this.ui = ui; this.ep = null; this.t = 0; this.n = 0;
    this.canvas = $("canvas"); this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
    this.tl = $("timeline"); this.tctx = this.tl.getContext("2d");
    this.bitmaps = new Map(); this.loading = new Set();
    this.masks = new Map(); this.version = 0; this.drift = {}; this.prompts = [];
    this.objects = []; this.sel = 0; this.opacity = 0.5; this.outline = false;
    this.latencies = []; this.timings = []; this.displayed = []; this.last = null; this.status = "new";
    this.busy = false; this.drag = null; this.drawn = -1;
    this.bind();
  }

  // -- test / bench hooks -----------------------------------------------------------------
  maskB64(objId, t) { const a = this.masks.get(String(objId)); return a && a[t] ? encodeB64(a[t]) : null; }
  heldFrames(objId) { const a = this.masks.get(String(objId)); return a ? a.map((x) => !!x) : []; }

  // -- opening ---------------------------------------------------------------------------
  async open(ep) {
    if (this.ep !== ep) { this.bitmaps.clear(); this.masks.clear(); this.drift = {}; this.last = null; this.t = 0; }
    this.ep = ep;
    const p = this.ui.project;
    this.w = p.width; this.h = p.height;
    this.canvas.width = this.w; this.canvas.height = this.h;
    $("ep-no").textContent = ep;
    say(`opening episode ${ep}…`);
    const d = await api("GET", `/api/episodes/${ep}`);
    this.n = d.frames; this.objects = d.objects; this.prompts = d.prompts; this.status = d.status;
    this.sessionPropagated = d.session_propagated;
    this.renderSide(d);
    $("slider").max = this.n - 1;
    await this.loadFrame(this.t);
    this.render();
    const m = await api("POST", `/api/episodes/${ep}/open`, {});
    this.take(m);
    this.ready = true;
    say(`episode ${ep}: ${this.n} frames; click the ${this.objects[this.sel].name} to prompt it`);
    this.render();
  }

  async refresh() {
    const d = await api("GET", `/api/episodes/${this.ep}`);
    this.objects = d.objects; this.prompts = d.prompts; this.status = d.status;
    this.sessionPropagated = d.session_propagated;
    this.renderSide(d); this.drawTimeline();
  }

  async recover() { if (this.ep !== null) { try { this.take(await api("POST", `/api/episodes/${this.ep}/open`, {})); this.render(); } catch (e) { fail(e); } } }

  leave() { this.ready = false; }

  take(payload) {  // {version, frames: [{t, m: {obj: b64}}], drift}
    for (const f of payload.frames || []) this.setFrame(f.t, f.m);
    if (payload.drift) this.drift = payload.drift;
    if (payload.version !== undefined) this.version = payload.version;
  }

  setFrame(t, m) {
    for (const [oid, b] of Object.entries(m)) {
      if (!this.masks.has(oid)) this.masks.set(oid, new Array(this.n).fill(null));
      this.masks.get(oid)[t] = decodeB64(b);
    }
  }

  // -- frames ----------------------------------------------------------------------------
  async loadFrame(t) {
    if (this.bitmaps.has(t) || this.loading.has(t)) return;
    this.loading.add(t);
    try {
      const bm = await image(`/api/episodes/${this.ep}/frames/${t}`);
      this.bitmaps.set(t, bm);
      if (this.bitmaps.size > MAX_BITMAPS) {
        for (const k of this.bitmaps.keys()) { if (Math.abs(k - this.t) > PREFETCH * 2) { this.bitmaps.get(k).close(); this.bitmaps.delete(k); break; } }
      }
      if (t === this.t) this.render();
    } catch (e) { fail(e); } finally { this.loading.delete(t); }
  }

  prefetch() {
    for (let k = 1; k <= PREFETCH; k++) {
      for (const u of [this.t + k, this.t - k]) if (u >= 0 && u < this.n && !this.bitmaps.has(u) && this.loading.size < 6) this.loadFrame(u);
    }
  }

  go(t) {
    t = Math.max(0, Math.min(this.n - 1, t));
    this.t = t; $("slider").value = t;
    if (!this.bitmaps.has(t)) this.loadFrame(t);
    this.prefetch();
    this.render();
  }

  // -- drawing ---------------------------------------------------------------------------
  render() {
    const bm = this.bitmaps.get(this.t);
    const ctx = this.ctx;
    if (bm) ctx.drawImage(bm, 0, 0); else { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, this.w, this.h); }
    const layers = [];
    for (const o of this.objects) {
      const a = this.masks.get(String(o.obj_id));
      if (a && a[this.t]) layers.push({ bits: a[this.t], rgb: hexRgb(o.colour) });
    }
    drawOverlay(ctx, layers, this.w, this.h, this.opacity, this.outline);
    for (const p of this.prompts) {
      if (p.frame !== this.t) continue;
      const o = this.objects.find((x) => x.obj_id === p.obj_id);
      ctx.strokeStyle = o ? o.colour : "#fff"; ctx.lineWidth = 2;
      if (p.kind === "point") {
        ctx.fillStyle = p.data.label ? "#0f0" : "#f00";
        ctx.beginPath(); ctx.arc(p.data.x, p.data.y, 4, 0, 7); ctx.fill(); ctx.stroke();
      } else if (p.kind === "box") {
        const [x0, y0, x1, y1] = p.data.box; ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      }
    }
    if (this.drag) { const d = this.drag; ctx.strokeStyle = "#ff0"; ctx.strokeRect(d.x0, d.y0, d.x1 - d.x0, d.y1 - d.y0); }
    if (bm && this.drawn !== this.t) { this.displayed.push([this.t, performance.now()]); if (this.displayed.length > 5000) this.displayed.shift(); }
    if (bm) this.drawn = this.t;
    const keys = new Set(this.prompts.filter((p) => p.frame === this.t).map((p) => p.obj_id));
    $("frame-no").textContent = `frame ${this.t} / ${this.n - 1}`;
    $("keyinfo").textContent = keys.size ? "keyframe of " + [...keys].map((k) => this.name(k)).join(", ") : "";
    const s = this.score(this.t);
    if (s > 0) $("keyinfo").textContent += ` drift ${s.toFixed(2)}`;
    this.drawTimeline();
  }

  name(oid) { const o = this.objects.find((x) => x.obj_id === oid); return o ? o.name : String(oid); }

  score(t) { let s = 0; for (const v of Object.values(this.drift)) if (v[t] > s) s = v[t]; return s; }

  drawTimeline() {
    const c = this.tctx, W = this.tl.width, H = this.tl.height, n = Math.max(1, this.n);
    c.fillStyle = "#0d0e10"; c.fillRect(0, 0, W, H);
    const obj = this.objects[this.sel];
    const a = obj ? this.masks.get(String(obj.obj_id)) : null;
    for (let t = 0; t < this.n; t++) {
      const x = Math.floor((t / n) * W), wx = Math.max(1, Math.ceil(W / n));
      if (a && a[t]) { c.fillStyle = obj.colour + "88"; c.fillRect(x, H - 8, wx, 8); }
      const s = this.score(t);
      if (s > 0) { c.fillStyle = s >= SUSPICIOUS ? "#f44" : "#a66"; const hh = Math.round(s * (H - 14)); c.fillRect(x, H - 10 - hh, wx, hh); }
    }
    c.fillStyle = "#fff";
    for (const p of this.prompts) { const x = Math.floor((p.frame / n) * W); c.fillRect(x, 0, 2, 6); }
    c.fillStyle = "#ff0"; c.fillRect(Math.floor((this.t / n) * W), 0, 2, H);
  }

  renderSide(d) {
    $("ep-status").textContent = `${d.status.replace("_", " ")}${d.holder ? " · held by " + d.holder : ""}`;
    const box = $("objects"); box.innerHTML = "";
    this.objects.forEach((o, i) => {
      const div = document.createElement("div");
      div.className = "obj" + (i === this.sel ? " sel" : ""); div.dataset.objId = o.obj_id;
      const n = this.prompts.filter((p) => p.obj_id === o.obj_id).length;
      div.innerHTML = `<span class="swatch" style="background:${o.colour}"></span><b>${i + 1}</b> ${o.name} <small>id ${o.obj_id}${o.role ? " · " + o.role : " · free"} · ${n} prompts</small>`;
      div.onclick = () => { this.sel = i; this.renderSide(d); this.render(); };
      box.appendChild(div);
    });
    $("rounds").textContent = (d.rounds || []).map((r) => `round ${r.round}: ${r.verdict} by ${r.annotator}${r.note ? " — " + r.note : ""}`).join(" · ");
    if (d.note) $("note").placeholder = "last note: " + d.note;
  }

  // -- prompts ---------------------------------------------------------------------------
  xy(ev) {
    const r = this.canvas.getBoundingClientRect();
    return [Math.round(((ev.clientX - r.left) * this.w) / r.width), Math.round(((ev.clientY - r.top) * this.h) / r.height)];
  }

  tool() { return document.querySelector("input[name=tool]:checked").value; }

  async prompt(kind, data) {
    const o = this.objects[this.sel];
    const t0 = performance.now();
    try {
      const r = await api("POST", `/api/episodes/${this.ep}/prompts`, { obj_id: o.obj_id, frame: this.t, kind, data });
      this.setFrame(r.frame, r.masks); this.version = r.version;
      this.prompts.push({ obj_id: o.obj_id, frame: r.frame, kind, data, id: r.prompt_id });
      this.render();
      requestAnimationFrame(() => { this.latencies.push(performance.now() - t0); this.timings.push(r.timing_ms || {}); });
      say(`${o.name}: ${kind} on frame ${r.frame}` + (this.status === "propagated" ? " — correction: propagate (p) re-computes only the span it changes" : ""));
      this.refresh().catch(() => {});
    } catch (e) { fail(e); }
  }

  async undo(clear) {
    const o = this.objects[this.sel];
    try {
      const r = await api("POST", `/api/episodes/${this.ep}/${clear ? "clear" : "undo"}`, { obj_id: o.obj_id, frame: this.t });
      const m = await api("GET", `/api/episodes/${this.ep}/masks`);
      for (const a of this.masks.values()) a.fill(null);
      this.take(m); await this.refresh(); this.render();
      say(r.removed ? `${clear ? "cleared" : "undid"} ${r.removed} prompt(s) of ${o.name} on frame ${this.t}` : `no prompt of ${o.name} on frame ${this.t}`);
    } catch (e) { fail(e); }
  }

  // -- propagation -------------------------------------------------------------------------
  async propagate(direction) {
    if (this.busy) return say("a propagation is running", true);
    this.busy = true;
    // after a first propagation of this sam session, re-propagate only what the new prompts change
    const bounded = !!this.sessionPropagated;
    const bar = $("progress"); bar.hidden = false; bar.value = 0;
    $("prop-status").textContent = `propagating ${direction}…`;
    try {
      await stream(`/api/episodes/${this.ep}/propagate`, { direction, bounded }, (ev) => {
        if (ev.type === "progress") { bar.max = Math.max(1, ev.total); bar.value = ev.done; }
        else if (ev.type === "masks") {
          for (const f of ev.frames) this.setFrame(f.t, f.m);
          this.version = ev.version;
          if (ev.frames.some((f) => f.t === this.t)) this.render(); else this.drawTimeline();
        } else if (ev.type === "done") {
          this.version = ev.version; this.drift = ev.drift || {}; this.last = ev;
          this.showCorrection(ev);
        } else if (ev.type === "error") { throw new Error(ev.error); }
      });
      this.status = "propagated";
      await this.refresh(); this.render();
    } catch (e) { fail(e); } finally { this.busy = false; bar.hidden = true; $("prop-status").textContent = ""; }
  }

  showCorrection(ev) {
    const spans = (ev.spans || []).map(([o, a, b]) => `${this.name(o)} [${a}, ${b})`).join(", ");
    $("correction").textContent = `sam recomputed ${ev.recomputed} frame(s)` + (spans ? `: ${spans}` : "") +
      (ev.bounded ? " (bounded)" : ev.bounded_supported === false ? " (this sam has no bounded propagation)" : "") + ` in ${ev.seconds} s`;
    say(`propagated ${ev.direction}: ${ev.frames} frames`);
  }

  nextSuspicious(most) {
    const T = this.n;
    if (!Object.keys(this.drift).length) return say("no drift scores yet: propagate first", true);
    if (most) { let best = 0, bt = 0; for (let t = 0; t < T; t++) { const s = this.score(t); if (s > best) { best = s; bt = t; } } return this.go(bt); }
    for (let k = 1; k <= T; k++) { const t = (this.t + k) % T; if (this.score(t) >= SUSPICIOUS) return this.go(t); }
    say("no frame above the suspicion threshold");
  }

  // -- review ----------------------------------------------------------------------------
  async review(action) {
    try {
      const r = await api("POST", `/api/episodes/${this.ep}/review`, { action, note: $("note").value, version: this.version });
      $("note").value = "";
      const outs = r.outputs ? " → " + Object.values(r.outputs).join(", ") : "";
      say(`episode ${this.ep}: round ${r.round} ${r.verdict.replace("_", " ")}${outs}`);
      this.lastReview = r;
      await this.refresh();
    } catch (e) { fail(e); }
  }

  // -- input -----------------------------------------------------------------------------
  bind() {
    const cv = this.canvas;
    cv.addEventListener("contextmenu", (ev) => ev.preventDefault());
    cv.addEventListener("mousedown", (ev) => {
      if (!this.ready) return;
      const [x, y] = this.xy(ev);
      if (this.tool() === "box") { this.drag = { x0: x, y0: y, x1: x, y1: y }; return; }
      const label = ev.button === 2 || ev.altKey ? 0 : 1;
      this.prompt("point", { x, y, label });
    });
    cv.addEventListener("mousemove", (ev) => { if (this.drag) { [this.drag.x1, this.drag.y1] = this.xy(ev); this.render(); } });
    cv.addEventListener("mouseup", () => {
      const d = this.drag; this.drag = null;
      if (!d) return;
      const box = [Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.max(d.x0, d.x1), Math.max(d.y0, d.y1)];
      if (box[2] - box[0] < 3 || box[3] - box[1] < 3) { this.render(); return say("box too small: drag a rectangle", true); }
      box[2] = Math.min(box[2], this.w); box[3] = Math.min(box[3], this.h);
      this.prompt("box", { box });
    });
    $("slider").addEventListener("input", (ev) => this.go(parseInt(ev.target.value, 10)));
    this.tl.addEventListener("click", (ev) => { const r = this.tl.getBoundingClientRect(); this.go(Math.floor(((ev.clientX - r.left) / r.width) * this.n)); });
    $("btn-both").onclick = () => this.propagate("both");
    $("btn-forward").onclick = () => this.propagate("forward");
    $("btn-backward").onclick = () => this.propagate("backward");
    $("btn-next-drift").onclick = () => this.nextSuspicious(false);
    $("btn-max-drift").onclick = () => this.nextSuspicious(true);
    $("btn-approve").onclick = () => this.review("approve");
    $("btn-hard").onclick = () => this.review("hard");
    $("btn-again").onclick = () => this.review("again");
    $("btn-save").onclick = () => this.review("save");
    $("opacity").addEventListener("input", (ev) => { this.opacity = ev.target.value / 100; this.render(); });
    $("outline").addEventListener("change", (ev) => { this.outline = ev.target.checked; this.render(); });
    $("text-form").addEventListener("submit", (ev) => { ev.preventDefault(); const s = $("text-prompt").value.trim(); if (s) this.prompt("text", { text: s }); $("text-prompt").blur(); });
    $("add-object").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try { const o = await api("POST", `/api/episodes/${this.ep}/objects`, { name: $("new-object").value }); $("new-object").value = ""; await this.refresh(); this.sel = this.objects.findIndex((x) => x.obj_id === o.obj_id); await this.refresh(); } catch (e) { fail(e); }
    });
  }

  key(ev) {
    const k = ev.key, step = ev.shiftKey ? 10 : 1;
    const acts = {
      ArrowRight: () => this.go(this.t + step), ArrowLeft: () => this.go(this.t - step),
      Home: () => this.go(0), End: () => this.go(this.n - 1),
      z: () => this.undo(false), x: () => this.undo(true),
      p: () => this.propagate("both"), f: () => this.propagate("forward"), g: () => this.propagate("backward"),
      n: () => this.nextSuspicious(false), N: () => this.nextSuspicious(true),
      o: () => { $("outline").checked = !$("outline").checked; this.outline = $("outline").checked; this.render(); },
      "-": () => { this.opacity = Math.max(0, this.opacity - 0.1); $("opacity").value = this.opacity * 100; this.render(); },
      "=": () => { this.opacity = Math.min(1, this.opacity + 0.1); $("opacity").value = this.opacity * 100; this.render(); },
      b: () => { const r = document.querySelector(`input[name=tool][value=${this.tool() === "box" ? "point" : "box"}]`); r.checked = true; },
      t: () => $("text-prompt").focus(),
      a: () => this.review("approve"), h: () => this.review("hard"), r: () => this.review("again"), s: () => this.review("save"),
      Escape: () => { location.hash = "#episodes"; },
    };
    if (/^[1-9]$/.test(k) && parseInt(k, 10) <= this.objects.length) { this.sel = parseInt(k, 10) - 1; this.refresh().then(() => this.render()); ev.preventDefault(); return; }
    if (acts[k] && !(ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); acts[k](); }
  }
}
