// herbid page: upload sheets, show the identification and the most similar specimens.
// Plain browser JavaScript, no build step and no external assets. Server data is only
// ever inserted with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "herbid-token";
const TOP_K = 5;
const SIMILAR_K = 6;
const PARALLEL_UPLOADS = 2;

const state = { health: null, queue: [], active: 0, thumbnails: new Map() };
const $ = (selector, root = document) => root.querySelector(selector);

function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

function authHeaders() {
  const value = token();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

function percent(probability) {
  return `${(probability * 100).toFixed(1)} %`;
}

function mebibytes(bytes) {
  return `${(bytes / 1048576).toFixed(bytes % 1048576 ? 1 : 0)} MiB`;
}

// --- server status ---------------------------------------------------------------------

async function loadHealth() {
  const info = $("#model-info");
  try {
    const response = await fetch("/api/health");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    state.health = await response.json();
  } catch (error) {
    info.textContent = `The server does not answer (${error.message}).`;
    info.classList.add("error");
    return;
  }
  const h = state.health;
  const index = h.index_size === null ? "no specimen index" : `${h.index_size.toLocaleString()} indexed specimens`;
  info.textContent = `Model ${h.model_id} · ${h.species} species · ${index}`;
  $("#limits").textContent = `JPEG, PNG, TIFF… up to ${mebibytes(h.max_upload_bytes)} per image.`;
  if (h.auth && !token()) {
    $("#token-panel").open = true;
    $("#token-state").textContent = "This server needs a token.";
  }
}

// --- token -------------------------------------------------------------------------------

function setupToken() {
  const input = $("#token-input");
  input.value = token();
  $("#token-state").textContent = token() ? "A token is saved." : "";
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(TOKEN_KEY, input.value.trim());
    $("#token-state").textContent = input.value.trim() ? "Saved." : "Cleared.";
  });
  $("#token-forget").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    input.value = "";
    $("#token-state").textContent = "Forgotten.";
  });
}

// --- uploads -----------------------------------------------------------------------------

function setupUploads() {
  const zone = $("#drop-zone");
  const input = $("#file-input");
  input.addEventListener("change", () => {
    enqueue(Array.from(input.files));
    input.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    enqueue(Array.from(event.dataTransfer.files));
  });
  // a file dropped beside the zone must not replace the page with the image
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("#clear-results").addEventListener("click", clearResults);
}

function enqueue(files) {
  for (const file of files) {
    state.queue.push({ file, card: newCard(file) });
  }
  pump();
}

function pump() {
  while (state.active < PARALLEL_UPLOADS && state.queue.length) {
    const job = state.queue.shift();
    state.active += 1;
    identify(job).finally(() => {
      state.active -= 1;
      pump();
    });
  }
}

