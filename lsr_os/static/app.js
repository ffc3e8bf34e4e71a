// The lsr-os search page: plain DOM and fetch, no framework. Every value from the server is
// inserted as text (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const CHIPS = 18; // query terms shown
const HIT_TERMS = 4; // matched terms shown per hit

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function chip(term, weight, kind, title) {
  const node = el("span", `chip ${kind}`);
  node.append(el("span", "term", term), el("span", "weight", weight.toFixed(2)));
  if (title) node.title = title;
  return node;
}

async function postSearch(body, isForm) {
  const options = { method: "POST", body: isForm ? body : JSON.stringify(body) };
  if (!isForm) options.headers = { "Content-Type": "application/json" };
  const response = await fetch("/search", options);
  let data;
  try {
    data = await response.json();
  } catch (err) {
    throw new Error(`HTTP ${response.status}: the server's answer is not JSON`);
  }
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

// One id per browser tab: its searches go to the same shard copies, so hits tied on score keep
// their order from one search to the next.
function session() {
  let id = sessionStorage.getItem("lsr-os-session");
  if (!id) {
    id = Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("lsr-os-session", id);
  }
  return id;
}

function options() {
  const collection = $("collection").value;
  return { k: Number($("k").value), session: session(), ...(collection ? { collection } : {}) };
}

function busy(on) {
  $("search-button").disabled = on;
  $("search-button").textContent = on ? "Searching…" : "Search";
  document.body.classList.toggle("busy", on);
}

// A refused query leaves nothing of the query before it on the page: only the server's message.
function clear() {
  $("query").hidden = true;
  $("chips").replaceChildren();
  $("results").replaceChildren();
  $("captions").replaceChildren();
  $("summary").textContent = "";
}

async function run(request, queryImage) {
  busy(true);
  $("error").hidden = true;
  try {
    render(await request(), queryImage);
  } catch (err) {
    clear();
    $("error").textContent = err.message;
    $("error").hidden = false;
  } finally {
    busy(false);
  }
}

function searchText(event) {
  event.preventDefault();
  const text = $("q").value;
  run(() => postSearch({ text, mode: $("mode").value, ...options() }), null);
}

function searchImage() {
  const file = $("image-input").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  for (const [name, value] of Object.entries(options())) form.append(name, String(value));
  run(() => postSearch(form, true), URL.createObjectURL(file));
  $("image-input").value = "";
  $("q").value = "";
}

function renderQuery(query, mode, warnings, queryImage) {
  const image = $("query-image");
  image.hidden = !queryImage;
  if (queryImage) image.src = queryImage;
  $("query-label").textContent = query.text !== null ? `“${query.text}”` : queryImage ? "image query" : "vector query";
  $("query-mode").textContent = mode;
  $("query-note").textContent = warnings.join(" ");
  $("query-note").hidden = warnings.length === 0;
  const terms = [
    ...Object.entries(query.own).map(([t, w]) => [t, w, "own"]),
    ...Object.entries(query.expansion).map(([t, w]) => [t, w, "expansion"]),
  ].sort((a, b) => b[1] - a[1]);
  const chips = $("chips");
  chips.replaceChildren(...terms.slice(0, CHIPS).map(([t, w, kind]) => chip(t, w, kind)));
  if (terms.length > CHIPS) chips.append(el("span", "more", `+${terms.length - CHIPS} more`));
  $("query").hidden = false;
}

function matched(hit) {
  const box = el("div", "chips small");
  for (const m of hit.terms.slice(0, HIT_TERMS)) {
    box.append(chip(m.term, m.contribution, "match",
      `${m.term}: query ${m.query_weight.toFixed(2)} × document ${m.doc_weight.toFixed(2)}`));
  }
  return box;
}

function thumbnail(url, alt, className) {
  if (!url) return el("div", `${className} missing`, "no image");
  const img = el("img", className);
  img.loading = "lazy";
  img.alt = alt;
  img.src = url;
  // The demo's images are tiny: scale them up without blurring.
  img.addEventListener("load", () => img.classList.toggle("pixelated", img.naturalWidth < 160));
  return img;
}

// A hit's element (its id and image kept as data attributes) and its rank-and-score line.
function hitElement(hit, kind) {
  const node = el("article", `hit ${kind}`);
  node.dataset.id = hit.id;
  node.dataset.image = hit.image || "";
  const meta = el("div", "meta");
  meta.append(el("span", "rank", `#${hit.rank}`), el("span", "score", hit.score.toFixed(2)));
  return [node, meta];
}

function imageCard(hit) {
  const [card, meta] = hitElement(hit, "image-hit");
  const label = el("div", "label", hit.label.split("/").pop());
  label.title = hit.label;
  card.append(thumbnail(hit.image_url, hit.label, "thumb"), meta, label, matched(hit));
  return card;
}

function captionRow(hit) {
  const [row, head] = hitElement(hit, "caption-hit");
  if (hit.image) head.append(el("span", "of", hit.image.split("/").pop()));
  const body = el("div", "caption-body");
  body.append(head, el("p", "caption-text", hit.caption || hit.label), matched(hit));
  row.append(thumbnail(hit.image_url, hit.image || "", "mini"), body);
  return row;
}

function render(data, queryImage) {
  renderQuery(data.query, data.mode, data.warnings, queryImage);
  const images = data.hits.filter((h) => h.caption === undefined || h.caption === null);
  const captions = data.hits.filter((h) => h.caption !== undefined && h.caption !== null);
  $("results").replaceChildren(...images.map(imageCard));
  $("captions").replaceChildren(...captions.map(captionRow));
  $("summary").textContent = data.hits.length
    ? `${data.hits.length} hits from ${data.collection} in ${data.took_ms} ms`
    : `no document of ${data.collection} matches this query`;
}

// The modes the server can answer text queries in; a choice only where there is more than one.
function offerModes(modes) {
  const select = $("mode");
  select.replaceChildren(el("option", "", "auto"), ...modes.map((m) => el("option", "", m)));
  $("mode-choice").hidden = modes.length < 2;
}

async function status() {
  const node = $("status");
  try {
    const response = await fetch("/healthz");
    const health = await response.json();
    const parts = Object.values(health.collections).map((c) =>
      c.documents === null ? `${c.alias} missing` : `${c.alias} ${c.documents.toLocaleString()}`);
    if (!health.models) parts.push("vector queries only");
    else if (!health.models.loaded) parts.push("models loading");
    else parts.push(health.models.device || "inference-free, no model");
    offerModes(health.models ? health.models.modes : []);
    // The engine first: which one answers is told from the cluster, so the page says it.
    const cluster = health.cluster;
    parts.unshift(cluster.reachable ? `${cluster.engine} ${cluster.version}` : `${cluster.engine} unreachable`);
    $("engine-name").textContent = cluster.engine;
    node.title = `cluster at ${cluster.urls.join(", ")}`;
    node.textContent = parts.join(" · ");
    node.classList.toggle("bad", !health.ok);
  } catch (err) {
    node.textContent = "server unreachable";
    node.classList.add("bad");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", searchText);
  $("image-input").addEventListener("change", searchImage);
  status();
});
