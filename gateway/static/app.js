// The page: submit a job, follow it (SSE, polling as fallback), preview, cancel, show, keep a gallery.
import * as gallery from "/static/gallery.js";
import * as source from "/static/source.js";
import * as models from "/static/models.js";
import * as finishing from "/static/finishing.js";
import * as control from "/static/control.js";
import * as lightbox from "/static/lightbox.js";

const $ = (id) => document.getElementById(id);
const state = { limits: { max_prompt_length: 200, max_steps: 100, max_width: 1536, max_height: 1536,
                          default_size: 512, default_steps: 25 },
                job: null, source: null, poll: null, lastSeed: null, lastRequest: null, previewStep: null,
                ready: true, busy: false, waiting: [] };  // ready: false only while /health says the model is not;
                // waiting: jobs submitted while another ran, in order (showNext)

// --- server state --------------------------------------------------------------------------
async function refreshHealth() {
  const chip = $("server-state");
  try {
    const r = await fetch("/health");
    if (r.status === 401) { askForKey(); return; }
    const h = await r.json();
    chip.dataset.state = h.status;
    if (h.status === "unavailable") {
      chip.textContent = "Model server unreachable — retrying";
      return;
    }
    if (h.limits && !state.limitsLoaded) applyLimits(h.limits, h.schedulers || []);
    if (h.presets && !state.presetsLoaded && h.model_state === "ready") applyPresets(h.presets);
    // Generate waits for the model: before it is ready its presets and samplers are not known yet.
    state.ready = h.model_state === "ready";
    $("submit").disabled = !state.ready;
    $("submit").title = state.ready ? "" : "Waiting for the model to be ready";
    showLoad(h);
    const opt = h.optimizations || {};
    const what = { ok: "ready", loading: `loading the model (${Math.round(h.uptime_seconds || 0)} s)`,
                   error: "model failed to load", stopping: "restarting" }[h.status] || h.status;
    chip.textContent = `${h.loaded_model || h.model} · ${h.device}${opt.dtype ? " · " + opt.dtype : ""} · ${what} · queue ${h.queue.depth}`;
    chip.title = h.error ? `${h.error.error} — ${h.error.hint}` : "";
    if (!state.modelsLoaded && h.model_state === "ready") state.modelsLoaded = await models.refresh();
    if (h.model_state === "ready") await finishing.refresh();
    if (h.model_state === "ready") await control.refresh();
  } catch {
    chip.dataset.state = "unavailable";
    chip.textContent = "Gateway unreachable";
  }
}

// --- the model's first start: download, conversion, loading, each with its progress ----------
const PHASES = { downloading: "Downloading the model", converting: "Converting (once)", loading: "Loading the model",
                 quantizing: "Quantizing to int8 (once)", compiling: "Compiling for this CPU" };