async function identify({ file, card }) {
  const limit = state.health ? state.health.max_upload_bytes : Infinity;
  if (file.size > limit) {
    showError(card, `This file is ${mebibytes(file.size)}; the server accepts up to ${mebibytes(limit)}.`);
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  const similar = state.health && state.health.index_size ? SIMILAR_K : 0;
  const started = performance.now();
  try {
    const response = await fetch(`/api/identify?top_k=${TOP_K}&similar=${similar}`, {
      method: "POST", headers: authHeaders(), body: form,
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      showError(card, explain(response.status, body));
      return;
    }
    showIdentification(card, body, performance.now() - started);
  } catch (error) {
    showError(card, `The request failed: ${error.message}`);
  }
}

function explain(status, body) {
  if (status === 401) return "The server needs an access token: enter it under “Access token” above and retry.";
  const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || "");
  return `${detail || "The server refused the image"} (HTTP ${status})`;
}

// --- rendering ---------------------------------------------------------------------------

function newCard(file) {
  const card = $("#result-template").content.firstElementChild.cloneNode(true);
  card.dataset.file = file.name;
  $(".file-name", card).textContent = file.name;
  const preview = $(".preview", card);
  if (file.type.startsWith("image/") && file.type !== "image/tiff") {
    const url = URL.createObjectURL(file);
    preview.src = url;
    preview.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
    preview.addEventListener("error", () => preview.classList.add("broken"), { once: true });
  } else {
    preview.classList.add("broken");
  }
  $("#results").prepend(card);
  $("#results-bar").hidden = false;
  return card;
}

function showError(card, message) {
  card.dataset.state = "error";
  const status = $(".status", card);
  status.textContent = message;
  status.classList.add("error");
}

function showIdentification(card, result, elapsedMs) {
  card.dataset.state = "done";
  $(".status", card).textContent = `Identified in ${Math.round(elapsedMs)} ms`;
  $(".status", card).title = `model ${result.model_id}, temperature ${result.temperature}`;
  const rows = $(".top-species tbody", card);
  result.top.forEach((entry, i) => rows.append(speciesRow(i + 1, entry)));
  $(".genus", card).textContent = taxon(result.genus);
  $(".family", card).textContent = taxon(result.family);
  $(".suggestion", card).textContent = suggestion(result);
  const verdict = $(".verdict", card);
  verdict.hidden = false;
  verdict.classList.add(result.uncertain ? "uncertain" : "confident");
  verdict.textContent = result.uncertain
    ? `Uncertain at species rank${result.suggested_rank !== "none" ? ` — trust the ${result.suggested_rank}` : " — no rank is reliable"}`
    : "Confident at species rank";
  $(".result-body", card).hidden = false;
  if (Array.isArray(result.similar)) showNeighbours(card, result.similar);
}

function speciesRow(rank, entry) {
  const row = $("#species-row-template").content.firstElementChild.cloneNode(true);
  $(".rank", row).textContent = String(rank);
  const name = document.createElement("i");
  name.textContent = entry.scientificName;
  $(".species-name", row).append(name);
  if (entry.family) {
    const family = document.createElement("span");
    family.className = "family-note";
    family.textContent = entry.family;
    $(".species-name", row).append(family);
  }
  $(".fill", row).style.width = `${Math.max(0, Math.min(1, entry.probability)) * 100}%`;
  $(".pct", row).textContent = percent(entry.probability);
  return row;
}

function taxon(entry) {
  return entry ? `${entry.name} (${percent(entry.probability)})` : "–";
}

function suggestion(result) {
  if (!result.suggested_name) return "none: no rank reaches the confidence thresholds";
  return `${result.suggested_name} (${result.suggested_rank})`;
}

function showNeighbours(card, neighbours) {
  const list = $(".neighbours", card);
  for (const item of neighbours) list.append(neighbourItem(item));
  $(".similar", card).hidden = neighbours.length === 0;
}

function neighbourItem(item) {
  const li = $("#neighbour-template").content.firstElementChild.cloneNode(true);
  li.dataset.imageId = item.image_id;
  const species = document.createElement("i");
  species.textContent = item.scientificName || "unnamed";
  $(".n-species", li).append(species);
  const catalogue = [item.catalogNumber, item.institutionCode].filter(Boolean).join(" · ");
  $(".n-catalogue", li).textContent = catalogue || "no catalogue number";
  $(".n-collector", li).textContent = item.recordedBy ? `leg. ${item.recordedBy}` : "collector unknown";
  $(".n-similarity", li).textContent = `similarity ${item.similarity.toFixed(3)}`;
  const thumb = $(".thumb", li);
  thumb.alt = `${item.scientificName || "specimen"} ${catalogue}`;
  loadThumbnail(item.thumbnail_url).then((url) => { if (url) thumb.src = url; });
  return li;
}

// thumbnails go through fetch() so that the bearer token can be sent with them
async function loadThumbnail(url) {
  if (!state.thumbnails.has(url)) {
    state.thumbnails.set(url, fetch(url, { headers: authHeaders() })
      .then((response) => (response.ok ? response.blob() : null))
      .then((blob) => (blob ? URL.createObjectURL(blob) : null))
      .catch(() => null)
      .then((objectUrl) => {
        if (!objectUrl) state.thumbnails.delete(url); // retry later, e.g. once a token is saved
        return objectUrl;
      }));
  }
  return state.thumbnails.get(url);
}

function clearResults() {
  $("#results").replaceChildren();
  $("#results-bar").hidden = true;
}

document.addEventListener("DOMContentLoaded", () => {
  setupToken();
  setupUploads();
  loadHealth();
});
