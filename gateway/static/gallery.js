// This client's recent results: the images themselves come from the service (its finished jobs, kept for
// RESULT_TTL_SECONDS and only for this client's key); the browser keeps what it needs to list and reuse them:
// the job's id, the image's index, a small thumbnail for when the server has forgotten the job, the settings.
const LIMIT = 48;
let KEY = "sd-cpu.gallery";

// One list per API key (by a short digest of it, never the key): the server shows each key its own images only.
export function useOwner(apiKey) {
  let h = 2166136261;  // FNV-1a: a name for the list, not a secret
  for (const c of apiKey) h = Math.imul(h ^ c.codePointAt(0), 16777619) >>> 0;
  KEY = apiKey ? `sd-cpu.gallery.${h.toString(16)}` : "sd-cpu.gallery";
}

export function load() {
  try { return JSON.parse(localStorage.getItem(KEY)) || []; } catch { return []; }
}

function save(items) {
  try { localStorage.setItem(KEY, JSON.stringify(items.slice(0, LIMIT))); } catch { /* storage full: skip */ }
}

// Forget the list; the server's jobs made before now stay out of it (syncing would bring them back otherwise).
export function clear() {
  localStorage.removeItem(KEY);
  try { localStorage.setItem(`${KEY}.cleared`, String(Date.now())); } catch { /* storage full: skip */ }
}

export function clearedAt() { return Number(localStorage.getItem(`${KEY}.cleared`)) || 0; }

// An entry and the rest of its job (deleting a job on the server deletes all its images).
export function forget(entry) {
  save(load().filter((e) => (entry.job ? e.job !== entry.job : e.id !== entry.id)));
}

// A small JPEG data URL of an <img>, shown when the service no longer has the image.
export function thumbnail(img, size = 160) {
  const canvas = document.createElement("canvas");
  const scale = size / Math.max(img.naturalWidth, img.naturalHeight);
  canvas.width = Math.round(img.naturalWidth * scale);
  canvas.height = Math.round(img.naturalHeight * scale);
  canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
  return canvas.toDataURL("image/jpeg", 0.8);
}

export function update(id, fields) {
  save(load().map((e) => (e.id === id ? { ...e, ...fields } : e)));
}

// New entries (ids not listed yet) into the list, newest first by when they were made.
export function merge(entries) {
  const listed = load();
  const ids = new Set(listed.map((e) => e.id));
  save([...listed, ...entries.filter((e) => !ids.has(e.id))].sort((a, b) => (b.created || 0) - (a.created || 0)));
}

function button(text, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "small";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

// ``actions``: view(entry, entries), reuse(entry), start(entry), upscale(entry), remove(entry).
export function render(list, actions) {
  list.textContent = "";
  const entries = load();
  for (const entry of entries) {
    const li = document.createElement("li");
    const p = entry.params;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "thumb";
    open.setAttribute("aria-label", `View: ${p.prompt} (seed ${p.seed})`);
    const img = document.createElement("img");
    img.alt = "";
    img.loading = "lazy";
    img.src = entry.url || entry.thumb;
    img.addEventListener("error", () => {  // expired or deleted on the server: the kept thumbnail, said so
      if (img.src !== entry.thumb && entry.thumb) img.src = entry.thumb;
      li.classList.add("gone");
      open.title = "No longer on the server (results expire); the settings are still here";
    }, { once: true });
    open.append(img);
    open.addEventListener("click", () => actions.view(entry, entries));
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.textContent = p.prompt;
    caption.title = p.prompt;
    const tools = document.createElement("div");
    tools.className = "tools";
    const download = document.createElement("a");
    download.className = "button small";
    download.textContent = "Save";
    download.href = entry.url || entry.thumb;
    download.download = `sd-cpu-${p.seed}.png`;
    download.setAttribute("aria-label", `Download: ${p.prompt}`);
    tools.append(button("Reuse", `Use these settings: ${p.prompt} (seed ${p.seed})`, () => actions.reuse(entry)),
                 button("Edit", `Start from this image: ${p.prompt}`, () => actions.start(entry)),
                 button("×2", `Upscale ×2: ${p.prompt}`, () => actions.upscale(entry)),
                 download,
                 button("Delete", `Delete from the server: ${p.prompt}`, () => actions.remove(entry)));
    li.append(open, caption, tools);
    list.append(li);
  }
  return entries.length;
}
