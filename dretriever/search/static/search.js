// dretriever's search page (search.html): calls the server's own JSON API (/health, /search) with the API key
// typed into the page, and shows the hits. Text from the index only ever becomes text nodes (textContent),
// never HTML. No libraries, no build step.
"use strict";

const KEY_STORE = "dretriever-api-key";  // sessionStorage: kept for this tab only
let health = null;  // the last /health answer: modes, max_k, filter_keys, generation
let answered = 0;  // searches answered (hits or an error), also in the form's data-answered (for tests)

const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// One call to the API; resolves to the JSON body, rejects with the server's error message (and .status).
async function api(method, path, body) {
  const headers = {"Accept": "application/json"};
  const key = $("key").value.trim();
  if (key) headers["Authorization"] = "Bearer " + key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const error = new Error(data && data.error ? data.error : `HTTP ${response.status} from ${path}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

// /health: what the index can do (modes, k, filter keys) and the generation it serves.
async function loadHealth() {
  const server = $("server");
  try {
    health = await api("GET", "health");
  } catch (e) {
    health = null;
    server.className = "server down";
    server.textContent = e.status === 401 ? "This server needs its API key: type it into the API key field."
                                          : "No answer from the server: " + e.message;
    $("key").parentElement.classList.toggle("needed", e.status === 401);
    return;
  }
  $("key").parentElement.classList.remove("needed");
  server.className = "server";
  const generation = element("span", "", String(health.generation));
  generation.id = "generation";
  server.replaceChildren(`${health.passages.toLocaleString("en")} passages in ${health.shards} shard(s) · model `,
                         element("code", "", health.model), " · generation ", generation);
  for (const option of $("mode").options) {
    option.disabled = !health.modes.includes(option.value);
    option.title = option.disabled ? "this index has no BM25 index (build it with --bm25)" : "";
  }
  if ($("mode").selectedOptions[0].disabled) $("mode").value = health.modes[0];
  $("k").max = health.max_k;
  buildFilters(health.filter_keys || {});
  modeChanged();
}

// One field per declared key: a prefix for doc_id, "one of" for str keys, a from/to range for numbers.
function buildFilters(keys) {
  const box = $("filters");
  const kept = {};
  for (const input of box.querySelectorAll("input")) kept[input.id] = input.value;
  box.replaceChildren();
  const field = (key, type, op, placeholder, wide) => {
    const input = element("input", wide ? "wide" : "");
    input.id = `filter-${key}-${op}`;
    input.type = type === "str" ? "text" : "number";
    if (type !== "str") input.step = type === "int" ? "1" : "any";
    input.placeholder = placeholder;
    input.dataset.key = key;
    input.dataset.op = op;
    input.dataset.type = type;
    input.value = kept[input.id] || "";
    return input;
  };
  const add = (key, note, ...inputs) => {
    const label = element("label", "filter");
    label.append(element("code", "", key), note, ...inputs);
    box.append(label);
  };
  add("doc_id", "starts with", field("doc_id", "str", "prefix", "document id prefix", true));
  for (const [key, type] of Object.entries(keys)) {
    if (type === "str") add(key, "is", field(key, type, "eq", "value, or a, b, c", true));
    else add(key, "from", field(key, type, "gte", type), "to", field(key, type, "lte", type));
  }
}

function parseValue(raw, type, where) {
  if (type === "str") return raw;
  const value = Number(raw);
  if (raw === "" || !Number.isFinite(value) || (type === "int" && !Number.isInteger(value))) {
    throw new Error(`${where}: expected ${type}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

// The filter object of the /search request (index/filters.py's format), or null when every field is empty.
function readFilter() {
  const filter = {};
  for (const input of $("filters").querySelectorAll("input")) {
    const raw = input.value.trim();
    if (!raw) continue;
    const {key, op, type} = input.dataset;
    const condition = filter[key] || (filter[key] = {});
    if (op === "eq") {
      const values = raw.split(",").map((v) => v.trim()).filter((v) => v !== "");
      if (values.length === 1) condition.eq = parseValue(values[0], type, `filter.${key}`);
      else condition.in = values.map((v, i) => parseValue(v, type, `filter.${key}.in[${i}]`));
    } else {
      condition[op] = parseValue(raw, type, `filter.${key}.${op}`);
    }
  }
  return Object.keys(filter).length ? filter : null;
}

function modeChanged() {
  $("filter-box").disabled = $("mode").value !== "dense";  // filters apply in dense mode only
}

function hitItem(hit, rank) {
  const item = element("li", "hit");
  item.dataset.id = hit.id;
  item.dataset.docId = hit.doc_id;
  item.dataset.shard = hit.shard === null ? "" : String(hit.shard);
  item.dataset.score = String(hit.score);
  const score = element("span", "score", hit.score.toFixed(4));
  score.title = String(hit.score);
  const head = element("div", "hit-head");
  head.append(element("span", "rank", String(rank)), element("span", "title", hit.title), score);
  const meta = element("div", "meta");
  meta.append("document ", element("code", "doc-id", hit.doc_id), " · passage ", element("code", "passage-id", hit.id),
              " · shard ", element("span", "shard", hit.shard === null ? "none" : String(hit.shard)));
  for (const key of Object.keys((health && health.filter_keys) || {})) {
    if (hit.metadata && hit.metadata[key] !== undefined && hit.metadata[key] !== null) {
      meta.append(` · ${key} `, element("span", `meta-${key}`, String(hit.metadata[key])));
    }
  }
  item.append(head, meta, element("p", "text", hit.text));
  return item;
}

// The /search request the form describes; an Error naming the field when a value cannot be sent.
function requestBody() {
  const query = $("query").value;
  if (!query.trim()) throw new Error("query: type something to search for");
  const body = {query, k: Number($("k").value), mode: $("mode").value};
  const filter = body.mode === "dense" ? readFilter() : null;
  if (filter) body.filter = filter;
  return body;
}

function showHits(answer, started) {
  $("hits").replaceChildren(...answer.hits.map((hit, i) => hitItem(hit, i + 1)));
  $("count").textContent = `${answer.hits.length} hit${answer.hits.length === 1 ? "" : "s"}`;
  $("served-generation").textContent = String(answer.generation);
  $("took").textContent = `${Math.round(performance.now() - started)} ms`;
  $("results").hidden = false;
}

async function search(event) {
  event.preventDefault();
  showError("");
  $("results").hidden = true;  // until this search's answer (or error) arrives
  $("submit").disabled = true;
  const started = performance.now();
  try {
    showHits(await api("POST", "search", requestBody()), started);
  } catch (e) {
    showError(e.message);
    if (e.status === 401) loadHealth();
  } finally {
    $("submit").disabled = false;
    $("search-form").dataset.answered = String(++answered);  // tests wait for this count to move
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("key").addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORE, $("key").value.trim());
    loadHealth();
  });
  $("mode").addEventListener("change", modeChanged);
  $("search-form").addEventListener("submit", search);
  buildFilters({});  // doc_id's field, until /health names the declared keys
  loadHealth();
});