function amount(bytes) {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (bytes >= 1000 && i < units.length - 1) { bytes /= 1000; i++; }
  return `${bytes.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function duration(s) {
  return s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
}

function showLoad(h) {
  const load = h.load;
  const active = load && load.phase !== "done" && ["loading", "failed"].includes(h.model_state);
  $("load").hidden = !active;
  if (!active) return;
  const failed = h.model_state === "failed";
  $("load-phase").textContent = `${PHASES[load.phase] || load.phase}${failed ? " failed" : "…"}`;
  const bar = $("load-bar");
  const parts = [load.detail];
  if (load.bytes_total) {
    bar.value = load.percent ?? 0;
    parts.push(`${amount(load.bytes_done || 0)} of ${amount(load.bytes_total)} (${Math.floor(load.percent ?? 0)}%)`);
    if (load.rate_bytes_per_second && !failed) parts.push(`${amount(load.rate_bytes_per_second)}/s`);
    if (load.eta_seconds != null && !failed) parts.push(`about ${duration(load.eta_seconds)} left`);
  } else {
    bar.removeAttribute("value");  // no total: an indeterminate bar, with the time so far
    parts.push(`${duration(load.seconds)} so far`);
  }
  if (failed && h.error) parts.push(`${h.error.error} — ${h.error.hint}`);
  $("load-detail").textContent = parts.filter(Boolean).join(" · ");
}

function applyLimits(limits, schedulers) {
  state.limits = limits;
  state.limitsLoaded = true;
  $("steps").max = limits.max_steps;
  $("steps").value = limits.default_steps;
  for (const [id, max] of [["width", limits.max_width], ["height", limits.max_height]]) {
    const select = $(id);
    select.textContent = "";
    for (let v = 256; v <= max; v += 64) select.add(new Option(`${v}`, v, false, v === limits.default_size));
  }
  const batch = $("batch");
  batch.textContent = "";
  for (let n = 1; n <= (limits.max_images || 1); n++) batch.add(new Option(`${n}`, n));
  const sched = $("scheduler");
  sched.textContent = "";
  for (const name of schedulers) sched.add(new Option(name, name));
  updateCounter();
}

// A preset fills steps, guidance and sampler (still editable); the server says which it can run.
function applyPresets(presets) {
  state.presets = Object.fromEntries(presets.map((p) => [p.name, p]));
  state.presetsLoaded = true;
  showPresets(models.current());
}

// The presets the chosen model can run (its entry in /v1/models says which it cannot); turbo is shown
// only for one-step models, and chosen when one is picked.
function showPresets(model) {
  control.useFamily(model && model.family);
  if (!state.presets) return;
  const select = $("preset");
  const was = select.value;
  select.textContent = "";
  for (const p of Object.values(state.presets)) {
    const why = model ? model.unavailable_presets[p.name] : p.available === false ? p.unavailable_reason : "";
    if (p.one_step && why) continue;
    const option = new Option(why ? `${p.name} (unavailable)` : p.name, p.name);
    option.disabled = Boolean(why);
    option.title = why || p.summary;
    select.add(option);
  }
  const usable = (name) => [...select.options].some((o) => o.value === name && !o.disabled);
  const fallback = (Object.values(state.presets).find((p) => p.default) || {}).name;
  const newModel = (model && model.id) !== state.shownModel;
  const firstList = !state.shownModel;  // no model was known: the list arrives now
  const next = newModel && model && model.one_step && usable("turbo") ? "turbo" : usable(was) ? was : fallback;
  state.shownModel = model && model.id;
  select.value = next;
  // The list arriving late must not undo steps, guidance or a sampler the user set meanwhile.
  if ((next !== was || newModel) && !(firstList && state.presetTouched)) usePreset();
  // A model picked starts at its own size; the list arriving late (a key asked for first) keeps a size already set.
  if (newModel) showSizes(model, !(firstList && state.sizeTouched));
}

// The sizes the chosen model was trained at (SDXL's aspect buckets, SD's 512 ones); picking one sets
// width and height, and a new model starts at its own default size (SDXL 1024x1024).
function showSizes(model, reset) {
  const sizes = (model && model.sizes) || [];
  const select = $("size");
  select.textContent = "";
  select.add(new Option("Custom", ""));
  for (const s of sizes) select.add(new Option(s.replace("x", " × "), s));
  $("size-field").hidden = !sizes.length;
  const fallback = `${state.limits.default_size}x${state.limits.default_size}`;
  const [bw, bh] = ((model && model.default_size) || fallback).split("x").map(Number);
  state.basePixels = bw * bh;  // the aspect choices keep about the model's own pixel count
  setSize(reset ? (model && model.default_size) || fallback : `${$("width").value}x${$("height").value}`);
}

// The start image's own size, as near as the size fields allow: multiples of 8 within the limits, the shape kept.
function useImageSize(width, height) {
  const most = Math.min(1, state.limits.max_width / width, state.limits.max_height / height);
  const side = (v, max) => Math.max(64, Math.min(max, Math.round(v * most / 8) * 8));
  setSize(`${side(width, state.limits.max_width)}x${side(height, state.limits.max_height)}`);
}

function setSize(size) {
  const [w, h] = size.split("x");
  for (const [id, v] of [["width", w], ["height", h]]) {
    if (![...$(id).options].some((o) => o.value === v)) $(id).add(new Option(v, v));
    $(id).value = v;
  }
  $("size").value = [...$("size").options].some((o) => o.value === size) ? size : "";
  // The aspect that names this shape, within the rounding to 64 pixels; else custom.
  const ratio = Number(w) / Number(h);
  const near = [...$("aspect").options].find((o) => o.value && Math.abs(Number(o.value) / ratio - 1) < 0.04);
  $("aspect").value = near ? near.value : "";
}

// A shape from the aspect list, at about the model's own pixel count, in multiples of 64 within the limits.
function useAspect() {
  const ratio = Number($("aspect").value);
  if (!ratio) return;
  const pixels = state.basePixels || state.limits.default_size ** 2;
  const side = (v, max) => Math.max(256, Math.min(max, Math.round(v / 64) * 64));
  setSize(`${side(Math.sqrt(pixels * ratio), state.limits.max_width)}x` +
          `${side(Math.sqrt(pixels / ratio), state.limits.max_height)}`);
}

function usePreset() {
  const p = state.presets && state.presets[$("preset").value];
  if (!p) return;
  $("steps").value = p.steps;
  $("guidance").value = p.guidance_scale;
  $("scheduler").value = p.scheduler;
  describePreset();
}

// The preset's summary while its values stand; once the user changes them, what will run instead.
function describePreset() {
  const p = state.presets && state.presets[$("preset").value];
  if (!p) return;
  const steps = Number($("steps").value), guidance = Number($("guidance").value), sampler = $("scheduler").value;
  const custom = steps !== p.steps || guidance !== p.guidance_scale || sampler !== p.scheduler;
  $("preset-help").textContent = !custom ? p.summary
    : `Custom (${p.name} changed): ${steps} ${steps === 1 ? "step" : "steps"} · ` +
      `${guidance <= 1 ? "no guidance" : `guidance ${guidance}`} · ${sampler === "default" ? "the model's sampler" : sampler}`;
}

function updateCounter() {
  const n = [...$("prompt").value].length;
  const max = state.limits.max_prompt_length;
  $("counter").textContent = `${n}/${max}`;
  $("counter").classList.toggle("error-text", n > max);
}

// The service may require an API key: kept in a cookie so EventSource and <img> send it too.
function askForKey() {
  const chip = $("server-state");
  chip.dataset.state = "error";
  chip.textContent = "This server needs an API key";
  $("key-form").hidden = false;
}

function useKey(event) {
  event.preventDefault();
  document.cookie = `sd_api_key=${encodeURIComponent($("api-key").value)}; path=/; SameSite=Strict`;
  gallery.useOwner($("api-key").value);  // each key lists its own images (the server shows only its own)
  showGallery();
  syncGallery();
  $("key-form").hidden = true;
  refreshHealth();
}

// --- messages --------------------------------------------------------------------------------
function showError(body, retryAfter) {
  const box = $("error");
  const wait = retryAfter ? ` You can retry in about ${retryAfter} s.` : "";
  const message = body.error || "something went wrong";
  box.textContent = `${message[0].toUpperCase()}${message.slice(1)}.${body.hint ? " " + body.hint : ""}${wait}`;
  box.hidden = false;
}

function clearError() { $("error").hidden = true; }

function say(text) { $("status").textContent = text; }

// --- a job's life ----------------------------------------------------------------------------
function requestBody() {
  const body = { prompt: $("prompt").value, steps: Number($("steps").value),
                 guidance_scale: Number($("guidance").value), width: Number($("width").value),
                 height: Number($("height").value), scheduler: $("scheduler").value || "default", preview: true };
  if ($("preset").value) body.preset = $("preset").value;
  if (Number($("token-merging").value) > 0) body.token_merging = Number($("token-merging").value);
  if ($("negative").value.trim()) body.negative_prompt = $("negative").value;
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if (Number($("batch").value) > 1) body.n = Number($("batch").value);
  return { ...body, ...models.fields(), ...source.fields(), ...finishing.fields(), ...control.fields() };
}

async function submit(event) {
  event.preventDefault();
  // The service's cap, said here once, before a request is spent on it.
  const max = state.limits.max_prompt_length;
  for (const [id, what] of [["prompt", "The prompt"], ["negative", "The negative prompt"]]) {
    const n = [...$(id).value].length;
    if (n > max) {
      clearError();
      showError({ error: `${what} is ${n} characters; this server takes at most ${max}`,
                  hint: `Shorten it by ${n - max} characters.` });
      $(id).focus();
      return;
    }
  }
  if (state.job) await enqueue("/v1/jobs", requestBody());  // one runs: this one waits in the server's queue, listed
  else await start("/v1/jobs", requestBody());
}

// --- several jobs from the page: the one shown follows its events; the others wait in a list, polled ------------
async function enqueue(route, body) {
  clearError();
  const r = await fetch(route, { method: "POST", headers: { "Content-Type": "application/json" },
                                 body: JSON.stringify(body) });
  const job = await r.json().catch(() => ({}));
  if (!r.ok) { showError(job, r.headers.get("Retry-After")); return; }
  state.waiting.push({ job, ...kept(body, job) });
  showWaiting();
}

// What a submitted job leaves for the gallery and "copy as curl": its request without the images (they can be
// megabytes), with the seed the server chose, and which images it sent. An upscale leaves nothing: the settings
// that made its image stay.
function kept(body, job) {
  if (job.params.mode === "upscale") return {};
  const { init_image: image, mask, ...rest } = body;
  const units = rest.controls || [];
  if (units.length) rest.controls = units.map(({ image: _, ...unit }) => unit);
  return { request: { ...rest, seed: job.params.seed },
           files: { init_image: Boolean(image), mask: Boolean(mask), controls: units.map((u) => Boolean(u.image)) } };
}

function showWaiting() {
  const list = $("queue");
  list.textContent = "";
  $("queue-area").hidden = !state.waiting.length;
  for (const item of state.waiting) {
    const { job } = item;
    const li = document.createElement("li");
    const text = document.createElement("span");
    const p = job.progress || {};
    text.textContent = `${job.params.prompt} · ` + (job.state === "running" ? `step ${p.step || 0}/${p.total_steps}`
      : job.state === "queued" ? `waiting, position ${job.queue_position ?? "?"}` +
        (p.eta_seconds ? `, done in about ${fmt(p.eta_seconds)}` : "")
      : job.state);
    const stop = document.createElement("button");
    stop.type = "button";
    stop.className = "small";
    stop.textContent = "Cancel";
    stop.setAttribute("aria-label", `Cancel: ${job.params.prompt}`);
    stop.addEventListener("click", async () => {
      await fetch(`/v1/jobs/${job.id}`, { method: "DELETE" });
      state.waiting = state.waiting.filter((w) => w !== item);
      showWaiting();
    });
    li.append(text, stop);
    list.append(li);
  }
}

async function pollWaiting() {
  for (const item of state.waiting) {
    try {
      const r = await fetch(`/v1/jobs/${item.job.id}`);
      if (r.ok) item.job = await r.json();
    } catch { /* the next poll tries again */ }
  }
  if (state.waiting.length) showWaiting();
}

// The shown job ended: the next one waiting becomes the shown one (its events, progress, result).
function showNext() {
  if (state.job) return;  // one was submitted meanwhile and is shown: the list waits for its end
  const item = state.waiting.shift();
  showWaiting();
  if (!item) return;
  state.job = item.job;
  if (item.request) [state.lastRequest, state.lastFiles] = [item.request, item.files];
  state.previewStep = null;
  setBusy(true);
  $("result").hidden = true;
  $("progress-area").hidden = false;
  $("preview").hidden = true;
  onProgress(item.job);
  follow(item.job.id);
}

// An upscale job from the result shown; its image replaces the result when done.
// An upscale job from an image (the result shown, or one from the gallery); queued behind a running job.
async function upscale(scale, url = $("image").getAttribute("src")) {
  if (!url) return;
  const body = await finishing.upscaleBody(url, scale);
  if (state.job) await enqueue("/v1/upscale", body);
  else await start("/v1/upscale", body);
}

async function start(route, body) {
  clearError();
  $("result").hidden = true;
  setBusy(true);
  say("Submitting…");
  let r;
  try {
    r = await fetch(route, { method: "POST", headers: { "Content-Type": "application/json" },
                             body: JSON.stringify(body) });
  } catch {
    setBusy(false);
    showError({ error: "The gateway cannot be reached", hint: "Check that the service is running." });
    return;
  }
  const job = await r.json();
  if (r.status === 401) askForKey();
  if (!r.ok) {
    setBusy(false);
    $("progress-area").hidden = true;
    showError(job, r.headers.get("Retry-After"));
    return;
  }
  state.job = job;
  const { request, files } = kept(body, job);
  if (request) [state.lastRequest, state.lastFiles] = [request, files];
  state.previewStep = null;
  $("placeholder").hidden = true;
  $("progress-area").hidden = false;
  $("preview").hidden = true;
  onProgress(job);
  follow(job.id);
  // On a narrow screen the output sits under the form: bring the progress into view.
  if (narrow()) $("progress-area").scrollIntoView({ block: "center" });
}

function narrow() { return !window.matchMedia("(min-width: 64rem)").matches; }

function follow(id) {
  if (!window.EventSource) return poll(id);
  const source = new EventSource(`/v1/jobs/${id}/events`);
  state.source = source;
  source.addEventListener("progress", (e) => onProgress(JSON.parse(e.data)));
  for (const name of ["completed", "failed", "cancelled"]) source.addEventListener(name, (e) => onDone(JSON.parse(e.data)));
  source.addEventListener("error", (e) => {
    source.close();
    state.source = null;
    if (!state.job) return;
    if (e.data) { const body = JSON.parse(e.data); say(body.error); }
    poll(id); // the stream broke (proxy, model server restart): keep following by polling
  });
}

function poll(id) {
  clearInterval(state.poll);
  state.poll = setInterval(async () => {
    try {
      const r = await fetch(`/v1/jobs/${id}`);
      const job = await r.json();
      if (!r.ok) { finish(); showError(job, r.headers.get("Retry-After")); return; }
      if (["succeeded", "failed", "cancelled"].includes(job.state)) onDone(job); else onProgress(job);
    } catch { say("Lost contact with the gateway; still trying…"); }
  }, 1000);
}

function onProgress(job) {
  const p = job.progress || {};
  if (job.state === "queued") {
    say(`Queued: position ${job.queue_position ?? "?"}` + (p.eta_seconds ? ` · done in about ${fmt(p.eta_seconds)}` : ""));
    $("bar").removeAttribute("value");
  } else if (job.state === "running") {
    const n = job.params.n || 1;
    const done = (p.image_index || 0) * p.total_steps + (p.step || 0);
    $("bar").max = 1;
    $("bar").value = p.total_steps ? done / (n * p.total_steps) : 0;
    const loading = p.detail && !p.step;  // e.g. "loading model X" before the first step
    const unit = job.params.mode === "upscale" ? "Tile" : "Step";  // an upscale job's steps are its tiles
    say(job.cancel_requested ? "Cancelling…"
      : loading ? `${p.detail[0].toUpperCase()}${p.detail.slice(1)}…`
      : (n > 1 ? `Image ${(p.image_index || 0) + 1}/${n} · ` : "") + `${unit} ${p.step}/${p.total_steps}` +
        (p.detail ? ` · ${p.detail}` : ""));
    $("timing").textContent = `${fmt(p.elapsed_seconds || 0)} elapsed` +
      (p.eta_seconds != null ? ` · about ${fmt(p.eta_seconds)} left` : "") +
      (p.seconds_per_step ? ` · ${p.seconds_per_step.toFixed(2)} s/step` : "");
    if (p.preview_step != null && p.preview_step !== state.previewStep) {
      state.previewStep = p.preview_step;
      $("preview").src = `/v1/jobs/${job.id}/preview?step=${p.preview_step}`;
      $("preview").hidden = false;
    }
  }
}

// The job's end in the timing line: its total time, never a stale "about N s left".
function endTiming(job, what) {
  const took = job.started_at && job.finished_at ? job.finished_at - job.started_at
    : job.progress ? job.progress.elapsed_seconds : null;
  $("timing").textContent = took != null ? `${what} in ${fmt(took)}` : "";
}

function onDone(job) {
  finish();
  $("preview").hidden = true;
  endTiming(job, { succeeded: "Done", cancelled: "Cancelled", failed: "Failed" }[job.state] || "Ended");
  if (job.state === "succeeded") {
    const img = job.images[0];
    $("bar").value = 1;
    say(job.interrupted ? "Stopped early; here is what was made." : "Done.");
    state.shownJob = job;
    showResult(job, img);
    remember(job);
    showStrip(job);
    if (narrow()) $("result").scrollIntoView({ block: "start" });
  } else if (job.state === "cancelled") {
    say("Cancelled. Nothing was kept.");
    $("bar").value = 0;
  } else {
    say("Failed.");
    showError({ error: job.error ? job.error.message : "The job failed", hint: job.error ? job.error.hint : "" });
  }
}

function showResult(job, img) {
  state.lastSeed = img.seed;
  $("seed-reuse").disabled = false;
  const p = job.params;
  $("image").src = img.url;
  $("image").width = img.width;
  $("image").height = img.height;
  $("image").alt = `Generated image: ${p.prompt}`;
  $("download").href = img.url;
  $("download").download = `sd-cpu-${img.seed}.${img.media_type.split("/")[1]}`;
  $("curl").hidden = true;
  $("result").hidden = false;
  if (p.mode === "upscale") {  // the result it came from stays in the gallery; this replaces it on screen
    $("batch-strip").hidden = true;
    $("caption").textContent = `Upscaled ×${p.upscale} with ${p.upscaler} · ${img.width}×${img.height}` +
      (p.face_restoration ? " · faces restored" : "");
    return;
  }
  $("caption").textContent = `${job.model ? job.model + " · " : ""}Seed ${img.seed} · ` +
    `${img.width}×${img.height} · ` +
    `${p.preset ? p.preset + " · " : ""}${p.steps} ${p.steps === 1 ? "step" : "steps"} · ` +
    `${p.guidance_scale <= 1 ? "no guidance" : `guidance ${p.guidance_scale}`} · ` +
    `${p.scheduler === "default" ? "the model's sampler" : p.scheduler}` + (p.token_merging ? ` · token merging ${p.token_merging}` : "") +
    (p.mode && p.mode !== "txt2img" ? ` · ${p.mode} at strength ${p.strength}` : "") +
    (p.hires ? ` · hires fix ×${p.hires.scale} (${p.hires.upscaler}, strength ${p.hires.strength})` : "") +
    (p.face_restoration ? " · faces restored" : "") +
    (p.loras && p.loras.length ? ` · LoRAs ${p.loras.map((l) => `${l.name} ${l.weight}`).join(", ")}` : "") +
    (p.controls && p.controls.length
      ? ` · ControlNet ${p.controls.map((c) => `${c.module} → ${c.model} ${c.weight}`).join(", ")}` : "") +
    (job.model_switch ? ` · loaded the model first (${fmt(job.model_switch.seconds)})` : "") +
    (p.negative_prompt ? ` · not: ${p.negative_prompt}` : "");
}

// A finished job's images as gallery entries (the first first); ``params``: the settings to reuse.
function entriesOf(job, params, created) {
  return job.images.map((img) => ({ id: `${job.id}/${img.index}`, job: job.id, index: img.index, url: img.url,
                                    size: `${img.width}x${img.height}`, thumb: null,
                                    params: { ...params, seed: img.seed, n: 1 }, created }));
}

// A small thumbnail for each entry that has none, made once its image loads (shown if the server forgets it).
function makeThumbs(entries) {
  for (const entry of entries.filter((e) => !e.thumb)) {
    const probe = new Image();
    probe.addEventListener("load", () => gallery.update(entry.id, { thumb: gallery.thumbnail(probe) }),
                           { once: true });
    probe.src = entry.url;
  }
}

// Every image of a job finished here into the gallery.
function remember(job) {
  if (job.params.mode === "upscale") return;  // the image it came from is there already
  const entries = entriesOf(job, state.lastRequest, Date.now());
  gallery.merge(entries);
  showGallery();
  makeThumbs(entries);
}

// This key's finished jobs the service still keeps (made here, elsewhere or by the API) into the gallery.
async function syncGallery() {
  let jobs;
  try {
    const r = await fetch("/v1/jobs?state=finished&limit=48");
    if (!r.ok) return;
    ({ jobs } = await r.json());
  } catch { return; }
  const known = new Set(gallery.load().map((e) => e.id)), cleared = gallery.clearedAt();
  // An upscale's or a control map's (detect) job made no new picture of its own: the gallery keeps generations.
  const entries = jobs.filter((job) => job.state === "succeeded" && !["upscale", "detect"].includes(job.params.mode))
    .flatMap((job) => entriesOf(job, job.params, (job.finished_at || 0) * 1000))
    .filter((entry) => !known.has(entry.id) && entry.created > cleared);
  if (!entries.length) return;
  gallery.merge(entries);
  showGallery();
  makeThumbs(entries);
}

// A batch's images as a strip under the one shown; picking one shows it (and keeps it in the gallery).
function showStrip(job) {
  const strip = $("batch-strip");
  strip.textContent = "";
  strip.hidden = job.images.length < 2;
  for (const img of job.images) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("aria-current", String(img === job.images[0]));
    button.setAttribute("aria-label", `Show image ${img.index + 1} of ${job.images.length} (seed ${img.seed})`);
    const thumb = document.createElement("img");
    thumb.src = img.url;
    thumb.alt = "";
    button.append(thumb);
    button.addEventListener("click", () => {
      for (const b of strip.querySelectorAll("button")) b.setAttribute("aria-current", String(b === button));
      showResult(job, img);
    });
    item.append(button);
    strip.append(item);
  }
}

function finish() {
  if (state.source) state.source.close();
  clearInterval(state.poll);
  state.source = null;
  state.job = null;
  setBusy(false);
  if (state.waiting.length) setTimeout(showNext, 1500);  // the result stays in view a moment first
}

function setBusy(busy) {
  state.busy = busy;
  $("submit").disabled = !state.ready;  // while one runs, another joins the queue
  $("submit").textContent = busy ? "Queue another" : "Generate";
  $("cancel").disabled = !busy;
}

async function cancel() {
  if (!state.job) return;
  say("Cancelling…");
  const r = await fetch(`/v1/jobs/${state.job.id}`, { method: "DELETE" });
  const job = await r.json();
  if (!r.ok) showError(job);
  else if (job.state === "cancelled") onDone(job);
}

// --- helpers -----------------------------------------------------------------------------------
function fmt(seconds) {
  seconds = Math.round(seconds);
  return seconds < 60 ? `${seconds} s` : `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
}

