// vaetut explorers: the book's small decoders and a planar flow, run in the reader's browser.
//
// One dependency-free ES module: no build step, no third-party code, no network request.
// It holds
//   * the maths: float16 decoding, the forward pass of an MLP decoder (Linear, ReLU, Tanh
//     and a sigmoid or identity output, the layers of vaetut.vae.VAE's MLP decoder), and one
//     planar flow layer of vaetut.flows (the invertibility constraint u_hat, the map, its
//     log|det J|, its inverse by bisection and the transformed density of N(0, I));
//   * three widgets that mount on the <div data-vaetut-explorer="..."> elements written by
//     vaetut/explorer.py: "latent-plane", "latent-sliders" and "planar-flow".
//
// How it reaches a page: pages opened from disk (file://) may not load module files, import
// or fetch, so vaetut/explorer.py inlines this file verbatim in a <script type="module"> and
// appends `mountAll();`; a decoder's weights come from a classic <script src> file (allowed
// under file://) that assigns globalThis.VAETUT_EXPLORERS[name]. tests/js/*.mjs import this
// file in node and compare it with PyTorch.

export const FORMAT = "vaetut-explorer-1";

// ------------------------------------------------------------------ arrays
/** Bytes of a base64 string: Uint8Array. */
export function base64ToBytes(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/** The value of one IEEE 754 half-precision number given as its 16 bits. */
export function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return sign * f * 2 ** -24; // subnormal (and zero)
  if (e === 31) return f ? NaN : sign * Infinity;
  return sign * (1 + f / 1024) * 2 ** (e - 15);
}

let halfTable = null;

/** Little-endian float16 bytes -> Float32Array (exact: every half is a float32). */
export function float16ToFloat32(bytes) {
  if (bytes.length % 2) throw new Error(`float16 data needs an even number of bytes, got ${bytes.length}`);
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) halfTable[h] = halfToFloat(h);
  }
  const out = new Float32Array(bytes.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = halfTable[bytes[2 * i] | (bytes[2 * i + 1] << 8)];
  return out;
}

/** An exported array {dtype: "float16" | "uint8", shape, b64} -> Float32Array or Uint8Array. */
export function decodeArray(a) {
  const bytes = base64ToBytes(a.b64);
  const out = a.dtype === "float16" ? float16ToFloat32(bytes) : a.dtype === "uint8" ? bytes : null;
  if (!out) throw new Error(`unknown array dtype ${a.dtype}`);
  const n = a.shape.reduce((p, s) => p * s, 1);
  if (out.length !== n) throw new Error(`array of shape [${a.shape}] holds ${out.length} values, expected ${n}`);
  return out;
}

// ---------------------------------------------------------------- decoder
/**
 * A decoder from its export ({layers, image_shape, weights}): each linear layer's weight
 * [out, in] (row-major, as torch stores it) and then its bias [out], all float16; a layer of
 * dtype "float16x2" is followed by the float16 residual of the same values (w = hi + lo).
 */
export function buildDecoder(spec) {
  const w = float16ToFloat32(base64ToBytes(spec.weights));
  let off = 0;
  let dim = null;
  const layers = spec.layers.map((l) => {
    if (l.type === "linear") {
      if (dim !== null && l.in !== dim) throw new Error(`linear layer takes ${l.in} inputs after a layer of ${dim}`);
      const n = l.in * l.out + l.out;
      let values = w.subarray(off, (off += n));
      if (l.dtype === "float16x2") {
        const lo = w.subarray(off, (off += n));
        values = Float64Array.from(values, (v, i) => v + lo[i]);
      } else if (l.dtype !== "float16") throw new Error(`unknown weight dtype ${l.dtype}`);
      dim = l.out;
      return { type: "linear", in: l.in, out: l.out, W: values.subarray(0, l.in * l.out), b: values.subarray(l.in * l.out) };
    }
    if (!["relu", "tanh", "sigmoid", "identity"].includes(l.type)) throw new Error(`unknown layer type ${l.type}`);
    return { type: l.type };
  });
  if (off !== w.length) throw new Error(`the layers use ${off} values, the file holds ${w.length}`);
  const first = layers.find((l) => l.type === "linear");
  const [c, h, wd] = spec.image_shape;
  if (dim !== c * h * wd) throw new Error(`the decoder outputs ${dim} values, an image of [${spec.image_shape}] has ${c * h * wd}`);
  return { layers, inDim: first.in, outDim: dim, imageShape: spec.image_shape };
}

