// "Start from an image": pick or drop an init image, paint (or upload) a mask, set the strength and how the
// image meets the size asked (crop, fit and fill, or stretch), or take the image's own size.
// Adds init_image, mask, strength and resize_mode to the request; without an image the page stays txt2img.
// The paint area has the image's shape, so a painted mask lines up with it whatever the resize mode.
const $ = (id) => document.getElementById(id);
const state = { image: null, maskPainted: false, maskUpload: null, painting: false, last: null, size: null };
const PAINT_SIDE = 512;  // the mask canvas's longer side

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
  $("mask-clear").addEventListener("click", () => { clearCanvas(); state.maskPainted = false; describe(); });
  const canvas = paintCanvas();
  canvas.addEventListener("pointerdown", (e) => {
    state.painting = true;
    state.last = null;
    canvas.setPointerCapture(e.pointerId);
    paint(e);
  });
  canvas.addEventListener("pointermove", (e) => { if (state.painting) paint(e); });
  canvas.addEventListener("pointerup", () => { state.painting = false; });
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
  // The paint area takes the image's shape; the canvas its shape at PAINT_SIDE on the longer side.
  $("paint").style.aspectRatio = `${w} / ${h}`;
  const canvas = paintCanvas();
  canvas.width = Math.max(1, Math.round(w >= h ? PAINT_SIDE : PAINT_SIDE * w / h));
  canvas.height = Math.max(1, Math.round(h >= w ? PAINT_SIDE : PAINT_SIDE * h / w));
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
  ctx.lineWidth = 2 * Number($("brush").value);
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(...(state.last || point));
  ctx.lineTo(...point);
  ctx.stroke();
  state.last = point;
  if (!state.maskPainted) { state.maskPainted = true; describe(); }
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