function curlCommand() {
  const body = { ...state.lastRequest };
  delete body.preview;
  delete body.n;  // /generate makes one image: the one shown first, by its seed
  const { controls: unitFiles = [], ...sentFiles } = state.lastFiles || {};
  const files = Object.entries(sentFiles).filter(([, sent]) => sent).map(([field]) => field);
  // A unit's image goes in from control-N.png, in its place in the unit.
  if (body.controls) {
    body.controls = body.controls.map((u, i) => unitFiles[i] ? { ...u, image: `@control-${i + 1}@` } : u);
  }
  const units = unitFiles.map((sent, i) => sent && i + 1).filter(Boolean);
  if (!files.length && !units.length) {
    const json = JSON.stringify(body).replaceAll("'", "'\\''");
    return `curl -X POST '${location.origin}/generate' -H 'Content-Type: application/json' -d '${json}' -o image.png`;
  }
  // The images go in as base64 read from files named here, through a here-document (the shell fills them in;
  // anything else the shell would expand in the JSON is escaped).
  const names = { init_image: "start.png", mask: "mask.png" };
  const json = JSON.stringify(body).replace(/[\\$`]/g, "\\$&").replace(/}$/, files.map(
    (field) => `, "${field}": "$(base64 -w0 ${names[field]})"`).join("") + "}")
    .replace(/@control-(\d)@/g, "$$(base64 -w0 control-$1.png)");
  const what = { init_image: "start.png: the image you started from", mask: "mask.png: the mask (white repaints)" };
  const said = [...files.map((field) => what[field]),
                ...units.map((n) => `control-${n}.png: control unit ${n}'s image`)];
  return `# ${said.join("; ")}\n` +
    `curl -X POST '${location.origin}/generate' -H 'Content-Type: application/json' -o image.png -d @- <<EOF\n` +
    `${json}\nEOF`;
}

async function copyCurl() {
  const text = curlCommand();
  $("curl").textContent = text;
  $("curl").hidden = false;
  try { await navigator.clipboard.writeText(text); $("copy-curl").textContent = "Copied"; }
  catch { $("copy-curl").textContent = "Select and copy below"; }
  setTimeout(() => { $("copy-curl").textContent = "Copy as curl"; }, 2000);
}

function pick(entry) {
  const p = entry.params;
  $("prompt").value = p.prompt;
  $("negative").value = p.negative_prompt || "";
  models.restore(p);
  finishing.restore(p);
  control.restore(p);
  source.restore(p);
  if (p.preset && state.presets && state.presets[p.preset]) $("preset").value = p.preset;
  for (const [id, v] of [["steps", p.steps], ["guidance", p.guidance_scale], ["width", p.width],
                         ["height", p.height], ["scheduler", p.scheduler], ["seed", p.seed],
                         ["token-merging", String(p.token_merging || 0)], ["batch", String(p.n || 1)]]) {
    if (v != null) $(id).value = v;
  }
  describePreset();
  if (p.width && p.height) setSize(`${p.width}x${p.height}`);  // adds a size the lists lack, syncs the picker
  updateCounter();
  $("prompt").focus();
}

// --- wiring ------------------------------------------------------------------------------------
// --- the gallery ---------------------------------------------------------------------------------
function showGallery() {
  const n = gallery.render($("gallery"), { view: viewEntry, reuse: pick, start: startFrom, remove: removeEntry,
                                           upscale: (entry) => upscale(2, entry.url) });
  $("gallery-empty").hidden = n > 0;
  $("gallery-clear").hidden = n === 0;
}

function viewEntry(entry, entries) {
  lightbox.open(entries.map((e) => ({ url: e.url || e.thumb, fallback: e.thumb,
                                      caption: `${e.params.prompt} · seed ${e.params.seed}` +
                                               (e.size ? ` · ${e.size.replace("x", "×")}` : "") })),
                entries.indexOf(entry));
}

// An image (the result shown, or a gallery entry) becomes the start image (image-to-image, or paint a mask to
// inpaint), at its own size.
async function startFrom(entry) {
  const r = await fetch(entry.url);
  if (!r.ok) {
    showError({ error: "That image is no longer on the server", hint: "Results expire; its settings can be reused." });
    return;
  }
  const blob = await r.blob();
  await source.load(new File([blob], "result.png", { type: blob.type }));
  if (entry.size) setSize(entry.size);
  $("source").scrollIntoView({ block: "center" });
}

async function removeEntry(entry) {
  if (!window.confirm(`Delete "${entry.params.prompt}" (the whole job) from the server?`)) return;
  const r = await fetch(`/v1/jobs/${entry.job}`, { method: "DELETE" });
  if (!r.ok && r.status !== 404 && r.status !== 410) {
    showError(await r.json().catch(() => ({})));
    return;
  }
  gallery.forget(entry);
  showGallery();
}

$("form").addEventListener("submit", submit);
$("key-form").addEventListener("submit", useKey);
$("cancel").addEventListener("click", cancel);
$("prompt").addEventListener("input", updateCounter);
$("preset").addEventListener("change", usePreset);
$("size").addEventListener("change", () => {
  state.sizeTouched = true;
  if ($("size").value) setSize($("size").value);
});
for (const id of ["width", "height"]) {
  $(id).addEventListener("change", () => {
    state.sizeTouched = true;
    setSize(`${$("width").value}x${$("height").value}`);
  });
}
// Ctrl+Enter (Cmd+Enter) generates from anywhere on the page; Esc cancels the running job.
document.addEventListener("keydown", (e) => {
  if (e.defaultPrevented) return;  // the prompt's own Enter already submitted
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !e.isComposing) {
    e.preventDefault();
    if (!$("submit").disabled) $("form").requestSubmit();
  } else if (e.key === "Escape" && state.job && !$("lightbox").open) {  // in the lightbox Esc only closes it
    e.preventDefault();
    cancel();
  }
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("form").requestSubmit(); }
});
$("seed-random").addEventListener("click", () => { $("seed").value = ""; });
$("seed-reuse").addEventListener("click", () => { if (state.lastSeed != null) $("seed").value = state.lastSeed; });
$("copy-curl").addEventListener("click", copyCurl);
$("png-info").addEventListener("change", async () => {
  // A PNG's infotext (A1111's "PNG Info"), read by the gateway, fills the form as a gallery entry does.
  const file = $("png-info").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  const r = await fetch("/v1/png-info", { method: "POST", body: form });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) { showError(body); return; }
  if (!body.infotext) { $("png-info-help").textContent = "This PNG carries no settings."; return; }
  pick({ params: body.params });
  $("png-info-help").textContent = `Read: ${Object.keys(body.params).join(", ")}.`;
});
$("send-to-source").addEventListener("click", () => startFrom(
  { url: $("image").getAttribute("src"), size: `${$("image").width}x${$("image").height}` }));