/** The decoder's output for one code z (array of inDim numbers): Float32Array [C*H*W]. */
export function forward(decoder, z) {
  if (z.length !== decoder.inDim) throw new Error(`the decoder takes ${decoder.inDim} numbers, got ${z.length}`);
  let x = Float64Array.from(z);
  for (const l of decoder.layers) {
    if (l.type === "linear") {
      const y = new Float64Array(l.out);
      for (let o = 0; o < l.out; o++) {
        // y_o = b_o + sum_i W[o, i] x_i
        let s = l.b[o];
        const row = o * l.in;
        for (let i = 0; i < l.in; i++) s += l.W[row + i] * x[i];
        y[o] = s;
      }
      x = y;
    } else if (l.type === "relu") {
      for (let i = 0; i < x.length; i++) if (x[i] < 0) x[i] = 0;
    } else if (l.type === "tanh") {
      for (let i = 0; i < x.length; i++) x[i] = Math.tanh(x[i]);
    } else if (l.type === "sigmoid") {
      // Bernoulli decoder: pixel probabilities from logits
      for (let i = 0; i < x.length; i++) x[i] = 1 / (1 + Math.exp(-x[i]));
    }
  }
  return Float32Array.from(x);
}

// ------------------------------------------------------------------ planar
const TINY = 1.1754943508222875e-38; // torch.finfo(torch.float32).tiny, the floor vaetut.flows uses

export function softplus(a) {
  return a > 0 ? a + Math.log1p(Math.exp(-a)) : Math.log1p(Math.exp(a));
}

const dot = (a, b) => a.reduce((s, ai, i) => s + ai * b[i], 0);

/** Rezende & Mohamed's constraint (vaetut.flows.planar_u_hat): w . u_hat = m(w . u) > -1. */
export function planarUHat(u, w) {
  const wu = dot(w, u);
  const wSq = Math.max(dot(w, w), TINY);
  // u_hat = u + (m(w.u) - w.u) w / |w|^2,  m(a) = -1 + log(1 + e^a)
  const k = (softplus(wu) - 1 - wu) / wSq;
  return u.map((ui, i) => ui + k * w[i]);
}

/** f(z) = z + u_hat tanh(w . z + b) and log|1 + (1 - tanh^2) w . u_hat| (vaetut.flows.planar). */
export function planarForward(z, uHat, w, b) {
  const t = Math.tanh(dot(w, z) + b);
  const det = 1 + (1 - t * t) * dot(w, uHat);
  return { z: z.map((zi, i) => zi + uHat[i] * t), logDet: Math.log(Math.max(Math.abs(det), TINY)) };
}

/** The inverse map by bisection on alpha = w . z (vaetut.flows.planar_inverse), and log|det dz/dy|. */
export function planarInverse(y, uHat, w, b, iters = 60) {
  const wy = dot(w, y);
  const wu = dot(w, uHat);
  let lo = wy - Math.abs(wu);
  let hi = wy + Math.abs(wu);
  for (let k = 0; k < iters; k++) {
    const mid = 0.5 * (lo + hi);
    if (mid + wu * Math.tanh(mid + b) > wy) hi = mid;
    else lo = mid;
  }
  const t = Math.tanh(0.5 * (lo + hi) + b);
  const z = y.map((yi, i) => yi - uHat[i] * t);
  return { z, logDet: -planarForward(z, uHat, w, b).logDet };
}

/**
 * log q(y) of y = f(z), z ~ N(0, I), for one planar layer with raw parameters u, w, b
 * (the constraint is applied here, as vaetut.flows.PlanarFlow does):
 * log q(y) = log N(f^{-1}(y); 0, I) + log|det d f^{-1}/dy|.
 */
export function planarLogDensity(y, u, w, b) {
  const uHat = planarUHat(u, w);
  const { z, logDet } = planarInverse(y, uHat, w, b);
  return -0.5 * dot(z, z) - 0.5 * z.length * Math.log(2 * Math.PI) + logDet;
}

