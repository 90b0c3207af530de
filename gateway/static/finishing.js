// Finishing on the page: the hires fix in the form (GET /v1/upscalers fills its upscaler list) and
// "Upscale x2 / x4" on a result, which starts an upscale job (POST /v1/upscale) from that result's image.
const $ = (id) => document.getElementById(id);
let loaded = false;

// The lists (true once loaded; asked again while the server is not ready).
export async function refresh() {
  if (loaded) return true;
  let upscalers;
  try {
    const r = await fetch("/v1/upscalers");
    if (!r.ok) return false;
    upscalers = (await r.json()).upscalers;
  } catch { return false; }
  const label = (u) => u.kind === "model" ? `${u.name}${u.scale ? ` (${u.scale}x model)` : ""}` : u.name;
  const hires = $("hires-upscaler");
  const pixel = $("upscaler");
  hires.textContent = pixel.textContent = "";
  for (const u of upscalers) {
    if (u.name === "None") continue;  // nothing to do on its own
    hires.add(new Option(label(u), u.name, false, u.name === "Latent"));
    if (u.kind !== "latent") pixel.add(new Option(label(u), u.name, false, u.kind === "model" && !pixel.value));
  }
  if (!pixel.value) pixel.value = "Lanczos";
  loaded = true;
  return true;
}

export function setup() {
  $("hires").addEventListener("change", () => { $("hires-options").hidden = !$("hires").checked; });
}

// The hires fix's part of a generation request ({} when off).
export function fields() {
  if (!$("hires").checked) return {};
  return { hires: { scale: Number($("hires-scale").value), upscaler: $("hires-upscaler").value,
                    strength: Number($("hires-strength").value) } };
}

export function restore(params) {
  $("hires").checked = !!params.hires;
  $("hires-options").hidden = !params.hires;
  if (params.hires) {
    $("hires-scale").value = String(params.hires.scale);
    if (params.hires.upscaler) $("hires-upscaler").value = params.hires.upscaler;
    $("hires-strength").value = String(params.hires.strength);
  }
}

// An upscale job's body for the image at ``url`` (the result shown), as base64.
export async function upscaleBody(url, scale) {
  const blob = await (await fetch(url)).blob();
  const data = await new Promise((done, fail) => {
    const reader = new FileReader();
    reader.onload = () => done(reader.result);
    reader.onerror = fail;
    reader.readAsDataURL(blob);
  });
  return { image: data, scale, upscaler: $("upscaler").value || "Lanczos" };
}
