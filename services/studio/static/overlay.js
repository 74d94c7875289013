// Masks: bit-packed rows (numpy packbits, big bit order), drawn as a coloured overlay.
// Usage: const bits = decodeB64(s); drawOverlay(ctx, [{bits, rgb:[r,g,b]}], w, h, 0.5, outline);

export function decodeB64(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function encodeB64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export function hexRgb(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

export function unpack(bits, w, h) {
  const w8 = (w + 7) >> 3, out = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) {
    const row = y * w8, o = y * w;
    for (let b = 0; b < w8; b++) {
      const v = bits[row + b];
      if (!v) continue;
      const x0 = b << 3;
      for (let k = 0; k < 8; k++) if (v & (128 >> k)) { const x = x0 + k; if (x < w) out[o + x] = 1; }
    }
  }
  return out;
}

export function area(bits) {
  let n = 0;
  for (let i = 0; i < bits.length; i++) { let v = bits[i]; while (v) { n += v & 1; v >>= 1; } }
  return n;
}

// layers: [{bits: Uint8Array packed, rgb: [r, g, b]}]; blends onto what ctx already shows.
export function drawOverlay(ctx, layers, w, h, opacity, outline) {
  if (!layers.length || opacity <= 0) return;
  const img = ctx.getImageData(0, 0, w, h);
  const px = img.data, a = Math.max(0, Math.min(1, opacity));
  for (const { bits, rgb } of layers) {
    const m = unpack(bits, w, h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        if (!m[i]) continue;
        if (outline) {
          const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
            !m[i - 1] || !m[i + 1] || !m[i - w] || !m[i + w];
          if (!edge) continue;
          const p = i * 4; px[p] = rgb[0]; px[p + 1] = rgb[1]; px[p + 2] = rgb[2];
        } else {
          const p = i * 4;
          px[p] = px[p] * (1 - a) + rgb[0] * a;
          px[p + 1] = px[p + 1] * (1 - a) + rgb[1] * a;
          px[p + 2] = px[p + 2] * (1 - a) + rgb[2] * a;
        }
      }
    }
  }
  ctx.putImageData(img, 0, 0);
}
