// "Start from an image": pick or drop an init image, paint (or upload) a mask, set the strength.
// Adds init_image, mask and strength to the request; without an image the page stays txt2img.
const $ = (id) => document.getElementById(id);
const state = { image: null, maskPainted: false, maskUpload: null, painting: false, last: null };

export function setup() {
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
  $("mask-clear").addEventListener("click", () => { paintCanvas().getContext("2d").clearRect(0, 0, 512, 512);
                                                    state.maskPainted = false; describe(); });
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

async function load(file) {
  if (!file) return;
  if (!/^image\/(png|jpeg|webp)$/.test(file.type)) {
    $("source-help").textContent = "Use a PNG, JPEG or WebP image.";
    return;
  }
  state.image = await dataUrl(file);
  const img = $("source-preview");
  img.src = state.image;
  img.alt = `Start image: ${file.name}`;
  $("source-editor").hidden = false;
  paintCanvas().getContext("2d").clearRect(0, 0, 512, 512);
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
  const out = document.createElement("canvas");
  out.width = out.height = 512;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, 512, 512);
  ctx.drawImage(paintCanvas(), 0, 0);
  return out.toDataURL("image/png");
}

function clear() {
  Object.assign(state, { image: null, maskPainted: false, maskUpload: null });
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
  const out = { init_image: state.image, strength: Number($("strength").value) };
  if (state.maskUpload) out.mask = state.maskUpload;
  else if (state.maskPainted) out.mask = paintedMask();
  return out;
}
