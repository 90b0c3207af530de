// The model and LoRA pickers: what GET /v1/models and GET /v1/loras offer. Adds model and loras to
// the request; tells the page which presets the chosen model can run (turbo: one-step models only).
const $ = (id) => document.getElementById(id);
const state = { models: [], loras: [], chosen: [], onChange: () => {} };

export function setup(onChange) {
  state.onChange = onChange;
  $("model").addEventListener("change", () => state.onChange(current()));
  $("lora-add").addEventListener("change", () => {
    const name = $("lora-add").value;
    if (name && !state.chosen.some((c) => c.name === name)) state.chosen.push({ name, weight: 1 });
    $("lora-add").value = "";
    renderChosen();
  });
}

// The lists (true once loaded; a server that is not ready or needs a key is asked again later).
export async function refresh() {
  try {
    const [models, loras] = await Promise.all([fetch("/v1/models"), fetch("/v1/loras")]);
    if (!models.ok || !loras.ok) return false;
    state.models = (await models.json()).data;
    state.loras = (await loras.json()).loras;
  } catch { return false; }
  const select = $("model");
  const keep = select.value;
  select.textContent = "";
  for (const m of state.models) {
    const label = `${m.id}${m.one_step ? " (one-step)" : ""}${m.loaded ? " · loaded" : ""}`;
    select.add(new Option(label, m.id, false, keep ? m.id === keep : m.default));
  }
  $("model-field").hidden = state.models.length < 2;  // one model: nothing to pick
  const add = $("lora-add");
  add.textContent = "";
  add.add(new Option(state.loras.length ? "Add a LoRA…" : "No LoRAs on this server", ""));
  for (const l of state.loras) add.add(new Option(l.name, l.name));
  add.disabled = !state.loras.length;
  $("loras").hidden = !state.loras.length;
  state.onChange(current());
  return true;
}

export function current() {
  return state.models.find((m) => m.id === $("model").value) || state.models.find((m) => m.default) || null;
}

function renderChosen() {
  const list = $("lora-list");
  list.textContent = "";
  state.chosen.forEach((c, i) => {
    const item = document.createElement("li");
    const label = document.createElement("label");
    label.textContent = c.name;
    label.htmlFor = `lora-weight-${i}`;
    const weight = Object.assign(document.createElement("input"), { id: `lora-weight-${i}`, type: "number",
                                                                   min: -4, max: 4, step: 0.05, value: c.weight });
    weight.addEventListener("input", () => { c.weight = Number(weight.value); });
    const remove = Object.assign(document.createElement("button"), { type: "button", className: "small",
                                                                   textContent: "Remove" });
    remove.setAttribute("aria-label", `Remove LoRA ${c.name}`);
    remove.addEventListener("click", () => { state.chosen.splice(i, 1); renderChosen(); });
    item.append(label, weight, remove);
    list.append(item);
  });
}

export function fields() {
  const out = {};
  const model = current();
  if (model && !model.default) out.model = model.id;
  if (state.chosen.length) out.loras = state.chosen.map((c) => ({ name: c.name, weight: c.weight }));
  return out;
}

// A gallery entry's model and LoRAs back into the pickers (those this server still has).
export function restore(params) {
  if (params.model && state.models.some((m) => m.id === params.model)) $("model").value = params.model;
  else $("model").value = (state.models.find((m) => m.default) || {}).id || "";
  state.chosen = (params.loras || []).filter((l) => state.loras.some((x) => x.name === l.name))
    .map((l) => ({ name: l.name, weight: l.weight }));
  renderChosen();
  state.onChange(current());
}
