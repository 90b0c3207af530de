// Finishing on the page: the hires fix in the form (GET /v1/upscalers fills its upscaler list), "Restore
// faces" when the server has a face restorer (GET /v1/face-restorers), and "Upscale x2 / x4" on a result,
// which starts an upscale job (POST /v1/upscale) from that result's image, its faces restored if ticked.
const $ = (id) => document.getElementById(id);
let loaded = false;

// The lists (true once loaded; asked again while the server is not ready).
export async function refresh() {
  if (loaded) return true;
  let upscalers, faces;
  try {
    const [r, f] = await Promise.all([fetch("/v1/upscalers"), fetch("/v1/face-restorers")]);
    if (!r.ok || !f.ok) return false;
    upscalers = (await r.json()).upscalers;
    faces = await f.json();
  } catch { return false; }
  // Only a server that can restore faces offers it; the first listed restorer is the one used.
  $("faces-set").hidden = !(faces.detector && faces.face_restorers.length);
  if (!$("faces-set").hidden) $("face-restorer").textContent = faces.face_restorers[0].name;
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

// The face restoration part of a request ({} when off).
function faceFields() {
  return !$("faces-set").hidden && $("restore-faces").checked ? { face_restoration: {} } : {};
}

// The finishing part of a generation request: the hires fix and face restoration ({} when off).
export function fields() {
  if (!$("hires").checked) return faceFields();
  return { hires: { scale: Number($("hires-scale").value), upscaler: $("hires-upscaler").value,
                    strength: Number($("hires-strength").value) }, ...faceFields() };
}

export function restore(params) {
  $("restore-faces").checked = !!params.face_restoration;
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
  return { image: data, scale, upscaler: $("upscaler").value || "Lanczos", ...faceFields() };
}
