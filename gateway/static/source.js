// "Start from an image": pick or drop an init image, paint (or upload) a mask, set the strength and how the
// image meets the size asked (crop, fit and fill, or stretch), or take the image's own size.
// Adds init_image, mask, strength and resize_mode to the request; without an image the page stays txt2img.
// The paint area has the image's shape and the mask the image's own pixels (up to MASK_SIDE on the longer side),
// so a painted mask lines up with it whatever the resize mode: brush or eraser, undo (Ctrl+Z), invert, zoom.
const $ = (id) => document.getElementById(id);
const state = { image: null, maskPainted: false, maskUpload: null, painting: false, last: null, size: null,
                undo: [] };
const MASK_SIDE = 2048;  // a larger image's mask is drawn at this and scaled by the server
const UNDO_STEPS = 20;

export function setup(useSize) {
  $("source-size").addEventListener("click", () => { if (state.size) useSize(...state.size); });
  $("init-image").addEventListener("change", () => load($("init-image").files[0]));
  $("mask-image").addEventListener("change", async () => {
    const file = $("mask-image").files[0];
    state.maskUpload = file ? await dataUrl(file) : null;
    describe();
  });
  const zone = $("source");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dropping"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dropping"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dropping");
    if (e.dataTransfer.files[0]) load(e.dataTransfer.files[0]);
  });
  $("strength").addEventListener("input", () => { $("strength-value").textContent = $("strength").value; });
  $("source-clear").addEventListener("click", clear);
  $("mask-clear").addEventListener("click", () => { remember(); clearCanvas(); changed(); });
  $("mask-undo").addEventListener("click", undo);
  $("mask-invert").addEventListener("click", invert);
  $("zoom").addEventListener("change", () => { $("paint").style.setProperty("--zoom", $("zoom").value); });
  const canvas = paintCanvas();
  canvas.addEventListener("pointerdown", (e) => {
    remember();
    state.painting = true;
    state.last = null;
    canvas.setPointerCapture(e.pointerId);
    paint(e);
  });
  canvas.addEventListener("pointermove", (e) => { if (state.painting) paint(e); });
  canvas.addEventListener("pointerup", () => { state.painting = false; changed(); });
  $("paint-scroll").addEventListener("keydown", (e) => {
    if (e.key === "z" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); undo(); }
  });
}

// The mask as it was before a stroke or an action, for Undo (the last UNDO_STEPS).
function remember() {
  const canvas = paintCanvas();
  state.undo.push(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height));
  if (state.undo.length > UNDO_STEPS) state.undo.shift();
  $("mask-undo").disabled = false;
}

function undo() {
  const last = state.undo.pop();
  if (last) paintCanvas().getContext("2d").putImageData(last, 0, 0);
  $("mask-undo").disabled = !state.undo.length;
  changed();
}

// What was painted is kept, what was not is painted: the mask's complement.
function invert() {
  remember();
  const canvas = paintCanvas();
  const ctx = canvas.getContext("2d");
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    d[i] = d[i + 1] = d[i + 2] = 255;
    d[i + 3] = 255 - d[i + 3];
  }
  ctx.putImageData(pixels, 0, 0);
  changed();
}

// Whether anything is painted now (after a stroke, an erase, an undo or an invert).
function changed() {
  const canvas = paintCanvas();
  const d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = false;
  // Every 4th pixel is enough; an eraser's soft edge leaves a faint alpha that repaints nothing.
  for (let i = 3; i < d.length; i += 16) if (d[i] >= 128) { painted = true; break; }
  state.maskPainted = painted;
  describe();
}

const paintCanvas = () => $("mask-canvas");

function clearCanvas() {
  const canvas = paintCanvas();
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

function imageSize(url) {
  return new Promise((resolve, reject) => {
    const probe = new Image();
    probe.onload = () => resolve([probe.naturalWidth, probe.naturalHeight]);
    probe.onerror = reject;
    probe.src = url;
  });
}

// A file (picked, dropped, or a result sent here from the page) as the start image.
export async function load(file) {
  if (!file) return;
  if (!/^image\/(png|jpeg|webp)$/.test(file.type)) {
    $("source-help").textContent = "Use a PNG, JPEG or WebP image.";
    return;
  }
  state.image = await dataUrl(file);
  try {
    state.size = await imageSize(state.image);
  } catch {
    state.image = null;
    $("source-help").textContent = "This image cannot be read; use another PNG, JPEG or WebP.";
    return;
  }
  const [w, h] = state.size;
  const img = $("source-preview");
  img.src = state.image;
  img.alt = `Start image: ${file.name}`;
  // The paint area takes the image's shape; the mask its pixels (at most MASK_SIDE on the longer side).
  $("paint").style.aspectRatio = `${w} / ${h}`;
  const canvas = paintCanvas();
  const scale = Math.min(1, MASK_SIDE / Math.max(w, h));
  canvas.width = Math.max(1, Math.round(w * scale));
  canvas.height = Math.max(1, Math.round(h * scale));
  state.undo = [];
  $("mask-undo").disabled = true;
  $("source-size").textContent = `Use its size (${w} × ${h})`;
  $("source-editor").hidden = false;
  clearCanvas();
  state.maskPainted = false;
  describe();
}

function paint(e) {
  // A stroke from the last point, so a quick drag leaves a line, not dots.
  const canvas = paintCanvas();
  const box = canvas.getBoundingClientRect();
  const point = [(e.clientX - box.left) * canvas.width / box.width, (e.clientY - box.top) * canvas.height / box.height];
  const ctx = canvas.getContext("2d");
  ctx.strokeStyle = "#fff";
  // The eraser takes paint away; the size is in screen pixels, whatever the mask's resolution and the zoom.
  ctx.globalCompositeOperation = $("tool-eraser").checked ? "destination-out" : "source-over";
  ctx.lineWidth = 2 * Number($("brush").value) * canvas.width / box.width;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(...(state.last || point));
  ctx.lineTo(...point);
  ctx.stroke();
  ctx.globalCompositeOperation = "source-over";
  state.last = point;
  if (!state.maskPainted && !$("tool-eraser").checked) { state.maskPainted = true; describe(); }
}

function paintedMask() {
  // White where painted, black elsewhere: what the API's mask means.
  const canvas = paintCanvas();
  const out = document.createElement("canvas");
  out.width = canvas.width;
  out.height = canvas.height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.drawImage(canvas, 0, 0);
  return out.toDataURL("image/png");
}

function clear() {
  Object.assign(state, { image: null, maskPainted: false, maskUpload: null, size: null });
  $("init-image").value = "";
  $("mask-image").value = "";
  $("source-editor").hidden = true;
  describe();
}

function describe() {
  $("source-help").textContent = !state.image ? "Optional: start from an image instead of noise."
    : state.maskPainted || state.maskUpload ? "Only the white (painted) parts are repainted."
    : "The whole image is repainted, as much as the strength says; paint over it to repaint only parts.";
}

function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

export function fields() {
  if (!state.image) return {};
  const out = { init_image: state.image, strength: Number($("strength").value), resize_mode: $("resize-mode").value };
  if (state.maskUpload) out.mask = state.maskUpload;
  else if (state.maskPainted) out.mask = paintedMask();
  return out;
}

export function restore(params) {
  if (params.resize_mode) $("resize-mode").value = params.resize_mode;
}
