// Control on the page: up to three ControlNet units (GET /v1/controlnets lists the ControlNets, the
// IP-Adapters and the preprocessors). Each unit: a control image (or, left empty, the start image), a
// preprocessor, a ControlNet for the chosen model's family, weight, the part of the steps it steers and its
// control mode; "Show map" runs the preprocessor alone (POST /v1/detect) and shows the map the unit would use.
// The "ip-adapter" preprocessor makes a unit a reference image for an IP-Adapter (one per job).
const $ = (id) => document.getElementById(id);
const MAX_UNITS = 3;
const state = { nets: [], modules: [], family: "sd1", units: [], loaded: false };

export async function refresh() {
  if (state.loaded) return true;
  try {
    const r = await fetch("/v1/controlnets");
    if (!r.ok) return false;
    const body = await r.json();
    state.nets = body.controlnets;
    state.modules = body.modules.filter((m) => m.available);
  } catch { return false; }
  state.loaded = true;
  $("control-set").hidden = !state.nets.length;  // no ControlNet on the server: nothing to offer
  render();
  return true;
}

export function setup() {
  $("control-add").addEventListener("click", () => {
    if (state.units.length >= MAX_UNITS) return;
    state.units.push({ image: null, module: "canny", model: "", weight: 1, start: 0, end: 1, mode: "balanced" });
    render();
    $(`control-image-${state.units.length - 1}`).focus();
  });
}

// The chosen model's family: only its ControlNets are offered.
export function useFamily(family) {
  state.family = family || "sd1";
  if (state.loaded) render();
}

// The models a unit may name: the family's ControlNets, or its IP-Adapters for the ip-adapter module.
function netsFor(unit) {
  const kind = unit && unit.module === "ip-adapter" ? "ip-adapter" : "controlnet";
  return state.nets.filter((n) => (!n.family || n.family === state.family) && (n.kind || "controlnet") === kind);
}

function field(label, input) {
  const div = document.createElement("div");
  div.className = "field";
  const l = document.createElement("label");
  l.htmlFor = input.id;
  l.textContent = label;
  div.append(l, input);
  return div;
}

function select(id, options, value) {
  const s = Object.assign(document.createElement("select"), { id });
  for (const [v, text] of options) s.add(new Option(text, v, false, v === value));
  return s;
}

function number(id, min, max, step, value) {
  return Object.assign(document.createElement("input"), { id, type: "number", min, max, step, value });
}

function render() {
  const list = $("control-units");
  list.textContent = "";
  const any = state.nets.some((n) => !n.family || n.family === state.family);
  $("control-help").textContent = any ? "" : "No ControlNet on this server is for the chosen model's family.";
  $("control-add").disabled = state.units.length >= MAX_UNITS || !any;
  state.units.forEach((u, i) => {
    const nets = netsFor(u);
    if (!nets.some((n) => n.name === u.model)) u.model = nets.length ? nets[0].name : "";
    const item = document.createElement("li");
    item.className = "control-unit";
    const file = Object.assign(document.createElement("input"), { id: `control-image-${i}`, type: "file",
                                                                 accept: "image/png,image/jpeg,image/webp" });
    file.addEventListener("change", () => readImage(u, file.files[0], i));
    const module = select(`control-module-${i}`, state.modules.map((m) => [m.name, `${m.name} — ${m.title}`]),
                          u.module);
    module.addEventListener("change", () => {
      const kindChanged = (u.module === "ip-adapter") !== (module.value === "ip-adapter");
      u.module = module.value;
      if (kindChanged) render();  // the model list is the other kind's
    });
    const model = select(`control-model-${i}`, nets.map((n) => [n.name, n.name]), u.model);
    model.addEventListener("change", () => { u.model = model.value; });
    const weight = number(`control-weight-${i}`, 0, 2, 0.05, u.weight);
    weight.addEventListener("input", () => { u.weight = Number(weight.value); });
    const start = number(`control-start-${i}`, 0, 1, 0.05, u.start);
    start.addEventListener("input", () => { u.start = Number(start.value); });
    const end = number(`control-end-${i}`, 0, 1, 0.05, u.end);
    end.addEventListener("input", () => { u.end = Number(end.value); });
    const mode = select(`control-mode-${i}`, [["balanced", "Balanced"], ["prompt", "Prompt matters more"],
                                              ["control", "Control matters more"]], u.mode);
    mode.addEventListener("change", () => { u.mode = mode.value; });
    const grid = document.createElement("div");
    grid.className = "grid";
    grid.append(field("Preprocessor", module), field("ControlNet", model), field("Weight", weight),
                field("From (share of steps)", start), field("To", end), field("Mode", mode));
    const map = Object.assign(document.createElement("img"), { id: `control-map-${i}`, className: "control-map",
                                                             alt: `Unit ${i + 1}'s control map`, hidden: true });
    const show = Object.assign(document.createElement("button"), { type: "button", className: "small",
                                                                 textContent: "Show map" });
    show.addEventListener("click", () => showMap(u, map, show));
    const remove = Object.assign(document.createElement("button"), { type: "button", className: "small",
                                                                   textContent: "Remove" });
    remove.setAttribute("aria-label", `Remove control unit ${i + 1}`);
    remove.addEventListener("click", () => { state.units.splice(i, 1); render(); });
    const note = Object.assign(document.createElement("small"), { className: "muted", id: `control-note-${i}`,
      textContent: u.image ? "Image chosen." : "No image: the start image is used (img2img)." });
    item.append(field(`Unit ${i + 1} image`, file), note, grid, show, remove, map);
    list.append(item);
  });
}

function readImage(unit, file, i) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    unit.image = reader.result;
    $(`control-note-${i}`).textContent = `${file.name} chosen.`;
  };
  reader.readAsDataURL(file);
}

// The unit's map, made by the server (a detect job), shown under it.
async function showMap(unit, img, button) {
  if (!unit.image) { img.hidden = true; button.textContent = "Choose an image first"; return; }
  button.disabled = true;
  try {
    const r = await fetch("/v1/detect", { method: "POST", headers: { "Content-Type": "application/json" },
                                          body: JSON.stringify({ image: unit.image, module: unit.module }) });
    const job = await r.json();
    if (!r.ok) { button.textContent = job.error || "Failed"; return; }
    for (let tries = 0; tries < 100; tries++) {
      const done = await (await fetch(`/v1/jobs/${job.id}`)).json();
      if (done.state === "succeeded") {
        img.src = done.images[0].url;
        img.hidden = false;
        button.textContent = "Show map";
        return;
      }
      if (["failed", "cancelled"].includes(done.state)) {
        button.textContent = done.error?.error || done.state;
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  } finally { button.disabled = false; }
}

// The request's units ({} with none).
export function fields() {
  const units = state.units.filter((u) => u.model);
  if (!units.length) return {};
  return { controls: units.map((u) => ({ ...(u.image ? { image: u.image } : {}), module: u.module, model: u.model,
                                         weight: u.weight, guidance_start: u.start, guidance_end: u.end,
                                         control_mode: u.mode })) };
}

// A gallery entry's units back into the panel: their settings (the images stay those chosen, unit by unit).
export function restore(params) {
  const units = params.controls || [];
  state.units = units.map((c, i) => ({ image: state.units[i]?.image || null, module: c.module, model: c.model,
                                       weight: c.weight, start: c.guidance_start, end: c.guidance_end,
                                       mode: c.control_mode }));
  if (state.loaded) render();
}
