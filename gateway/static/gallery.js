// Recent results, kept in this browser (localStorage): a thumbnail and the parameters of each.
const KEY = "sd-cpu.gallery";
const LIMIT = 24;

export function load() {
  try { return JSON.parse(localStorage.getItem(KEY)) || []; } catch { return []; }
}

function save(items) {
  try { localStorage.setItem(KEY, JSON.stringify(items.slice(0, LIMIT))); } catch { /* storage full: skip */ }
}

export function clear() { localStorage.removeItem(KEY); }

// A small JPEG data URL of an <img>, so the gallery survives the server forgetting the job.
export function thumbnail(img, size = 160) {
  const canvas = document.createElement("canvas");
  const scale = size / Math.max(img.naturalWidth, img.naturalHeight);
  canvas.width = Math.round(img.naturalWidth * scale);
  canvas.height = Math.round(img.naturalHeight * scale);
  canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
  return canvas.toDataURL("image/jpeg", 0.8);
}

export function add(entry) {
  save([entry, ...load().filter((e) => e.id !== entry.id)]);
}

export function render(list, onPick) {
  list.textContent = "";
  for (const entry of load()) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.title = `Use these settings: ${entry.params.prompt} (seed ${entry.params.seed})`;
    const img = document.createElement("img");
    img.src = entry.thumb;
    img.alt = entry.params.prompt;
    const caption = document.createElement("span");
    caption.textContent = entry.params.prompt;
    button.append(img, caption);
    button.addEventListener("click", () => onPick(entry));
    li.append(button);
    list.append(li);
  }
}