/** Grid points of an n x n image of [-lim, lim]^2: row 0 at the top (y = +lim), as on a plot. */
export function gridPoint(i, j, n, lim) {
  return [-lim + (2 * lim * j) / (n - 1), lim - (2 * lim * i) / (n - 1)];
}

/** log q on the n x n grid of gridPoint: Float64Array [n*n], row-major. */
export function planarLogDensityGrid(u, w, b, lim, n) {
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) out[i * n + j] = planarLogDensity(gridPoint(i, j, n, lim), u, w, b);
  return out;
}

// ------------------------------------------------------------------- colours
const VIRIDIS = [
  [68, 1, 84], [71, 45, 123], [59, 82, 139], [44, 114, 142], [33, 145, 140],
  [40, 174, 128], [94, 201, 98], [173, 220, 48], [253, 231, 37],
];
const TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

export function viridis(t) {
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
  const k = Math.min(Math.floor(x), VIRIDIS.length - 2);
  const f = x - k;
  return VIRIDIS[k].map((c, i) => Math.round(c + f * (VIRIDIS[k + 1][i] - c)));
}

/** Pixel values [C*H*W] (in [0, 1]) as RGBA bytes [H*W*4], grey for one channel, as vaetut.plots shows them. */
export function toRGBA(values, imageShape) {
  const [c, h, w] = imageShape;
  const rgba = new Uint8ClampedArray(h * w * 4);
  for (let p = 0; p < h * w; p++) {
    for (let k = 0; k < 3; k++) {
      const v = values[(c === 1 ? 0 : k) * h * w + p];
      rgba[4 * p + k] = Math.round(255 * Math.min(Math.max(v, 0), 1));
    }
    rgba[4 * p + 3] = 255;
  }
  return rgba;
}

// ------------------------------------------------------------------- the DOM
const CSS = `
.vx { margin: 0.5em 0 1em; font-size: 0.9em; }
.vx-row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.vx canvas { image-rendering: pixelated; border: 1px solid #8884; max-width: 100%; }
.vx canvas.vx-density { image-rendering: auto; }
.vx canvas:focus { outline: 3px solid #1f77b4; outline-offset: 2px; }
.vx-side { display: flex; flex-direction: column; align-items: flex-start; gap: 0.4em; flex: 1 1 240px; min-width: 240px; }
.vx-readout { font-family: monospace; margin: 0; }
.vx-help { margin: 0; opacity: 0.8; max-width: 28em; }
.vx-sliders { display: grid; grid-template-columns: max-content 12em 3.5em; gap: 0.15em 0.6em; align-items: center; }
.vx-sliders label { font-family: monospace; }
.vx-sliders output { font-family: monospace; text-align: right; }
.vx-legend { display: flex; flex-wrap: wrap; gap: 0.2em 0.8em; margin: 0; padding: 0; list-style: none; }
.vx-legend span { display: inline-block; width: 0.8em; height: 0.8em; border-radius: 50%; margin-right: 0.25em; }
.vx-controls { display: flex; flex-wrap: wrap; gap: 0.5em; align-items: center; }
.vx-error { color: #d62728; }
.vx-sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
`;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function addStyle(doc) {
  if (doc.getElementById("vaetut-explorer-style")) return;
  doc.head.append(el("style", { id: "vaetut-explorer-style", text: CSS }));
}

let uid = 0;
const fmt = (v) => (v < 0 ? "" : "+") + v.toFixed(2);