$("upscale-2").addEventListener("click", () => upscale(2));
$("upscale-4").addEventListener("click", () => upscale(4));
finishing.setup();
control.setup();
for (const id of ["steps", "guidance", "scheduler"]) {
  $(id).addEventListener("input", () => { state.presetTouched = true; describePreset(); });
}
$("gallery-clear").addEventListener("click", () => {
  const n = gallery.load().length;
  if (n && window.confirm(`Forget the ${n} image${n === 1 ? "" : "s"} listed here? They stay on the server until ` +
                          "they expire; Delete on an image removes it there.")) {
    gallery.clear();
    showGallery();
  }
});
$("aspect").addEventListener("change", () => { state.sizeTouched = true; useAspect(); });
$("swap").addEventListener("click", () => {
  state.sizeTouched = true;
  setSize(`${$("height").value}x${$("width").value}`);
});
$("view").addEventListener("click", () => {
  const job = state.shownJob;
  if (!job) return;
  const shown = job.images.findIndex((i) => i.url === $("image").getAttribute("src"));
  lightbox.open(job.images.map((i) => ({ url: i.url, caption: `${job.params.prompt} · seed ${i.seed} · ` +
                                                    `${i.width}×${i.height}` })), Math.max(0, shown));
});
lightbox.setup();
gallery.useOwner(decodeURIComponent((document.cookie.match(/(?:^|; )sd_api_key=([^;]*)/) || [])[1] || ""));
showGallery();
syncGallery();
setInterval(() => { if (state.waiting.length) pollWaiting(); }, 1000);
source.setup(useImageSize);
models.setup(showPresets);  // the lists load once the server is ready (refreshHealth)
// Every second while the model loads (its progress moves), every 5 s once it is up.
(async function watchHealth() {
  await refreshHealth();
  setTimeout(watchHealth, $("load").hidden ? 5000 : 1000);
})();
