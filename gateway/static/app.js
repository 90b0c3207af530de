// The page's behaviour: submit a job, follow its events (SSE), show progress, cancel, show the image.
"use strict";
const $ = (id) => document.getElementById(id);
let limits = { max_prompt_length: 200 };
let current = null; // { id, source }

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function refreshHealth() {
  try {
    const r = await fetch("/health");
    const h = await r.json();
    if (h.limits) limits = h.limits;
    const opt = h.optimizations || {};
    $("server-state").textContent = h.status === "unavailable"
      ? `Model server unreachable — ${h.error ? h.error.hint : ""}`
      : `${h.model} · ${h.device} · ${opt.dtype || "?"} · ${h.status} · queue ${h.queue ? h.queue.depth : 0}`;
    $("steps").max = limits.max_steps || 100;
  } catch (e) {
    $("server-state").textContent = "Gateway unreachable";
  }
  updateCounter();
}

function updateCounter() {
  $("counter").textContent = `${$("prompt").value.length}/${limits.max_prompt_length}`;
}

function showError(body) {
  say(`${body.error}${body.hint ? " — " + body.hint : ""}`, true);
}

function finish() {
  if (current && current.source) current.source.close();
  current = null;
  $("submit").disabled = false;
  $("cancel").disabled = true;
}

function onJob(job) {
  const p = job.progress || {};
  if (job.state === "queued") {
    say(`Queued: position ${job.queue_position}${p.eta_seconds ? `, about ${Math.round(p.eta_seconds)} s` : ""}`);
  } else if (job.state === "running") {
    $("bar").hidden = false;
    $("bar").value = p.total_steps ? p.step / p.total_steps : 0;
    say(`Step ${p.step}/${p.total_steps} · ${Math.round(p.elapsed_seconds || 0)} s elapsed` +
        (p.eta_seconds != null ? ` · about ${Math.round(p.eta_seconds)} s left` : ""));
  }
}

function onDone(job) {
  finish();
  if (job.state === "succeeded") {
    const img = job.images[0];
    $("bar").value = 1;
    $("image").src = img.url;
    $("download").href = img.url;
    $("caption").textContent = `Seed ${img.seed} · ${img.width}×${img.height}`;
    $("result").hidden = false;
    say("Done.");
  } else if (job.state === "cancelled") {
    say("Cancelled.");
  } else {
    showError({ error: job.error ? job.error.message : "failed", hint: job.error ? job.error.hint : "" });
  }
}

async function submit(event) {
  event.preventDefault();
  const size = Number($("size").value);
  const body = { prompt: $("prompt").value, steps: Number($("steps").value), width: size, height: size };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  $("submit").disabled = true;
  $("result").hidden = true;
  say("Submitting…");
  const r = await fetch("/v1/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
                                      body: JSON.stringify(body) });
  const job = await r.json();
  if (!r.ok) { finish(); showError(job); return; }
  const source = new EventSource(`/v1/jobs/${job.id}/events`);
  current = { id: job.id, source };
  $("cancel").disabled = false;
  onJob(job);
  source.addEventListener("progress", (e) => onJob(JSON.parse(e.data)));
  for (const name of ["completed", "failed", "cancelled"]) {
    source.addEventListener(name, (e) => onDone(JSON.parse(e.data)));
  }
  source.addEventListener("error", (e) => {
    if (e.data) { finish(); showError(JSON.parse(e.data)); }
  });
}

async function cancel() {
  if (!current) return;
  const r = await fetch(`/v1/jobs/${current.id}`, { method: "DELETE" });
  if (!r.ok) showError(await r.json());
}

$("form").addEventListener("submit", submit);
$("cancel").addEventListener("click", cancel);
$("prompt").addEventListener("input", updateCounter);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); }
});
refreshHealth();
setInterval(refreshHealth, 10000);