/** Draws a decoder's output [C*H*W] on a canvas, `scale` screen pixels per image pixel. */
function imagePainter(canvas, imageShape, scale) {
  const [, h, w] = imageShape;
  const small = document.createElement("canvas");
  small.width = w;
  small.height = h;
  canvas.width = w * scale;
  canvas.height = h * scale;
  const ctx = canvas.getContext("2d");
  return (values) => {
    small.getContext("2d").putImageData(new ImageData(toRGBA(values, imageShape), w, h), 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(small, 0, 0, w * scale, h * scale);
  };
}

// ------------------------------------------------------------- latent plane
/**
 * The 2-D latent plane: the test codes' scatter, coloured by label, and the decoded image of
 * the code under the pointer (or moved with the arrow keys) beside it.
 */
export function mountLatentPlane(root, data, opts = {}) {
  const dec = buildDecoder(data.decoder);
  if (dec.inDim !== 2) throw new Error(`the latent plane needs a 2-D code, this decoder takes ${dec.inDim}`);
  const lim = opts.lim ?? 3;
  const size = opts.size ?? 360;
  const step = opts.step ?? 0.1;
  const ex = data.extras || {};
  const codes = ex.codes ? decodeArray(ex.codes) : new Float32Array(0);
  const labels = ex.labels ? decodeArray(ex.labels) : null;
  const id = `vx${++uid}`;

  const plane = el("canvas", {
    class: "vx-plane", width: size, height: size, tabindex: 0, role: "application", "aria-roledescription": "latent plane",
    "aria-label": `Latent plane: z1 across, z2 up, each from ${-lim} to ${lim}; dots are test images' codes. ` +
      "Arrow keys move the code (Shift for bigger steps, Home to return to 0, 0); the decoded image is shown beside it.",
    "aria-describedby": `${id}-readout`,
  });
  const image = el("canvas", { class: "vx-decoded", role: "img", "aria-label": "decoded image" });
  const readout = el("p", { class: "vx-readout", id: `${id}-readout` });
  // spoken after keyboard moves only: a pointer sweep would flood a screen reader
  const live = el("p", { class: "vx-sr vx-status", "aria-live": "polite", "aria-atomic": "true" });
  const legend = el("ul", { class: "vx-legend", "aria-label": "dot colours: digit labels of the test images" });
  if (labels) {
    for (const k of [...new Set(labels)].sort((a, b) => a - b)) {
      const sw = el("span", { "aria-hidden": "true" });
      sw.style.background = TAB10[k % 10];
      legend.append(el("li", {}, sw, `${k}`));
    }
  }
  const help = el("p", { class: "vx-help", text: "Move the pointer over the plane (or drag on a touch screen); or click it and use the arrow keys." });
  root.append(el("div", { class: "vx-row" }, plane, el("div", { class: "vx-side" }, image, readout, live, legend, help)));

  // the scatter is drawn once, off screen
  const bg = document.createElement("canvas");
  bg.width = bg.height = size;
  const b = bg.getContext("2d");
  b.fillStyle = "#fff";
  b.fillRect(0, 0, size, size);
  const toPx = (v) => ((v + lim) / (2 * lim)) * size;
  b.strokeStyle = "#ccc";
  for (let t = Math.ceil(-lim); t <= lim; t++) {
    b.beginPath(); b.moveTo(toPx(t), 0); b.lineTo(toPx(t), size); b.moveTo(0, size - toPx(t)); b.lineTo(size, size - toPx(t)); b.stroke();
  }
  b.fillStyle = "#777";
  b.font = "10px sans-serif";
  for (let t = Math.ceil(-lim); t <= lim; t++) {
    if (t !== Math.ceil(-lim)) b.fillText(String(t), toPx(t) + 2, size - 3); // z1 along the bottom
    b.fillText(String(t), 2, size - toPx(t) - 2); // z2 up the left side
  }
  b.fillText("z1 →", size - 30, size - 14);
  b.fillText("z2 ↑", 14, 12);
  b.globalAlpha = 0.6;
  for (let i = 0; i < codes.length / 2; i++) {
    b.fillStyle = labels ? TAB10[labels[i] % 10] : "#1f77b4";
    b.fillRect(toPx(codes[2 * i]) - 1, size - toPx(codes[2 * i + 1]) - 1, 2, 2);
  }
  b.globalAlpha = 1;

  const ctx = plane.getContext("2d");
  const paint = imagePainter(image, dec.imageShape, opts.scale ?? 8);
  let z = [0, 0];
  let last = null;

  function update(announce) {
    ctx.drawImage(bg, 0, 0);
    const px = toPx(z[0]);
    const py = size - toPx(z[1]);
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(px, py, 7, 0, 2 * Math.PI); ctx.moveTo(px - 11, py); ctx.lineTo(px + 11, py); ctx.moveTo(px, py - 11); ctx.lineTo(px, py + 11); ctx.stroke();
    last = forward(dec, z);
    paint(last);
    const text = `z = (${fmt(z[0])}, ${fmt(z[1])})`;
    image.setAttribute("aria-label", `decoded image at ${text}`);
    readout.textContent = text;
    if (announce) live.textContent = text;
  }
  const clamp = (v) => Math.min(Math.max(v, -lim), lim);
  const round = (v) => Math.round(v * 1e6) / 1e6;
  function setCode(c, announce = false) {
    z = [round(clamp(c[0])), round(clamp(c[1]))];
    update(announce);
  }
  function fromPointer(e) {
    const r = plane.getBoundingClientRect();
    setCode([-lim + (2 * lim * (e.clientX - r.left)) / r.width, lim - (2 * lim * (e.clientY - r.top)) / r.height]);
  }
  plane.addEventListener("pointermove", (e) => { if (e.pointerType === "mouse" || e.buttons) fromPointer(e); });
  plane.addEventListener("pointerdown", (e) => { plane.focus(); plane.setPointerCapture?.(e.pointerId); fromPointer(e); e.preventDefault(); });
  plane.addEventListener("keydown", (e) => {
    const s = e.shiftKey ? 5 * step : step;
    const moves = { ArrowLeft: [-s, 0], ArrowRight: [s, 0], ArrowUp: [0, s], ArrowDown: [0, -s] };
    if (moves[e.key]) setCode([z[0] + moves[e.key][0], z[1] + moves[e.key][1]], true);
    else if (e.key === "Home") setCode([0, 0], true);
    else return;
    e.preventDefault();
  });
  setCode(opts.start ?? [0, 0]);
  return { setCode: (c) => setCode(c), getCode: () => z.slice(), pixels: () => last, decoder: dec };
}

// ------------------------------------------------------------ latent sliders
/**
 * One slider per latent unit, ordered by KL (largest first), the decoded image beside them,
 * and a reset to the posterior mean of one of a few test images.
 */
export function mountLatentSliders(root, data, opts = {}) {
  const dec = buildDecoder(data.decoder);
  const D = dec.inDim;
  const ex = data.extras || {};
  const means = Float64Array.from(ex.means.flat()); // [M, D], posterior means to 0.01
  const M = ex.means.length;
  if (means.length !== M * D) throw new Error(`posterior means of ${D} units expected`);
  const inputs = ex.images ? decodeArray(ex.images) : null; // [M, C*H*W] uint8
  const order = ex.order ?? [...Array(D).keys()];
  const kl = ex.kl ?? null;
  let lim = opts.lim ?? 3;
  for (const m of means) lim = Math.max(lim, Math.ceil(Math.abs(m)));
  const id = `vx${++uid}`;

  const select = el("select", { id: `${id}-image` });
  for (let k = 0; k < M; k++) select.append(el("option", { value: k, text: ex.image_names?.[k] ?? `test image ${k + 1}` }));
  const reset = el("button", { type: "button", text: "Reset to its posterior mean" });
  const status = el("p", { class: "vx-readout vx-status", "aria-live": "polite", "aria-atomic": "true" });
  const grid = el("div", { class: "vx-sliders", role: "group", "aria-label": "latent units, largest KL first" });
  const sliders = new Array(D);
  const outs = new Array(D);
  for (const u of order) {
    const label = `z${u}` + (kl ? `, KL ${kl[u].toFixed(2)} nats` : "");
    const s = el("input", { type: "range", id: `${id}-z${u}`, min: -lim, max: lim, step: 0.01, value: 0, "aria-label": `latent unit ${label}` });
    const o = el("output", { for: `${id}-z${u}` });
    grid.append(el("label", { for: `${id}-z${u}`, text: label }), s, o);
    sliders[u] = s;
    outs[u] = o;
    s.addEventListener("input", () => update());
  }
  const original = el("canvas", { class: "vx-input", role: "img", "aria-label": "the chosen test image" });
  const image = el("canvas", { class: "vx-decoded", role: "img", "aria-label": "decoded image" });
  const scale = opts.scale ?? 6;
  const paint = imagePainter(image, dec.imageShape, scale);
  const paintOriginal = imagePainter(original, dec.imageShape, scale);
  root.append(
    el("div", { class: "vx-controls" }, el("label", { for: `${id}-image`, text: "Test image: " }), select, reset, status),
    el("div", { class: "vx-row" }, grid, el("div", { class: "vx-side" },
      el("div", { class: "vx-row" },
        el("figure", {}, original, el("figcaption", { text: "test image" })),
        el("figure", {}, image, el("figcaption", { text: "decoded from the sliders" }))),
      el("p", { class: "vx-help", text: "Each slider sets one unit of z; the others keep their values. Units near the bottom carry little KL: they should change little." }))),
  );

  let last = null;
  const code = () => sliders.map((s) => Number(s.value));
  function update() {
    const z = code();
    z.forEach((v, u) => (outs[u].value = v.toFixed(2)));
    last = forward(dec, z);
    paint(last);
    image.setAttribute("aria-label", `decoded image at z = (${z.map((v) => v.toFixed(2)).join(", ")})`);
  }
  function setCode(z) {
    z.forEach((v, u) => (sliders[u].value = String(v)));
    update();
  }
  function resetTo(k, announce = true) {
    select.value = String(k);
    if (inputs) {
      const n = dec.outDim;
      paintOriginal(Array.from(inputs.subarray(k * n, (k + 1) * n), (v) => v / 255));
    }
    setCode(Array.from(means.subarray(k * D, (k + 1) * D)));
    if (announce) status.textContent = `Sliders set to the posterior mean of ${select.options[k].text}.`;
  }
  reset.addEventListener("click", () => resetTo(Number(select.value)));
  select.addEventListener("change", () => resetTo(Number(select.value)));
  resetTo(0, false);
  return { setCode, getCode: code, reset: resetTo, pixels: () => last, decoder: dec };
}

// ------------------------------------------------------------- planar flow
/**
 * One planar layer f(z) = z + u_hat tanh(w . z + b) acting on z ~ N(0, I): u, w and b on
 * sliders, and the density of f(z) by the change of variables, recomputed on a grid.
 */
export function mountPlanarFlow(root, data, opts = {}) {
  const n = data.grid ?? 100;
  const lim = data.lim ?? 4;
  const range = data.range ?? 4;
  const size = opts.size ?? 360;
  const id = `vx${++uid}`;
  const p = { u: data.u.slice(), w: data.w.slice(), b: data.b };
  const names = [["u", 0, "u1"], ["u", 1, "u2"], ["w", 0, "w1"], ["w", 1, "w2"], ["b", null, "b"]];
  const grid = el("div", { class: "vx-sliders", role: "group", "aria-label": "parameters of the planar layer" });
  const sliders = {};
  const outs = {};
  for (const [key, i, name] of names) {
    const s = el("input", { type: "range", id: `${id}-${name}`, min: -range, max: range, step: 0.05, "aria-label": `planar layer parameter ${name}` });
    const o = el("output", { for: `${id}-${name}` });
    grid.append(el("label", { for: `${id}-${name}`, text: name }), s, o);
    sliders[name] = s;
    outs[name] = o;
    s.addEventListener("input", () => {
      if (i === null) p.b = Number(s.value);
      else p[key][i] = Number(s.value);
      update();
    });
  }
  const canvas = el("canvas", { class: "vx-density", width: size, height: size, role: "img", "aria-label": "density of f(z)" });
  const readout = el("p", { class: "vx-readout vx-status", "aria-live": "polite", "aria-atomic": "true" });
  const resetButton = el("button", { type: "button", text: "Reset" });
  root.append(el("div", { class: "vx-row" }, canvas, el("div", { class: "vx-side" }, grid, resetButton, readout,
    el("p", { class: "vx-help", text: `The image shows the density of f(z) for z ~ N(0, I) on [${-lim}, ${lim}]², brightest at its maximum. The layer uses û, not u: whatever the sliders say, w·û = m(w·u) > −1, so f stays invertible.` }))));

  const small = document.createElement("canvas");
  small.width = small.height = n;
  const ctx = canvas.getContext("2d");
  let logq = null;
  function update() {
    logq = planarLogDensityGrid(p.u, p.w, p.b, lim, n);
    let max = -Infinity;
    for (const v of logq) if (v > max) max = v;
    const rgba = new Uint8ClampedArray(n * n * 4);
    for (let k = 0; k < n * n; k++) {
      const c = viridis(Math.exp(logq[k] - max));
      rgba.set([c[0], c[1], c[2], 255], 4 * k);
    }
    small.getContext("2d").putImageData(new ImageData(rgba, n, n), 0, 0);
    ctx.imageSmoothingEnabled = true; // a density: smooth between grid points
    ctx.drawImage(small, 0, 0, size, size);
    const uHat = planarUHat(p.u, p.w);
    for (const [key, i, name] of names) {
      const v = i === null ? p.b : p[key][i];
      sliders[name].value = String(v);
      outs[name].value = v.toFixed(2);
    }
    const wu = dot(p.w, p.u);
    const wuh = dot(p.w, uHat);
    const text = `w·u = ${wu.toFixed(2)}${wu < -1 ? " (raw u would fold space)" : ""}; û = (${uHat.map((v) => v.toFixed(2)).join(", ")}), w·û = ${wuh.toFixed(2)} > −1`;
    readout.textContent = text;
    canvas.setAttribute("aria-label", `density of f(z) for u = (${p.u.map((v) => v.toFixed(2))}), w = (${p.w.map((v) => v.toFixed(2))}), b = ${p.b.toFixed(2)}; peak density ${Math.exp(max).toFixed(3)}`);
  }
  function setParams(q) {
    if (q.u) p.u = q.u.slice();
    if (q.w) p.w = q.w.slice();
    if (q.b !== undefined) p.b = q.b;
    update();
  }
  resetButton.addEventListener("click", () => setParams({ u: data.u, w: data.w, b: data.b }));
  update();
  return { setParams, params: () => ({ u: p.u.slice(), w: p.w.slice(), b: p.b }), logDensity: () => logq };
}

// -------------------------------------------------------------------- mount
const KINDS = { "latent-plane": mountLatentPlane, "latent-sliders": mountLatentSliders, "planar-flow": mountPlanarFlow };

/**
 * Mount every explorer element below `root` that is not mounted yet. Each element carries
 * data-vaetut-explorer (the kind), optionally data-name (the weights' key in
 * globalThis.VAETUT_EXPLORERS) and a <script type="application/json"> of options. On
 * success the still image (.vx-fallback) is hidden and element.vaetutExplorer holds the
 * widget's handle; on failure the still image stays and a message says why.
 */
export function mountAll(root = document) {
  const doc = root.ownerDocument || root;
  addStyle(doc);
  for (const node of root.querySelectorAll("[data-vaetut-explorer]")) {
    if (node.dataset.vaetutState) continue;
    try {
      const mount = KINDS[node.dataset.vaetutExplorer];
      if (!mount) throw new Error(`unknown explorer kind "${node.dataset.vaetutExplorer}"`);
      const optsNode = node.querySelector("script.vx-options");
      const opts = optsNode ? JSON.parse(optsNode.textContent) : {};
      let data = opts.data ?? null;
      if (node.dataset.name) {
        data = (globalThis.VAETUT_EXPLORERS || {})[node.dataset.name];
        if (!data) throw new Error(`the weights of "${node.dataset.name}" did not load (${node.dataset.src || "no file named"})`);
        if (data.format !== FORMAT) throw new Error(`"${node.dataset.name}" is in format ${data.format}, this explorer reads ${FORMAT}`);
      }
      const box = el("div", { class: "vx-live" });
      node.append(box);
      node.vaetutExplorer = mount(box, data, opts);
      for (const f of node.querySelectorAll(".vx-fallback")) f.hidden = true;
      node.dataset.vaetutState = "ready";
    } catch (err) {
      node.dataset.vaetutState = "error";
      node.append(el("p", { class: "vx-error", role: "alert", text: `This explorer could not start: ${err.message}. The still image shows its first view.` }));
      console.error("vaetut explorer:", err);
    }
  }
}
