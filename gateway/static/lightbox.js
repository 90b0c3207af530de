// A full-size view of one image of a list (the job's batch, or the gallery), in a modal <dialog>: Esc or
// Close shuts it, the arrow keys and buttons step through the list, Download saves the one shown.
const $ = (id) => document.getElementById(id);
const shown = { items: [], index: 0 };

function show(index) {
  const item = shown.items[index];
  shown.index = index;
  const img = $("lightbox-image");
  img.onerror = item.fallback ? () => { img.onerror = null; img.src = item.fallback; } : null;
  img.src = item.url;
  img.alt = item.caption;
  $("lightbox-caption").textContent = shown.items.length > 1
    ? `${index + 1} of ${shown.items.length} · ${item.caption}` : item.caption;
  $("lightbox-download").href = item.url;
  $("lightbox-prev").disabled = index === 0;
  $("lightbox-next").disabled = index === shown.items.length - 1;
  $("lightbox-prev").hidden = $("lightbox-next").hidden = shown.items.length < 2;
}

export function open(items, index = 0) {
  if (!items.length) return;
  shown.items = items;
  show(Math.min(Math.max(index, 0), items.length - 1));
  $("lightbox").showModal();
}

export function setup() {
  const dialog = $("lightbox");
  $("lightbox-close").addEventListener("click", () => dialog.close());
  $("lightbox-prev").addEventListener("click", () => show(Math.max(0, shown.index - 1)));
  $("lightbox-next").addEventListener("click", () => show(Math.min(shown.items.length - 1, shown.index + 1)));
  dialog.addEventListener("keydown", (e) => {
    if (e.key === "ArrowLeft" && shown.index > 0) show(shown.index - 1);
    else if (e.key === "ArrowRight" && shown.index < shown.items.length - 1) show(shown.index + 1);
  });
  dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close(); });  // the backdrop
}
