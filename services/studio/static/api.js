// The studio's HTTP API: JSON calls with the token in a header (never in a URL).
// Usage: import { api, setToken } from "./api.js"; const eps = await api("GET", "/api/episodes");

let token = sessionStorage.getItem("studio-token") || null;
export let annotator = sessionStorage.getItem("studio-name") || null;

export function setToken(name, tok) {
  token = tok; annotator = name;
  sessionStorage.setItem("studio-token", tok);
  sessionStorage.setItem("studio-name", name);
}
export function clearToken() { token = null; annotator = null; sessionStorage.clear(); }
export function hasToken() { return !!token; }

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status; this.code = body && body.code; this.service = body && body.service;
  }
}

function headers(json) {
  const h = {};
  if (token) h["Authorization"] = "Bearer " + token;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

export async function api(method, path, body) {
  let r;
  try {
    r = await fetch(path, { method, headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, { error: "the studio does not answer (is it running?)", code: "offline" });
  }
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

export async function image(path) {
  const r = await fetch(path, { headers: headers(false) });
  if (!r.ok) {
    let data = null; try { data = await r.json(); } catch (e) { /* not JSON */ }
    throw new ApiError(r.status, data);
  }
  return await createImageBitmap(await r.blob());
}

// POST returning newline-delimited JSON events; onEvent(ev) for each, resolves at the end.
export async function stream(path, body, onEvent) {
  const r = await fetch(path, { method: "POST", headers: headers(true), body: JSON.stringify(body) });
  if (!r.ok) { let d = null; try { d = await r.json(); } catch (e) { /* */ } throw new ApiError(r.status, d); }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i); buf = buf.slice(i + 1);
      if (line.trim()) onEvent(JSON.parse(line));
    }
  }
  if (buf.trim()) onEvent(JSON.parse(buf));
}
